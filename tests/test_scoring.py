"""Known-answer tests of workers.scoring: prediction, deletion/insertion, complexity, localisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from workers.scoring import (
    EmptyAnnotation,
    complexity,
    deletion_insertion,
    localization,
    prediction,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


class SumModel(nn.Module):
    """Logit 0 is the sum of all pixel values, logit 1 is zero: the deletion curve is a running sum."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = images.sum(dim=(1, 2, 3))
        return torch.stack([total, torch.zeros_like(total)], dim=1)


class SquareModel(nn.Module):
    """A classifier that looks only at one square: class 1 when the square is bright."""

    def __init__(self, size: int, rows: slice, cols: slice):
        super().__init__()
        square = torch.zeros(size, size)
        square[rows, cols] = 1.0
        self.register_buffer("square", square)
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        brightness = (images * self.square).sum(dim=(1, 2, 3)) / (self.square.sum() * images.shape[1])
        logit = self.scale * (brightness - 0.5)
        return torch.stack([-logit / 2, logit / 2], dim=1)


# ---------------------------------------------------------------- prediction


def test_prediction_reports_the_argmax_class_and_its_softmax_probability():
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 3.0]))
    classifier = nn.Sequential(nn.Flatten(), model).train()

    result = prediction(classifier, torch.rand(1, 1, 2, 2), ["benign", "malignant"])

    expected = math.exp(3) / (math.exp(1) + math.exp(3))
    assert result["class"] == 1
    assert result["class_name"] == "malignant"
    assert result["score"] == pytest.approx(expected, rel=1e-6)
    assert result["probabilities"] == pytest.approx({"benign": 1 - expected, "malignant": expected}, rel=1e-6)
    assert classifier.training, "the model's mode is restored"


def test_prediction_refuses_a_class_list_that_does_not_match_the_logits():
    with pytest.raises(ValueError, match="expected \\(1, 3\\)"):
        prediction(SumModel(), torch.rand(1, 1, 2, 2), ["a", "b", "c"])


# ---------------------------------------------------------------- deletion / insertion

TINY_IMAGE = torch.tensor([[[[0.4, 0.3], [0.2, 0.1]]]])


