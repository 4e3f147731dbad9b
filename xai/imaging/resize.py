"""Resizing images and heatmaps without torch, exactly as the worker's torch resize does.

Pillow's bilinear filter on float (mode ``F``) planes is the filter torch's
``interpolate(mode="bilinear", align_corners=False, antialias=True)`` was ported from: the two
agree to about 1e-6 when shrinking and when enlarging (tests/test_resize.py checks it against
``models.preprocess``). So the gateway can shrink an upload to the model's size, and enlarge a
stored heatmap to the input's size, and get what the worker would have computed. The display
copy of an input (``display_copy``) is only looked at, and is made by a faster, inexact filter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import sparse

# The display copy's shrink starts with a box filter by the whole factor of the shrink (Pillow's
# ``reducing_gap``): 3000 -> 1024 px is a 2x box reduce, then the bilinear filter from 1500 px.
DISPLAY_REDUCING_GAP = 1.0
# A shrink to at most this many pixels a side (a classifier's input) is two matrix products: on a 3000 px
# upload 5-10x faster than Pillow's filter and its copy of the image (the same weights; within 2e-6).
MATRIX_MAX_SIDE = 256


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased resize of an ``H x W`` or ``H x W x C`` float array to ``height x width``.

    Returns float32; an array already at that size is returned as float32 without filtering.
    """
    if array.shape[:2] == (height, width):
        return np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        return np.stack([resize(array[..., c], height, width) for c in range(array.shape[2])], axis=-1)
    rows, columns = array.shape
    if height <= rows and width <= columns and max(height, width) <= MATRIX_MAX_SIDE:
        return _shrink_by_matrices(np.asarray(array, dtype=np.float32), height, width)
    return _pillow_bilinear(array, height, width)


def display_copy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The uint8 copy of an image that people look at (input.png, the overlays) at ``height x width``;
    never what a model sees.

    ``image`` is an upload's own 8-bit samples (``H x W`` or ``H x W x 3`` uint8) or a canonical float32
    image (quantised here, after the shrink). Either way the shrink box-reduces first (see
    ``DISPLAY_REDUCING_GAP``), within 3 grey levels of the exact filter (tests/test_render.py); Pillow's
    8-bit filter on the samples takes a fifth of the float path's time on a 3000 px upload and leaves
    nothing to quantise.
    """
    if image.dtype == np.uint8:
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
            (width, height), Image.Resampling.BILINEAR, reducing_gap=DISPLAY_REDUCING_GAP))
    planes = image[..., None] if image.ndim == 2 else image
    shrunk = np.stack([_pillow_bilinear(planes[..., c], height, width, reducing_gap=DISPLAY_REDUCING_GAP)
                       for c in range(planes.shape[2])], axis=-1)
    quantised = (np.clip(shrunk, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return quantised[..., 0] if image.ndim == 2 else quantised


def _pillow_bilinear(plane: np.ndarray, height: int, width: int, reducing_gap: float | None = None) -> np.ndarray:
    """One float plane through Pillow's bilinear filter (exact without ``reducing_gap``); float32."""
    if plane.shape == (height, width):
        return np.asarray(plane, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=reducing_gap),
                      dtype=np.float32)


def fit_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size with the same aspect ratio whose long side is at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink_by_matrices(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """The filter as ``rows @ plane @ columns``. The rows' weights are a sparse matrix, so each output row
    reads only the input rows under its filter (3000 -> 64 px: 5 ms instead of 11 for the dense product;
    3000 -> 256 px: 6 instead of 30); the columns' dense product then runs on the few rows left."""
    shrunk = plane if height == plane.shape[0] else _sparse_shrink_weights(plane.shape[0], height) @ plane
    return shrunk if width == plane.shape[1] else shrunk @ shrink_weights(plane.shape[1], width).T


@lru_cache(maxsize=32)
def _sparse_shrink_weights(size_in: int, size_out: int) -> sparse.csr_array:
    return sparse.csr_array(shrink_weights(size_in, size_out))


@lru_cache(maxsize=32)
def shrink_weights(size_in: int, size_out: int) -> np.ndarray:
    """``size_out x size_in``: each output sample's weights over the input samples when one axis shrinks.

    The triangle (bilinear) kernel stretched by the shrink factor, centred on the output sample's centre
    in input coordinates, over the input samples it covers, normalised to sum 1: the antialiased bilinear
    filter of Pillow and of torch's ``interpolate(..., antialias=True)``.
    """
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for index in range(size_out):
        centre = (index + 0.5) * scale
        first, last = max(int(centre - scale + 0.5), 0), min(int(centre + scale + 0.5), size_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(first, last) - centre + 0.5) / scale))
        weights[index, first:last] = taps / taps.sum()
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # shared by every caller through the cache
    return weights
