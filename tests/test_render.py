"""The overlay a caller downloads, and the display copy's resize."""

from __future__ import annotations

import numpy as np
import pytest

from xai.imaging import render
from xai.imaging.resize import resize


def _heatmap_at_display_size(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    levels = render.colour_levels(heatmap)
    return np.asarray(Image.fromarray(levels).resize((width, height), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("channels", [1, 3])
def test_the_overlay_is_the_heatmap_colour_blended_over_the_image(channels):
    rng = np.random.default_rng(0)
    shape = (40, 30) if channels == 1 else (40, 30, 3)
    display = rng.integers(0, 256, shape, dtype=np.uint8)
    heatmap = rng.random((8, 6)).astype(np.float32)
    expected = render.overlay(display, render.colourise(_heatmap_at_display_size(heatmap, 40, 30)))
    assert np.array_equal(render.overlay_pixels(heatmap, display), expected)


ALPHA = render.OVERLAY_ALPHA
RED, BLUE = render.TURBO_LUT[255].astype(int), render.TURBO_LUT[0].astype(int)


@pytest.mark.parametrize(("grey", "level", "expected"), [
    (0, 255, (RED * ALPHA + 128) >> 8),  # the hottest colour over black: 45% of it
    (255, 0, (255 * (256 - ALPHA) + BLUE * ALPHA + 128) >> 8),  # the coldest over white
    (128, 255, (128 * (256 - ALPHA) + RED * ALPHA + 128) >> 8),
])
def test_known_blends_of_a_grey_image(grey, level, expected):
    # A heatmap of two pixels, its minimum and its maximum: colour levels 0 and 255, at the display's size.
    pixels = render.overlay_pixels(np.array([[0.0, 1.0]], np.float32), np.full((1, 2), grey, np.uint8))
    assert np.array_equal(pixels[0, 1 if level == 255 else 0], expected)


def test_the_display_resize_stays_within_a_few_grey_levels_of_the_exact_filter():
    rng = np.random.default_rng(1)
    image = (np.add.outer(np.arange(900), np.arange(700)) / 1600 + rng.normal(0, 0.01, (900, 700))).astype(np.float32)
    exact, shown = resize(image, 300, 233), resize(image, 300, 233, for_display=True)
    assert shown.shape == exact.shape == (300, 233)
    assert np.abs(shown - exact).max() < 4 / 255
    assert np.array_equal(resize(image, 300, 233), exact)  # what a model sees is never pre-reduced