def test_deletion_and_insertion_auc_equal_the_trapezoid_by_hand():
    result = deletion_insertion(
        SumModel(), TINY_IMAGE, TINY_IMAGE[0, 0], target=0,
        steps=4, deletion_baseline="zero", insertion_start="zero", score="logit",
    )

    # Pixels leave (or come back) in the order 0.4, 0.3, 0.2, 0.1; the logit is the sum left.
    assert result["fractions"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert result["deletion_curve"] == pytest.approx([1.0, 0.6, 0.3, 0.1, 0.0])
    assert result["insertion_curve"] == pytest.approx([0.0, 0.4, 0.7, 0.9, 1.0])
    assert result["deletion_auc"] == pytest.approx(0.25 * (0.8 + 0.45 + 0.2 + 0.05))  # 0.375
    assert result["insertion_auc"] == pytest.approx(0.25 * (0.2 + 0.55 + 0.8 + 0.95))  # 0.625


def test_fewer_steps_integrate_over_the_actual_fractions():
    result = deletion_insertion(
        SumModel(), TINY_IMAGE, TINY_IMAGE[0, 0], target=0, steps=2, deletion_baseline="zero", score="logit"
    )
    assert result["deletion_curve"] == pytest.approx([1.0, 0.3, 0.0])
    assert result["deletion_auc"] == pytest.approx(0.5 * (1.3 / 2 + 0.3 / 2))  # 0.4


def test_ties_are_broken_in_raster_order():
    flat = torch.ones(2, 2)
    result = deletion_insertion(
        SumModel(), TINY_IMAGE, flat, 0, steps=4, deletion_baseline="zero", score="logit"
    )
    # Raster order is the same as descending pixel value here, so the curve is the hand-computed one.
    assert result["deletion_curve"] == pytest.approx([1.0, 0.6, 0.3, 0.1, 0.0])


def test_mean_baseline_replaces_pixels_by_the_channel_mean():
    result = deletion_insertion(
        SumModel(), TINY_IMAGE, TINY_IMAGE[0, 0], 0, steps=4, deletion_baseline="mean", score="logit"
    )
    assert result["deletion_curve"] == pytest.approx([1.0, 0.85, 0.8, 0.85, 1.0])


def test_steps_are_capped_at_the_pixel_count_and_stated():
    result = deletion_insertion(SumModel(), TINY_IMAGE, TINY_IMAGE[0, 0], 0, steps=50, score="logit")
    settings = result["settings"]
    assert settings["steps"] == 4
    assert len(result["deletion_curve"]) == 5
    assert settings["blur"] == {"kernel": 3, "sigma": 5.0, "padding": "reflect"}


def _square_case():
    size = 20
    rows, cols = slice(4, 10), slice(10, 16)
    image = torch.zeros(1, 1, size, size)
    image[..., rows, cols] = 1.0
    right = torch.zeros(size, size)
    right[rows, cols] = 1.0
    return SquareModel(size, rows, cols), image, right


def test_the_right_heatmap_beats_random_and_inverted_heatmaps():
    model, image, right = _square_case()
    assert prediction(model, image, ["off", "on"])["class"] == 1

    def aucs(heatmap):
        result = deletion_insertion(model, image, heatmap, target=1, steps=40)
        return result["deletion_auc"], result["insertion_auc"]

    right_del, right_ins = aucs(right)
    random_del, random_ins = aucs(torch.rand(20, 20))
    inverted_del, inverted_ins = aucs(1 - right)

    assert right_del < random_del < inverted_del
    assert right_ins > random_ins > inverted_ins
    # The square is 9% of the image: deleting it first takes the score from 1 to the blurred image's
    # floor (about 0.05) within the first tenth of the pixels, so the area is that floor plus a sliver.
    assert right_del < 0.15
    assert right_ins > 0.85


def test_batch_size_does_not_change_the_curves():
    model, image, right = _square_case()
    heatmap = right + 0.1 * torch.rand(20, 20)
    one_by_one = deletion_insertion(model, image, heatmap, 1, steps=10, batch_size=1)
    all_at_once = deletion_insertion(model, image, heatmap, 1, steps=10, batch_size=64)
    assert one_by_one["deletion_curve"] == pytest.approx(all_at_once["deletion_curve"], abs=1e-6)
    assert one_by_one["insertion_curve"] == pytest.approx(all_at_once["insertion_curve"], abs=1e-6)


def test_settings_state_what_the_numbers_mean():
    model, image, right = _square_case()
    settings = deletion_insertion(model, image, right, 1, steps=10)["settings"]
    assert settings["baseline"] == "blur"
    assert settings["insertion_start"] == "blur"
    assert settings["blur"] == {"kernel": 11, "sigma": 5.0, "padding": "reflect"}
    assert settings["steps"] == 10
    assert settings["pixels_per_step"] == 40
    assert settings["score"] == "softmax probability of the target class"
    assert "trapezoid" in settings["integration"]
    assert settings["direction"] == "deletion: lower is better; insertion: higher is better"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deletion_baseline": "white"}, "unknown deletion_baseline"),
        ({"score": "probit"}, "unknown score"),
        ({"steps": 0}, "steps and batch_size must be positive"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        deletion_insertion(SumModel(), TINY_IMAGE, TINY_IMAGE[0, 0], 0, **kwargs)


def test_a_heatmap_of_the_wrong_size_or_with_nan_is_refused():
    with pytest.raises(ValueError, match="heatmap of shape"):
        deletion_insertion(SumModel(), TINY_IMAGE, torch.ones(3, 3), 0)
    with pytest.raises(ValueError, match="NaN"):
        deletion_insertion(SumModel(), TINY_IMAGE, torch.tensor([[1.0, float("nan")], [0.0, 0.0]]), 0)


# ---------------------------------------------------------------- complexity


def test_complexity_of_a_filled_square_is_its_area_fraction():
    heatmap = np.zeros((20, 20))
    heatmap[3:9, 5:11] = 1.0
    result = complexity(heatmap)
    assert result["area_fraction"] == pytest.approx(36 / 400)
    assert result["selected_fraction"] == pytest.approx(36 / 400)
    assert result["settings"]["top_fraction"] == 0.5


def test_complexity_keeps_the_top_half_of_the_pixels():
    # Values increase in raster order: the top half is the bottom half of the rows.
    heatmap = torch.arange(1, 101, dtype=torch.float32).reshape(10, 10)
    result = complexity(heatmap)
    assert result["selected_fraction"] == pytest.approx(0.5)
    assert result["area_fraction"] == pytest.approx(0.5)


def test_complexity_hull_covers_the_gap_between_distant_pixels():
    heatmap = np.zeros((10, 10))
    heatmap[0, 0] = heatmap[9, 9] = 1.0
    # Hull of the unit squares at (0,0) and (9,9): (0,0),(1,0),(10,9),(10,10),(9,10),(0,1); shoelace area 19.
    assert complexity(heatmap)["area_fraction"] == pytest.approx(19 / 100)


@pytest.mark.parametrize(
    ("pixels", "area"),
    [
        ([(4, 4)], 1),  # one point: a unit square, not a Qhull failure
        ([(2, 1), (2, 2), (2, 3), (2, 4)], 4),  # collinear pixels: a 1 x 4 strip
        ([], 0),  # nothing important at all
    ],
)
def test_complexity_handles_degenerate_selections(pixels, area):
    heatmap = np.zeros((10, 10))
    for row, col in pixels:
        heatmap[row, col] = 1.0
    assert complexity(heatmap)["area_fraction"] == pytest.approx(area / 100)


def test_complexity_of_a_flat_positive_map_is_the_whole_image():
    assert complexity(np.full((8, 8), 0.3))["area_fraction"] == pytest.approx(1.0)


def test_complexity_refuses_a_bad_fraction():
    with pytest.raises(ValueError, match="top_fraction"):
        complexity(np.ones((4, 4)), top_fraction=0)


# ---------------------------------------------------------------- localisation


def _top_ten_mask() -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask.ravel()[90:] = True
    return mask


def test_iou_at_each_percentile_of_a_ramp():
    heatmap = np.arange(100, dtype=float).reshape(10, 10)
    result = localization(heatmap, _top_ten_mask())
    # np.percentile(0..99, p): 84.15, 89.1, 94.05, 97.02 -> 15, 10, 5 and 2 pixels kept.
    assert result["iou_p85"] == pytest.approx(10 / 15)
    assert result["iou_p90"] == pytest.approx(1.0)
    assert result["iou_p95"] == pytest.approx(5 / 10)
    assert result["iou_p98"] == pytest.approx(2 / 10)
    assert result["settings"]["mask_fraction"] == pytest.approx(0.1)


def test_iou_of_a_heatmap_equal_to_a_ten_percent_mask():
    mask = _top_ten_mask()
    result = localization(mask.astype(float), mask)
    # The 85th percentile of 90 zeros and 10 ones is 0, so every pixel passes: IoU = 10/100.
    # From the 90th percentile on the threshold lies in (0, 1] and keeps exactly the mask.
    assert result["iou_p85"] == pytest.approx(0.1)
    assert result["iou_p90"] == result["iou_p95"] == result["iou_p98"] == pytest.approx(1.0)


def test_ncc_is_one_for_identical_maps_and_minus_one_for_inverted_ones():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:6, 3:9] = True
    assert localization(mask.astype(float), mask)["ncc"] == pytest.approx(1.0)
    assert localization(1.0 - mask, mask)["ncc"] == pytest.approx(-1.0)
    scaled = localization(torch.from_numpy(mask * 5.0 + 2.0), torch.from_numpy(mask))
    assert scaled["ncc"] == pytest.approx(1.0)


def test_ncc_of_a_constant_heatmap_is_undefined():
    assert localization(np.ones((6, 6)), np.eye(6, dtype=bool))["ncc"] is None


def test_an_empty_mask_is_a_clear_error():
    with pytest.raises(EmptyAnnotation, match="marks no pixel") as caught:
        localization(np.random.rand(8, 8), np.zeros((8, 8), dtype=bool))
    assert caught.value.code == "empty_annotation"
    assert isinstance(caught.value, ValueError)


def test_a_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match="mask shape"):
        localization(np.random.rand(8, 8), np.ones((4, 4), dtype=bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deletion_insertion_on_cuda_matches_cpu():
    model, image, right = _square_case()
    on_cpu = deletion_insertion(model, image, right, 1, steps=20)
    on_gpu = deletion_insertion(model.cuda(), image.cuda(), right.cuda(), 1, steps=20)
    assert on_gpu["deletion_auc"] == pytest.approx(on_cpu["deletion_auc"], abs=1e-5)
    assert on_gpu["insertion_auc"] == pytest.approx(on_cpu["insertion_auc"], abs=1e-5)
