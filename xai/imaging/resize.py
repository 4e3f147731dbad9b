"""Resizing images and heatmaps without torch, exactly as the worker's torch resize does.

Pillow's bilinear filter on float (mode ``F``) planes is the filter torch's
``interpolate(mode="bilinear", align_corners=False, antialias=True)`` was ported from: the two
agree to about 1e-6 when shrinking and when enlarging (tests/test_resize.py checks it against
``models.preprocess``). So the gateway can shrink an upload to the model's size, and enlarge a
stored heatmap to the input's size, and get what the worker would have computed.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np
from PIL import Image

DISPLAY_REDUCING_GAP = 2.0
MIN_BAND_ROWS = 256  # below this a band's hand-off costs more than it saves


def resize(
    array: np.ndarray, height: int, width: int, *, for_display: bool = False, pool: Executor | None = None
) -> np.ndarray:
    """Bilinear, antialiased resize of an ``H x W`` or ``H x W x C`` float array to ``height x width``.

    ``for_display``: shrink by whole factors with a box filter first (Pillow's ``reducing_gap``), about
    3x faster on a large upload, within a few grey levels of the exact filter; for images people look
    at, never for what a model sees. ``pool``: run the exact filter's horizontal pass as two bands of
    rows on it (the result is identical; on two cores a 3000 px upload's shrink takes half the time).
    Returns float32; an array already at that size is returned as float32 without filtering.
    """
    if array.shape[:2] == (height, width):
        return np.asarray(array, dtype=np.float32)
    gap = DISPLAY_REDUCING_GAP if for_display else None
    banded = pool if gap is None and array.shape[0] >= 2 * MIN_BAND_ROWS else None
    if array.ndim == 2:
        return _resize_plane(array, height, width, gap, banded)
    return np.stack([_resize_plane(array[..., c], height, width, gap, banded) for c in range(array.shape[2])],
                    axis=-1)


def fit_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size with the same aspect ratio whose long side is at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_plane(
    plane: np.ndarray, height: int, width: int, reducing_gap: float | None, pool: Executor | None
) -> np.ndarray:
    if pool is not None:
        # Pillow filters rows first, then columns, keeping the float rows between the passes; each row's
        # filtering is independent, so two bands of rows filtered apart give the same rows.
        bands = pool.map(lambda band: _filter(band, band.shape[0], width, None), np.array_split(plane, 2))
        plane = np.concatenate(list(bands))
    return _filter(plane, height, width, reducing_gap)


def _filter(plane: np.ndarray, height: int, width: int, reducing_gap: float | None) -> np.ndarray:
    if plane.shape == (height, width):
        return np.asarray(plane, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=reducing_gap)
    return np.asarray(resized, dtype=np.float32)
