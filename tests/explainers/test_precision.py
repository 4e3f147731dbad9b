"""Mixed precision: a no-op on CPU; under autocast, a float32 re-run when the heatmap is not finite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.explainers import EXPLAINERS
from workers.precision import FALLBACK, explain_autocast_or_float32, explain_mixed_precision

from .cases import CASES, Case
from .networks import tiny_cnn

RISE = Case("rise", {"n_masks": 16, "grid": 4})


def overflowing_cnn() -> nn.Sequential:
    """Finite in float32, but its logits exceed float16's range (65504): softmax gives NaN under autocast."""
    model = tiny_cnn(1)
    with torch.no_grad():
        model[8].weight.mul_(1e6)
    return model


def test_on_cpu_mixed_precision_is_plain_explain() -> None:
    model = tiny_cnn(3)
    images = torch.rand(2, 3, 16, 16)
    explainer = EXPLAINERS["integrated_gradients"](model)
    params = Case("integrated_gradients", {"n_steps": 8}).params()

    explanation, precision = explain_mixed_precision(explainer, images, [0, 1], params)

    assert precision == "float32"
    torch.testing.assert_close(explanation.heatmaps, explainer.explain(images, [0, 1], params).heatmaps)


def test_a_non_finite_autocast_heatmap_is_recomputed_in_float32() -> None:
    model = overflowing_cnn()
    images = torch.rand(2, 1, 16, 16)
    explainer = EXPLAINERS["rise"](model)

    explanation, precision = explain_autocast_or_float32(
        explainer, images, [0, 1], RISE.params(), lambda *_: None, device_type="cpu", dtype=torch.float16
    )

    assert precision == FALLBACK
    torch.testing.assert_close(
        explanation.heatmaps, explainer.explain(images, [0, 1], RISE.params()).heatmaps
    )


def test_a_finite_autocast_heatmap_is_kept_and_close_to_float32() -> None:
    model = tiny_cnn(1)
    images = torch.rand(2, 1, 16, 16)
    explainer = EXPLAINERS["rise"](model)
    before = {name: param.requires_grad for name, param in model.named_parameters()}

    explanation, precision = explain_autocast_or_float32(
        explainer, images, [0, 1], RISE.params(), lambda *_: None, device_type="cpu", dtype=torch.bfloat16
    )

    assert precision == "bfloat16"
    assert explanation.heatmaps.dtype == torch.float32
    full = explainer.explain(images, [0, 1], RISE.params()).heatmaps
    torch.testing.assert_close(explanation.heatmaps, full, rtol=0.05, atol=0.05 * float(full.abs().max()))
    assert (
        before == {name: param.requires_grad for name, param in model.named_parameters()} and model.training
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_method_runs_under_mixed_precision_on_cuda(case: Case) -> None:
    model = tiny_cnn(3).cuda()
    images = torch.rand(2, 3, 16, 20, device="cuda")
    explainer = case.explainer_class(model, target_layer=model[5])

    explanation, precision = explain_mixed_precision(explainer, images, [0, 1], case.params())

    assert precision == ("float16" if case.explainer_class.supports_autocast else "float32")
    assert explanation.heatmaps.shape == (2, 16, 20) and torch.isfinite(explanation.heatmaps).all()
