"""The overlay a caller downloads, and the display copy's resize."""

from __future__ import annotations

import numpy as np
import pytest

from xai.imaging import render
from xai.imaging.resize import display_copy, resize


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


@pytest.mark.parametrize("source", ["floats", "8-bit samples"])
@pytest.mark.parametrize("size_in, size_out", [((900, 700), (300, 233)), ((3000, 3000), (1024, 1024)),
                                               ((1024, 1024), (1024, 1024)), ((500, 400), (333, 267))])
def test_the_display_copy_stays_within_3_grey_levels_of_the_exact_filter(source, size_in, size_out):
    rng = np.random.default_rng(1)
    ramp = np.add.outer(np.arange(size_in[0]), np.arange(size_in[1])) / sum(size_in)
    samples = (np.clip(ramp + rng.normal(0, 0.01, size_in), 0, 1) * 255 + 0.5).astype(np.uint8)
    pixels = samples / np.float32(255)  # what the decoder makes of them
    exact = resize(pixels, *size_out)
    shown = display_copy(pixels if source == "floats" else samples, *size_out)
    assert shown.dtype == np.uint8 and shown.shape == size_out
    assert np.abs(shown - exact * 255).max() <= 3
    if size_in == size_out:
        assert np.array_equal(shown, samples)
    assert np.array_equal(resize(pixels, *size_out), exact)  # what a model sees is never pre-reduced


def test_the_display_copy_of_a_colour_image_is_each_channel_shrunk_alike():
    samples = np.random.default_rng(2).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    shown = display_copy(samples, 30, 20)
    assert shown.shape == (30, 20, 3)
    for channel in range(3):
        assert np.array_equal(shown[..., channel], display_copy(np.ascontiguousarray(samples[..., channel]), 30, 20))
