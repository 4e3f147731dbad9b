"""The gateway's torch-free resize agrees with the worker's torch interpolation, both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.manifest import InputSpec
from models.preprocess import heatmap_to_input_size, to_model_input
from xai.imaging.resize import fit_within, resize, shrink_weights

SIZES = [((1024, 1024), (64, 64)), ((64, 64), (1024, 1024)), ((3000, 2500), (224, 224)), ((28, 28), (56, 84)),
         ((64, 64), (28, 28)), ((37, 53), (300, 211))]


@pytest.mark.parametrize(("source", "target"), SIZES)
def test_heatmap_enlarged_in_the_gateway_matches_the_workers_interpolation(source, target):
    heatmap = np.random.default_rng(0).random(source, dtype=np.float32)
    expected = heatmap_to_input_size(torch.from_numpy(heatmap), target)
    np.testing.assert_allclose(resize(heatmap, *target), expected, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_an_upload_shrunk_in_the_gateway_is_what_the_model_would_have_seen(channels):
    rng = np.random.default_rng(1)
    upload = rng.random((700, 500, 3) if channels == 3 else (700, 500), dtype=np.float32)
    spec = InputSpec(height=64, width=48, channels=1)
    direct = to_model_input(upload, spec)
    via_gateway = to_model_input(resize(upload, 64, 48), spec)
    np.testing.assert_allclose(via_gateway.numpy(), direct.numpy(), atol=1e-5)


@pytest.mark.parametrize(("size", "cap", "expected"), [((3000, 3000), 1024, (1024, 1024)), ((600, 400), 1024, (600, 400)),
                                                       ((4000, 1000), 1024, (1024, 256)), ((1, 5000), 64, (1, 64))])
def test_the_display_size_keeps_the_aspect_ratio_and_never_enlarges(size, cap, expected):
    assert fit_within(*size, cap) == expected


@pytest.mark.parametrize(("source", "target"), [((3000, 2500), (64, 64)), ((700, 500, 3), (224, 224)),
                                                ((513, 1024), (256, 20)), ((600, 64), (300, 64)), ((5, 900), (1, 7))])
def test_a_shrink_by_matrices_matches_pillows_filter(source, target):
    image = np.random.default_rng(2).random(source, dtype=np.float32)
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    pillow = [np.asarray(Image.fromarray(p, mode="F").resize(target[::-1], Image.Resampling.BILINEAR)) for p in planes]
    expected = pillow[0] if image.ndim == 2 else np.stack(pillow, axis=-1)
    np.testing.assert_allclose(resize(image, *target), expected, atol=2e-6)


def test_each_row_of_shrink_weights_sums_to_one_over_the_samples_it_covers():
    weights = shrink_weights(10, 4)  # factor 2.5: each output sees 2.5 samples either side of its centre
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-6)
    assert np.flatnonzero(weights[0]).tolist() == [0, 1, 2, 3]  # centre 1.25, samples 0-3 (centres 0.5-3.5)
    # output 1's centre is 3.75; samples 1-5 (centres 1.5-5.5) lie 2.25, 1.25, 0.25, 0.75, 1.75 from it,
    # so the triangle of radius 2.5 weighs them 0.1, 0.5, 0.9, 0.7, 0.3 (sum 2.5) before normalising
    np.testing.assert_allclose(weights[1, 1:6], np.array([0.1, 0.5, 0.9, 0.7, 0.3]) / 2.5, atol=1e-6)
    assert weights[1, 0] == weights[1, 6] == 0
