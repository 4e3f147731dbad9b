"""Resizing images and heatmaps without torch, exactly as the worker's torch resize does.

Pillow's bilinear filter on float (mode ``F``) planes is the filter torch's
``interpolate(mode="bilinear", align_corners=False, antialias=True)`` was ported from: the two
agree to about 1e-6 when shrinking and when enlarging (tests/test_resize.py checks it against
``models.preprocess``). So the gateway can shrink an upload to the model's size, and enlarge a
stored heatmap to the input's size, and get what the worker would have computed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

DISPLAY_REDUCING_GAP = 2.0
# A shrink to at most this many pixels a side (a classifier's input) is two matrix products: on a 3000 px
# upload about 5x faster than Pillow's filter and its copy of the image (the same weights; within 1e-6).
MATRIX_MAX_SIDE = 256


def resize(array: np.ndarray, height: int, width: int, *, for_display: bool = False) -> np.ndarray:
    """Bilinear, antialiased resize of an ``H x W`` or ``H x W x C`` float array to ``height x width``.

    ``for_display``: shrink by whole factors with a box filter first (Pillow's ``reducing_gap``), about
    3x faster on a large upload, within a few grey levels of the exact filter; for images people look
    at, never for what a model sees. Returns float32; an array already at that size is returned as
    float32 without filtering.
    """
    if array.shape[:2] == (height, width):
        return np.asarray(array, dtype=np.float32)
    if array.ndim == 3:
        return np.stack([resize(array[..., c], height, width, for_display=for_display)
                         for c in range(array.shape[2])], axis=-1)
    rows, columns = array.shape
    if not for_display and height <= rows and width <= columns and max(height, width) <= MATRIX_MAX_SIDE:
        return _shrink_by_matrices(np.asarray(array, dtype=np.float32), height, width)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    gap = DISPLAY_REDUCING_GAP if for_display else None
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=gap), dtype=np.float32)


def fit_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size with the same aspect ratio whose long side is at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink_by_matrices(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """The filter as ``rows @ plane @ columns``: Pillow's order too (each row first, then each column)."""
    shrunk = plane if width == plane.shape[1] else plane @ shrink_weights(plane.shape[1], width).T
    return shrunk if height == plane.shape[0] else shrink_weights(plane.shape[0], height) @ shrunk


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
