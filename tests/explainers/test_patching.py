"""Patch mode: a large image explained tile by tile and blended back."""

from __future__ import annotations

import pytest
import torch

from workers.explainers import EXPLAINERS
from workers.patching import blend_window, explain_in_patches, tile_starts
from xai.errors import InvalidInput, JobCancelled

from .cases import Case
from .networks import square_detector, square_image, square_mask

BIG = (64, 96)
SQUARE_IN_BIG = (slice(36, 44), slice(50, 58))  # straddles tile borders for 32-pixel tiles


def test_tiles_cover_the_image_with_the_last_one_flush() -> None:
    assert tile_starts(96, 32, 0.25) == [0, 24, 48, 64]
    assert tile_starts(32, 32, 0.5) == [0]
    assert tile_starts(70, 32, 0.0) == [0, 32, 38]


def test_blend_weights_are_positive_and_ramp_across_the_overlap() -> None:
    window = blend_window((32, 32), 0.25, torch.device("cpu"))

    assert window.min() > 0
    assert window[16, 16] == 1 and window[0, 16] == pytest.approx(1 / 9)
    torch.testing.assert_close(window, window.flip(0).flip(1))


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_patch_mode_reproduces_the_square_exactly(overlap: float) -> None:
    """The square detector works at any size, its saliency is the same constant on every bright pixel of any
    32 x 32 tile and 0 elsewhere, so a correct blend (a weighted mean) gives back exactly that map."""
    model = square_detector(1)
    image = square_image(1, *BIG, square=SQUARE_IN_BIG)
    saliency = EXPLAINERS["saliency"](model)
    tile_value = saliency.explain(image[..., 32:64, 32:64], [0], Case("saliency").params()).heatmaps[0].max()

    heatmap = explain_in_patches(saliency, image, 0, Case("saliency").params(), 32, overlap)

    expected = square_mask(*BIG, square=SQUARE_IN_BIG).float() * tile_value
    assert heatmap.shape == BIG
    torch.testing.assert_close(heatmap, expected)


@pytest.mark.parametrize(
    "case", [Case("grad_cam"), Case("occlusion", {"window": 4, "stride": 2})], ids=lambda case: case.id
)
def test_patch_mode_finds_the_square_with_other_methods(case: Case) -> None:
    model = square_detector(3)
    image = square_image(3, *BIG, square=SQUARE_IN_BIG)
    explainer = EXPLAINERS[case.method](model, target_layer=model[4])

    heatmap = explain_in_patches(explainer, image, 0, case.params(), (32, 32), 0.25, tiles_per_call=3)

    top = heatmap.flatten().topk(16).indices
    assert square_mask(*BIG, square=SQUARE_IN_BIG).flatten()[top].all()


def test_patch_mode_handles_sizes_that_tiles_do_not_divide_and_reports_progress() -> None:
    fractions: list[float] = []
    model = square_detector(1)

    heatmap = explain_in_patches(
        EXPLAINERS["saliency"](model),
        torch.rand(1, 1, 50, 70),
        0,
        Case("saliency").params(),
        (32, 24),
        0.5,
        lambda fraction, note=None: fractions.append(fraction),
        tiles_per_call=4,
    )

    assert heatmap.shape == (50, 70) and torch.isfinite(heatmap).all()
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_patch_mode_lets_cancellation_through() -> None:
    def cancel(fraction: float, note: str | None = None) -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        explain_in_patches(
            EXPLAINERS["saliency"](square_detector(1)),
            torch.rand(1, 1, 64, 64),
            0,
            Case("saliency").params(),
            32,
            0.25,
            cancel,
        )


def test_patch_mode_refuses_an_image_smaller_than_a_tile_and_a_bad_overlap() -> None:
    saliency = EXPLAINERS["saliency"](square_detector(1))
    params = Case("saliency").params()

    with pytest.raises(InvalidInput) as small:
        explain_in_patches(saliency, torch.rand(1, 1, 20, 64), 0, params, 32, 0.25)
    with pytest.raises(InvalidInput) as overlap:
        explain_in_patches(saliency, torch.rand(1, 1, 64, 64), 0, params, 32, 1.0)

    assert small.value.code == "image_smaller_than_patch"
    assert overlap.value.code == "invalid_params"
