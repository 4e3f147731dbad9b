"""Known-answer tests of workers.quality: infidelity, max-sensitivity and the randomisation check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.quality import infidelity, max_sensitivity, randomisation_check

SIZE = 16


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def linear_model(channels: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * SIZE * SIZE, 2))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * SIZE * SIZE, 2),
    )


def gradient_explainer(model: nn.Module):
    """Plain autograd saliency summed over channels; needs gradients even when called under no_grad."""

    def explain(images: torch.Tensor, targets: list[int]) -> torch.Tensor:
        images = images.clone().requires_grad_(True)
        scores = model(images)[torch.arange(len(targets)), targets].sum()
        return torch.autograd.grad(scores, images)[0].sum(dim=1)

    return explain


def image_itself(images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """An 'explanation' that ignores the model entirely."""
    return images.mean(dim=1)


# ---------------------------------------------------------------- infidelity


@pytest.mark.parametrize("channels", [1, 3])
def test_infidelity_of_the_exact_linear_explanation_is_zero(channels):
    model = linear_model(channels)
    image = torch.full((1, channels, SIZE, SIZE), 0.5)  # far from 0 and 1, so no clipping
    # For a linear logit w . x and noise shared by the channels of a pixel, the exact heatmap is sum_c w.
    exact = model[1].weight[1].detach().reshape(channels, SIZE, SIZE).sum(dim=0)

    perfect = infidelity(model, image, exact, target=1)["infidelity"]
    unnormalised = infidelity(model, image, exact, target=1, normalize=False)["infidelity"]
    rescaled = infidelity(model, image, 7 * exact, target=1)["infidelity"]
    wrong = infidelity(model, image, torch.rand(SIZE, SIZE), target=1)["infidelity"]

    assert perfect == pytest.approx(0, abs=1e-9)
    assert unnormalised == pytest.approx(0, abs=1e-9)
    assert rescaled == pytest.approx(0, abs=1e-9), "normalize makes the value blind to the heatmap's scale"
    assert wrong > 1e-6 and wrong > 1000 * max(perfect, 1e-12)


def test_infidelity_is_reproducible_and_states_its_settings():
    model = small_cnn()
    image = torch.rand(1, 1, SIZE, SIZE)
    heatmap = torch.rand(SIZE, SIZE)
    first = infidelity(model, image, heatmap, 0, seed=3)
    second = infidelity(model, image, heatmap, 0, seed=3)
    assert first == second
    assert first["settings"]["n_perturb_samples"] == 10
    assert "0.003" in first["settings"]["perturbation"]


def test_infidelity_refuses_a_heatmap_of_the_wrong_size():
    with pytest.raises(ValueError, match="heatmap of shape"):
        infidelity(linear_model(1), torch.rand(1, 1, SIZE, SIZE), torch.rand(8, 8), 0)


# ---------------------------------------------------------------- max-sensitivity


def test_a_gradient_of_a_linear_model_never_moves():
    model = linear_model(1)
    result = max_sensitivity(gradient_explainer(model), torch.rand(1, 1, SIZE, SIZE), target=1)
    assert result["max_sensitivity"] == pytest.approx(0, abs=1e-6)
    assert result["settings"]["n_perturb_samples"] == 5


def test_sensitivity_of_the_image_itself_is_bounded_by_the_radius():
    image = torch.full((1, 1, SIZE, SIZE), 0.5)
    value = max_sensitivity(image_itself, image, target=0, perturb_radius=0.02)["max_sensitivity"]
    # ||U(-r, r)|| / ||0.5|| over n pixels is at most r / 0.5 = 0.04 and close to (r / sqrt 3) / 0.5 = 0.023.
    assert 0.02 < value <= 0.04


def test_sensitivity_of_a_relu_network_gradient_is_positive_and_reproducible():
    model = small_cnn()
    image = torch.rand(1, 1, SIZE, SIZE)
    first = max_sensitivity(gradient_explainer(model), image, target=1, seed=1)
    second = max_sensitivity(gradient_explainer(model), image, target=1, seed=1)
    assert first["max_sensitivity"] > 0
    assert first == second


# ---------------------------------------------------------------- randomisation check


def test_saliency_depends_on_the_top_layer_and_the_model_is_left_untouched():
    model = small_cnn()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    image = torch.rand(1, 1, SIZE, SIZE)
    rng_before = torch.get_rng_state()

    result = randomisation_check(model, gradient_explainer, image, target=1)

    assert result["spearman"] < 0.9
    assert result["settings"]["layers"] == ["5"]
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert torch.equal(rng_before, torch.get_rng_state()), "the global RNG is left as found"


def test_the_cascade_goes_from_the_output_down_one_layer_per_stage():
    model = small_cnn()
    image = torch.rand(1, 1, SIZE, SIZE)

    cascade = randomisation_check(model, gradient_explainer, image, 1, layers="all")["cascade"]
    two = randomisation_check(model, gradient_explainer, image, 1, layers=2)["cascade"]

    assert [stage["layer"] for stage in cascade] == ["5", "2", "0"]
    assert [stage["layer"] for stage in two] == ["5", "2"]
    assert all(stage["spearman"] < 0.9 for stage in cascade)


def test_an_explanation_that_ignores_the_model_correlates_perfectly():
    image = torch.rand(1, 1, SIZE, SIZE)
    result = randomisation_check(small_cnn(), lambda model: image_itself, image, 0, layers="all")
    assert result["spearman"] == pytest.approx(1.0)
    assert all(stage["spearman"] == pytest.approx(1.0) for stage in result["cascade"])


def test_the_seed_fixes_the_randomised_weights():
    model = small_cnn()
    image = torch.rand(1, 1, SIZE, SIZE)
    first = randomisation_check(model, gradient_explainer, image, 1, seed=5)
    second = randomisation_check(model, gradient_explainer, image, 1, seed=5)
    assert first == second


@pytest.mark.parametrize("layers", ["bottom", 0, True])
def test_bad_layer_choices_are_refused(layers):
    with pytest.raises(ValueError, match="layers must be"):
        randomisation_check(small_cnn(), gradient_explainer, torch.rand(1, 1, SIZE, SIZE), 0, layers=layers)


def test_a_model_without_parameters_cannot_be_randomised():
    with pytest.raises(ValueError, match="no layer with parameters"):
        randomisation_check(nn.Flatten(), lambda model: image_itself, torch.rand(1, 1, SIZE, SIZE), 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quality_metrics_run_on_cuda():
    model = linear_model(1).cuda()
    image = torch.full((1, 1, SIZE, SIZE), 0.5, device="cuda")
    exact = model[1].weight[1].detach().reshape(SIZE, SIZE)
    assert infidelity(model, image, exact, 1)["infidelity"] == pytest.approx(0, abs=1e-9)
    sensitivity = max_sensitivity(gradient_explainer(model), image, 1)["max_sensitivity"]
    assert sensitivity == pytest.approx(0, abs=1e-6)
    cnn = small_cnn().cuda()
    check = randomisation_check(cnn, gradient_explainer, torch.rand(1, 1, SIZE, SIZE, device="cuda"), 1)
    assert check["spearman"] < 0.9
