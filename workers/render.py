"""Turn a heatmap into the files a caller downloads: colour PNG, overlay PNG, raw NPY. Torch-free."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Turbo colormap (Mikhailov, Google 2019) as its published polynomial fit: perceptually ordered,
# unlike jet, and needs no plotting library in the worker image.
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min-max; a constant map becomes all zeros."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    low, high = float(heatmap.min()), float(heatmap.max())
    if high - low < 1e-12:
        return np.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """H x W heatmap -> H x W x 3 uint8 with the turbo colormap (low = blue, high = red)."""
    x = normalise(heatmap)[..., None]
    powers = np.concatenate([x**k for k in range(6)], axis=-1)
    rgb = np.clip(powers @ _TURBO.T, 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the colour heatmap over the canonical image (H x W or H x W x 3 in [0, 1])."""
    base = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    blended = (1 - alpha) * base + alpha * colourise(heatmap).astype(np.float32) / 255
    return (np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 H x W or H x W x 3, or float in [0, 1], as PNG bytes."""
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()
