"""Turn a heatmap into the images a caller downloads, at a bounded display size. Torch-free.

The heatmap stays at the resolution its explainer made it, and so does its colour PNG; the overlay is
drawn at the display copy's size (at most ``XAI_DISPLAY_MAX_SIDE`` on the long side), so what a job
costs to render and keep does not grow with the input.
"""

from __future__ import annotations

import zlib

import imagecodecs
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
# The polynomial evaluated once at 256 levels: colouring a map is then one table look-up per pixel.
_LEVELS = np.linspace(0.0, 1.0, 256)[:, None]
TURBO_LUT = (np.clip(np.concatenate([_LEVELS**k for k in range(6)], axis=1) @ _TURBO.T, 0, 1) * 255 + 0.5).astype(
    np.uint8
)
OVERLAY_ALPHA = 115  # of 256: 45% heatmap colour over the image


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min-max; a constant map becomes all zeros."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    low, high = float(heatmap.min()), float(heatmap.max())
    if high - low < 1e-12:
        return np.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def colour_levels(heatmap: np.ndarray) -> np.ndarray:
    """A heatmap as uint8 colour-table levels (0 = its minimum, 255 = its maximum)."""
    return (normalise(heatmap) * 255 + 0.5).astype(np.uint8)


def colourise(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> H x W x 3 uint8 with the turbo colormap (low = blue, high = red)."""
    return TURBO_LUT[levels]


def overlay(image: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Blend colours (H x W x 3 uint8) over an image of the same size (uint8, H x W or H x W x 3).

    Integer arithmetic: the colours weigh ``OVERLAY_ALPHA``/256 (45%), the image the rest.
    """
    base = (image if image.ndim == 3 else image[..., None]).astype(np.uint16)
    blended = base * (256 - OVERLAY_ALPHA) + colours.astype(np.uint16) * OVERLAY_ALPHA + 128
    return (blended >> 8).astype(np.uint8)


# The overlay colour of every (grey level, heatmap level) pair, row grey * 256 + level: what ``overlay``
# computes, tabulated, so a grey image's overlay costs one 3-byte look-up per pixel (about 6x faster).
_GREY_OVERLAYS = overlay(
    np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256),
    colourise(np.broadcast_to(np.arange(256, dtype=np.uint8), (256, 256))),
).reshape(-1, 3)


def heatmap_images(heatmap: np.ndarray, display: np.ndarray) -> dict[str, bytes]:
    """``heatmap.png`` at the heatmap's own resolution and ``overlay.png`` at the display copy's size.

    The overlay's colours are the heatmap's levels enlarged bilinearly (the interpolation the NPY
    files use) to the display size: colouring after the resize keeps the colour map's own steps.
    """
    levels = colour_levels(heatmap)
    return {"heatmap.png": png_bytes(colourise(levels)), "overlay.png": png_bytes(_overlay_levels(levels, display))}


def overlay_pixels(heatmap: np.ndarray, display: np.ndarray) -> np.ndarray:
    """The overlay ``heatmap_images`` encodes as overlay.png, as H x W x 3 uint8 (the DICOM Secondary Capture's)."""
    return _overlay_levels(colour_levels(heatmap), display)


def _overlay_levels(levels: np.ndarray, display: np.ndarray) -> np.ndarray:
    height, width = display.shape[:2]
    enlarged = np.asarray(Image.fromarray(levels).resize((width, height), Image.Resampling.BILINEAR))
    if display.ndim == 2:  # a grey image: one look-up per pixel in the table of every blend
        return np.take(_GREY_OVERLAYS, display.astype(np.uint16) << 8 | enlarged, axis=0)
    return overlay(display, colourise(enlarged))


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 H x W or H x W x 3, or float in [0, 1], as PNG bytes.

    libpng through imagecodecs with the "up" filter and run-length deflate: on a 1024 px overlay
    about 2.5x faster than Pillow's fastest level, and smaller (bench/bench_pipeline.py).
    """
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(pixels), level=1, filter=imagecodecs.PNG.FILTER.UP,
                                        strategy=zlib.Z_RLE))
