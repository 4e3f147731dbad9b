"""Methods checked against answers known in closed form or by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.explainers import EXPLAINERS
from workers.explainers._catalogue import baseline_images

from .cases import Case
from .networks import linear_model, square_detector, square_image, square_mask, tiny_cnn

HEIGHT, WIDTH = 6, 7


def explain(
    method: str, model: nn.Module, images: torch.Tensor, targets: list[int], target_layer=None, **overrides
):
    explainer = EXPLAINERS[method](model, target_layer=target_layer)
    return explainer.explain(images, targets, Case(method, overrides).params())


def linear_weights(model: nn.Sequential, target: int, channels: int) -> torch.Tensor:
    return model[1].weight[target].detach().view(channels, HEIGHT, WIDTH)


@pytest.mark.parametrize("channels", [1, 3])
def test_saliency_of_a_linear_model_is_the_absolute_weight(channels: int) -> None:
    model = linear_model(channels, HEIGHT, WIDTH)

    heatmap = explain("saliency", model, torch.rand(1, channels, HEIGHT, WIDTH), [1]).heatmaps[0]

    torch.testing.assert_close(heatmap, linear_weights(model, 1, channels).abs().sum(dim=0))


@pytest.mark.parametrize("channels", [1, 3])
def test_gradient_x_input_of_a_linear_model_is_weight_times_input(channels: int) -> None:
    model = linear_model(channels, HEIGHT, WIDTH)
    image = torch.rand(1, channels, HEIGHT, WIDTH)

    heatmap = explain("input_x_gradient", model, image, [0], sign="all").heatmaps[0]

    torch.testing.assert_close(heatmap, (linear_weights(model, 0, channels) * image[0]).sum(dim=0))


def test_gradient_shap_of_a_linear_model_from_black_is_weight_times_input() -> None:
    model = linear_model(1, HEIGHT, WIDTH)
    image = torch.rand(1, 1, HEIGHT, WIDTH)

    heatmap = explain(
        "gradient_shap", model, image, [0], baselines="black", n_samples=5, sign="all"
    ).heatmaps[0]

    torch.testing.assert_close(heatmap, linear_weights(model, 0, 1)[0] * image[0, 0])


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("occlusion", {"window": 1, "stride": 1}),
        ("feature_ablation", {"grid": max(HEIGHT, WIDTH)}),
        ("shapley_value_sampling", {"grid": max(HEIGHT, WIDTH), "n_samples": 2}),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_removing_one_pixel_of_a_linear_model_costs_weight_times_input(
    method: str, overrides: dict, channels: int
) -> None:
    """One pixel per feature and a black baseline: the score drop is sum_c w_c x_c, and for an additive model
    every Shapley ordering gives that too."""
    model = linear_model(channels, HEIGHT, WIDTH)
    image = torch.rand(2, channels, HEIGHT, WIDTH)

    heatmaps = explain(method, model, image, [0, 1], **overrides).heatmaps

    for index, target in enumerate([0, 1]):
        expected = (linear_weights(model, target, channels) * image[index]).sum(dim=0)
        torch.testing.assert_close(heatmaps[index], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("baseline", ["black", "white", "blur"])
def test_integrated_gradients_is_complete(baseline: str) -> None:
    """sum(attributions) = f(x) - f(baseline) for the target (completeness), within 1 % with 64 steps."""
    model = tiny_cnn(3).eval()
    images = torch.rand(2, 3, 12, 12)

    explanation = explain(
        "integrated_gradients", model, images, [0, 2], baseline=baseline, n_steps=64, sign="all"
    )

    with torch.no_grad():
        gain = model(images)[[0, 1], [0, 2]] - model(baseline_images(images, baseline))[[0, 1], [0, 2]]
    totals = explanation.heatmaps.sum(dim=(1, 2))
    torch.testing.assert_close(totals, gain, rtol=1e-2, atol=1e-2 * float(gain.abs().max()))
    deltas = torch.tensor([detail["convergence_delta"] for detail in explanation.details])
    torch.testing.assert_close(deltas, totals - gain, rtol=0, atol=1e-5)


def test_deeplift_sums_to_the_score_difference() -> None:
    """DeepLIFT's rescale rule is exact on a ReLU network (summation-to-delta), in-place ReLUs included."""
    model = tiny_cnn(3).eval()
    images = torch.rand(2, 3, 12, 12)

    explanation = explain("deeplift", model, images, [1, 2], sign="all")

    with torch.no_grad():
        gain = model(images)[[0, 1], [1, 2]] - model(torch.zeros_like(images))[[0, 1], [1, 2]]
    torch.testing.assert_close(explanation.heatmaps.sum(dim=(1, 2)), gain, rtol=1e-4, atol=1e-6)


KNOWN_REGION = [
    Case("saliency"),
    Case("integrated_gradients", {"n_steps": 16}),
    Case("smoothgrad", {"nt_samples": 8, "stdev": 0.05}),
    Case(
        "smoothgrad",
        {"nt_samples": 4, "stdev": 0.05, "base": "integrated_gradients", "n_steps": 8},
        "smoothgrad-ig",
    ),
    Case("input_x_gradient"),
    Case("guided_backprop"),
    Case("deeplift"),
    Case("gradient_shap", {"baselines": "black", "n_samples": 8}),
    Case("occlusion", {"window": 4, "stride": 2}),
    Case("feature_ablation", {"grid": 8}),
    Case("shapley_value_sampling", {"grid": 4, "n_samples": 3}),
    Case("grad_cam"),
    Case("guided_grad_cam"),
    Case("grad_cam_plus_plus"),
    Case("score_cam"),
    Case("rise", {"n_masks": 400, "grid": 4}),
]


@pytest.mark.parametrize("case", KNOWN_REGION, ids=lambda case: case.id)
@pytest.mark.parametrize("channels", [1, 3])
def test_the_strongest_pixels_lie_in_the_only_region_the_decision_depends_on(
    case: Case, channels: int
) -> None:
    """The square detector's class-0 score depends on the bright square only: the top 16 of its 64 pixels
    must lie inside it. (Deconvolution is left out: it ignores the forward ReLU masks, so on this network its
    map is the same everywhere, which is the known weakness Adebayo et al. 2018 describe.)"""
    model = square_detector(channels)
    image = square_image(channels)

    heatmap = (
        EXPLAINERS[case.method](model, target_layer=model[4]).explain(image, [0], case.params()).heatmaps[0]
    )

    top = heatmap.flatten().topk(16).indices
    assert square_mask().flatten()[top].all()
