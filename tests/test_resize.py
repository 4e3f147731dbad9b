"""The gateway's torch-free resize agrees with the worker's torch interpolation, both ways."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from models.manifest import InputSpec
from models.preprocess import heatmap_to_input_size, to_model_input
from xai.imaging.resize import fit_within, resize

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
                                                ((513, 1024), (1000, 20)), ((600, 64), (300, 64))])
def test_the_row_pass_in_two_bands_gives_exactly_the_one_pass_result(source, target):
    image = np.random.default_rng(2).random(source, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=2) as pool:
        banded = resize(image, *target, pool=pool)
    assert np.array_equal(banded, resize(image, *target))
