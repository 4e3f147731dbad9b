"""Turn a heatmap into the images a caller downloads, at a bounded display size. Torch-free.

The heatmap stays at the resolution its explainer made it; the colour PNG and the overlay are drawn
at the display copy's size (at most ``XAI_DISPLAY_MAX_SIDE`` on the long side), so what a job costs
to render and keep does not grow with the input.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from xai.imaging.resize import resize

# Turbo colormap (Mikhailov, Google 2019) as its published polynomial fit: perceptually ordered,
# unlike jet, and needs no plotting library in the worker image.
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)
# The polynomial evaluated once at 256 levels: colouring a map is then one table look-up per pixel.
_LEVELS = np.linspace(0.0, 1.0, 256)[:, None]
TURBO_LUT = (np.clip(np.concatenate([_LEVELS**k for k in range(6)], axis=1) @ _TURBO.T, 0, 1) * 255 + 0.5).astype(
    np.uint8
)
# zlib level 1: about 5x faster than Pillow's default 6 on a 1024 px overlay, for ~15% larger files.
_PNG_LEVEL = 1


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min-max; a constant map becomes all zeros."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    low, high = float(heatmap.min()), float(heatmap.max())
    if high - low < 1e-12:
        return np.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """H x W heatmap -> H x W x 3 uint8 with the turbo colormap (low = blue, high = red)."""
    return TURBO_LUT[(normalise(heatmap) * 255 + 0.5).astype(np.uint8)]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend colourised heatmap pixels over an image of the same size (H x W or H x W x 3 in [0, 1])."""
    base = image if image.ndim == 3 else image[..., None]
    blended = (1 - alpha) * 255 * base + alpha * colours.astype(np.float32)
    return (np.clip(blended, 0, 255) + 0.5).astype(np.uint8)


def heatmap_images(heatmap: np.ndarray, display: np.ndarray) -> dict[str, bytes]:
    """``heatmap.png`` and ``overlay.png``: the map enlarged (or shrunk) to the display copy's size.

    Normalised before resizing, so the colours span the map's own range whatever the display size.
    """
    height, width = display.shape[:2]
    colours = colourise(resize(normalise(heatmap), height, width))
    return {"heatmap.png": png_bytes(colours), "overlay.png": png_bytes(overlay(display, colours))}


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 H x W or H x W x 3, or float in [0, 1], as PNG bytes (fast compression)."""
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=_PNG_LEVEL)
    return buffer.getvalue()
