"""The contract every catalogue method keeps, checked for every method x tiny real CNN (1 and 3 channels,
BatchNorm, in-place ReLU): shape, finiteness, batching, targets, progress, internal batch size, seeds, and a
model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xai.errors import InvalidInput, JobCancelled

from .cases import CASES, Case
from .networks import tiny_cnn

HEIGHT, WIDTH = 16, 20  # not square, so that a swapped height and width shows


@pytest.fixture(params=[1, 3], ids=["grey", "rgb"])
def model(request: pytest.FixtureRequest) -> nn.Sequential:
    return tiny_cnn(request.param)


def target_layer(model: nn.Sequential) -> nn.Module:
    """The last in-place ReLU for grey models, the last conv for RGB ones: both kinds must work."""
    return model[5] if model[0].in_channels == 1 else model[3]


def images_for(model: nn.Sequential, count: int) -> torch.Tensor:
    return torch.rand(count, model[0].in_channels, HEIGHT, WIDTH)


def predicted(model: nn.Module, images: torch.Tensor, rank: int = 0) -> list[int]:
    """The class ranked ``rank`` by the model for each image: CAMs keep positive evidence, so the top classes
    are the ones whose maps are not empty."""
    with torch.no_grad():
        return model.eval()(images).argsort(dim=1, descending=True)[:, rank].tolist()


def explain(case: Case, model: nn.Module, images: torch.Tensor, targets: list[int], progress=None, **params):
    explainer = case.explainer_class(model, target_layer=target_layer(model))
    if progress is None:
        return explainer.explain(images, targets, case.params(**params))
    return explainer.explain(images, targets, case.params(**params), progress)


def differ(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Clearly different relative to their scale (maps of a random CNN can be ~1e-9 everywhere)."""
    return float((first - second).abs().max()) > 1e-3 * float(torch.maximum(first.abs(), second.abs()).max())


def assert_same_map(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Equal up to float rounding of batched arithmetic, relative to the map's largest value."""
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max()))


def model_state(model: nn.Module) -> dict:
    return {
        "training": {name: module.training for name, module in model.named_modules()},
        "requires_grad": {name: param.requires_grad for name, param in model.named_parameters()},
        "grads": {name: param.grad for name, param in model.named_parameters()},
        "tensors": {name: value.clone() for name, value in model.state_dict().items()},
        "hooks": {
            name: sum(
                len(getattr(module, hooks))
                for hooks in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                )
            )
            for name, module in model.named_modules()
        },
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "hooks"):
        assert after[key] == before[key], key
    assert all(grad is None for grad in after["grads"].values())
    for name, value in before["tensors"].items():
        assert torch.equal(after["tensors"][name], value), name


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("count", [1, 3])
def test_heatmaps_have_the_input_size_and_are_finite(case: Case, model: nn.Sequential, count: int) -> None:
    images = images_for(model, count)

    explanation = explain(case, model, images, predicted(model, images))

    assert explanation.heatmaps.shape == (count, HEIGHT, WIDTH)
    assert explanation.heatmaps.dtype == torch.float32
    assert torch.isfinite(explanation.heatmaps).all()
    assert explanation.heatmaps.abs().sum() > 0
    assert len(explanation.details) == count


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_batch_equals_one_run_per_image_with_its_own_target(case: Case, model: nn.Sequential) -> None:
    images = images_for(model, 2)

    batch = explain(case, model, images, [0, 2]).heatmaps
    singles = torch.cat(
        [explain(case, model, images[:1], [0]).heatmaps, explain(case, model, images[1:], [2]).heatmaps]
    )

    assert_same_map(batch, singles)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_target_class_changes_the_heatmap(case: Case, model: nn.Sequential) -> None:
    image = images_for(model, 1)
    first, second = predicted(model, image, 0) + predicted(model, image, 1)

    heatmaps = explain(case, model, image.repeat(2, 1, 1, 1), [first, second]).heatmaps

    assert differ(heatmaps[0], heatmaps[1])


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_model_and_the_input_are_left_as_found(case: Case, model: nn.Sequential) -> None:
    model.train()
    model[0].requires_grad_(False)  # a partly frozen model: flags must come back mixed
    images = images_for(model, 2)
    pristine = images.clone()
    before = model_state(model)

    explain(case, model, images, [0, 1])

    assert_same_state(before, model_state(model))
    assert torch.equal(images, pristine)
    assert not images.requires_grad and images.grad is None


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_cancelling_through_progress_propagates_and_leaves_no_hooks(case: Case, model: nn.Sequential) -> None:
    def cancel(fraction: float, note: str | None = None) -> None:
        raise JobCancelled()

    model.train()
    before = model_state(model)

    with pytest.raises(JobCancelled):
        explain(case, model, images_for(model, 2), [0, 1], progress=cancel)

    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_progress_rises_to_one(case: Case, model: nn.Sequential) -> None:
    fractions: list[float] = []

    explain(
        case,
        model,
        images_for(model, 3),
        [0, 1, 2],
        progress=lambda fraction, note=None: fractions.append(fraction),
    )

    assert fractions and fractions == sorted(fractions)
    assert 0 < fractions[0] and fractions[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("case", [case for case in CASES if case.expands_batch], ids=lambda case: case.id)
def test_internal_batch_size_bounds_every_forward_pass(case: Case, model: nn.Sequential) -> None:
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    try:
        explain(case, model, images_for(model, 2), [0, 1], internal_batch_size=4)
    finally:
        handle.remove()

    assert max(rows) <= 4


@pytest.mark.parametrize(
    "case", [case for case in CASES if case.expands_batch and not case.random], ids=lambda case: case.id
)
def test_internal_batch_size_does_not_change_the_result(case: Case, model: nn.Sequential) -> None:
    images = images_for(model, 2)

    chunked = explain(case, model, images, [0, 1], internal_batch_size=3).heatmaps
    whole = explain(case, model, images, [0, 1], internal_batch_size=1024).heatmaps

    assert_same_map(chunked, whole)


@pytest.mark.parametrize("case", [case for case in CASES if case.random], ids=lambda case: case.id)
def test_a_seed_reproduces_its_heatmap_and_another_seed_does_not(case: Case, model: nn.Sequential) -> None:
    images = images_for(model, 2)

    first = explain(case, model, images, [0, 1], seed=7).heatmaps
    torch.manual_seed(99)  # the global state must not matter...
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    again = explain(case, model, images, [0, 1], seed=7).heatmaps
    other = explain(case, model, images, [0, 1], seed=8).heatmaps

    assert_same_map(again, first)
    assert differ(other, first)
    # ... and is left as it was.
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert (np.random.get_state()[1] == numpy_state).all()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_frozen_model_gives_the_same_heatmaps(case: Case, model: nn.Sequential) -> None:
    images = images_for(model, 2)
    trainable = explain(case, model, images, [0, 1]).heatmaps

    model.requires_grad_(False)  # as a loader that freezes weights for inference would leave it
    frozen = explain(case, model, images, [0, 1]).heatmaps

    assert_same_map(frozen, trainable)


@pytest.mark.parametrize(
    "case", [case for case in CASES if case.explainer_class.needs_target_layer], ids=lambda case: case.id
)
def test_cam_methods_refuse_a_missing_target_layer(case: Case, model: nn.Sequential) -> None:
    with pytest.raises(InvalidInput) as error:
        case.explainer_class(model, target_layer=None)

    assert error.value.code == "target_layer_required"
    assert "target_layer" in error.value.message
