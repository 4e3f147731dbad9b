"""iGOS++ (workers/explainers/igos_pp.py): known answers on small real torch models.

The models are tiny on purpose (the CI machine has two shared cores): a linear read-out of one
square of pixels, whose decision depends on nothing else, and a seeded three-class CNN.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.explainers.base import no_progress
from workers.explainers import igos_pp
from workers.explainers.igos_pp import (
    IgosPP,
    Settings,
    _next_first_steps,
    bilateral_weights,
    evenly_spaced_points,
    mask_grid,
    optimise,
    regulariser,
)
from xai.errors import InvalidInput, JobCancelled
from xai.methods.igos_pp import PAPER_SCHEDULE, SPECS

SPEC = SPECS[0]
SQUARE = (slice(6, 12), slice(10, 16))  # rows, columns of the evidence square in a 24 x 24 image


class SquareEvidence(nn.Module):
    """A sigmoid-style binary model: one logit z from the mean of one square, shown as [-z/2, z/2].

    The square is bright in the test image and the blur baseline dims it, so class 1 is likely on the
    image and unlikely on the baseline; no pixel outside the square can change the output.
    """

    def __init__(self, height: int = 24, width: int = 24, square=SQUARE):
        super().__init__()
        self.readout = nn.Linear(height * width, 1)
        region = torch.zeros(height, width)
        region[square] = 1
        with torch.no_grad():
            self.readout.weight.copy_(region.flatten()[None] * 10 / region.sum())
            self.readout.bias.fill_(-7.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.readout(images.flatten(1))
        return torch.cat([-z / 2, z / 2], dim=1)


def square_image(height: int = 24, width: int = 24, square=SQUARE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, height, width, generator=generator) * 0.5
    image[..., square[0], square[1]] = 1.0
    return image


def tiny_cnn(channels: int = 3, classes: int = 3) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, classes),
    )


def params(**given) -> dict:
    return SPEC.resolve_params(given)


FAST = {"iterations": 3, "integration_steps": 4, "metric_steps": 8}


def test_spec_defaults_are_the_papers_settings():
    defaults = {p.name: p.default for p in SPEC.params}
    assert SPEC.name == IgosPP.name == "igos_pp" and SPEC.queue == "slow"
    assert (defaults["mask_size"], defaults["iterations"], defaults["integration_steps"]) == (28, 15, 20)
    assert defaults["l1_weight"] == 1.0 and defaults["l1_weight_full_resolution"] == 10.0
    assert defaults["btv_weight"] == 20.0 and defaults["btv_beta"] == 2.0
    assert (defaults["step_size"], defaults["armijo_beta"], defaults["step_decay"]) == (1000.0, 1e-4, 0.2)
    assert defaults["min_step_size"] == 1e-5
    # The service's line search departs from the paper by default; PAPER_SCHEDULE undoes every departure.
    assert (defaults["line_search_start"], defaults["line_search_noise"]) == ("warm", "shared")
    assert defaults["line_search_points"] == 5 and defaults["precision"] == "auto"
    paper = Settings.from_params(params(**PAPER_SCHEDULE), 28, 28)
    assert not paper.warm_start and not paper.shared_noise and paper.search_points == paper.steps == 20
    assert paper.autocast is None  # float32 even on a CPU with AMX
    for param in SPEC.params:
        assert param.description and (param.minimum is not None or param.choices)


def test_mask_grid_keeps_aspect_ratio():
    assert mask_grid(28, 28, 7) == (7, 7)
    assert mask_grid(20, 32, 7) == (7, 11)
    assert mask_grid(32, 20, 7) == (11, 7)
    assert mask_grid(20, 32, 20) == (20, 32)  # one cell per pixel
    with pytest.raises(InvalidInput) as error:
        mask_grid(20, 32, 21)
    assert error.value.code == "invalid_params"


def test_regulariser_known_values():
    # A mask that is 0 on the left half and 1 on the right of a 4 x 4 grid, at image resolution.
    mask = torch.ones(1, 1, 4, 4)
    mask[..., :2] = 0
    flat = bilateral_weights(torch.full((1, 1, 4, 4), 0.5), sigma=0.01)
    total, l1, btv = regulariser(mask, flat, l1_weight=2.0, btv_weight=3.0, beta=2.0)
    # One jump of 1 among the 3 horizontal differences of each row: TV = 1/3; flat image: bilateral = TV.
    assert l1.item() == pytest.approx(0.5)
    assert btv.item() == pytest.approx(1 / 3)
    assert total.item() == pytest.approx(2.0 * 0.5 + 3.0 / 3)
    # The same jump on an image edge costs nothing in the bilateral half: BTV = (1/3 + 0) / 2.
    edge_image = torch.zeros(1, 1, 4, 4)
    edge_image[..., 2:] = 1.0
    _, _, btv_on_edge = regulariser(mask, bilateral_weights(edge_image, 0.01), 2.0, 3.0, 2.0)
    assert btv_on_edge.item() == pytest.approx(1 / 6, abs=1e-6)


def test_search_points_are_a_coarser_right_riemann_sum():
    # alphas 1/20 ... 1: every fourth point is alpha 0.2, 0.4, ..., 1.0.
    assert evenly_spaced_points(20, 5).tolist() == [3, 7, 11, 15, 19]
    assert evenly_spaced_points(20, 20).tolist() == list(range(20))
    assert evenly_spaced_points(4, 1).tolist() == [3]


def test_warm_start_begins_one_decay_above_the_accepted_step():
    warm = Settings.from_params(params(), 28, 28)
    accepted = torch.tensor([1.6, 8.0, 500.0, 1e-6])
    # 1.6 / 0.2 = 8; 8 / 0.2 = 40; 500 / 0.2 capped at 1000; a collapsed search restarts at 1000.
    assert _next_first_steps(warm, accepted).tolist() == pytest.approx([8.0, 40.0, 1000.0, 1000.0])
    paper = Settings.from_params(params(**PAPER_SCHEDULE), 28, 28)
    assert _next_first_steps(paper, accepted).tolist() == [1000.0] * 4


@pytest.mark.parametrize("amx", [True, False])
def test_precision_auto_is_bfloat16_only_on_a_cpu_with_amx(monkeypatch, amx):
    monkeypatch.setattr(igos_pp, "cpu_has_amx", lambda: amx)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert igos_pp.autocast_dtype("auto", cpu) == (torch.bfloat16 if amx else None)
    assert igos_pp.autocast_dtype("auto", None) == (torch.bfloat16 if amx else None)  # None: the CPU
    assert igos_pp.autocast_dtype("auto", cuda) is None
    assert igos_pp.autocast_dtype("float32", cpu) is None
    assert igos_pp.autocast_dtype("bfloat16", cpu) == igos_pp.autocast_dtype("bfloat16", cuda) == torch.bfloat16
    chosen = Settings.from_params(params(), 28, 28, cpu)
    assert chosen.autocast == (torch.bfloat16 if amx else None)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_bfloat16_runs_the_model_in_bfloat16_and_finds_the_evidence(precision):
    model, image = SquareEvidence(), square_image()
    seen = set()
    model.readout.register_forward_hook(
        lambda _module, _inputs, output: seen.add((torch.is_grad_enabled(), output.dtype))
    )
    result = optimise(model.eval(), image, [1], params(mask_size=24, precision=precision), no_progress)
    # The gradient passes run in the chosen precision; the line search and the start scores in float32.
    gradient_dtype = torch.float32 if precision == "float32" else torch.bfloat16
    assert seen == {(True, gradient_dtype), (False, torch.float32)}
    heatmap = result.heatmaps()["product"][0]
    region = torch.zeros(24, 24, dtype=torch.bool)
    region[SQUARE] = True
    assert heatmap.dtype == result.final["loss"].dtype == torch.float32
    assert heatmap[region].sum() / heatmap.sum() > 0.9  # float32 and bfloat16 alike: 0.91 of the mass
    assert result.final["loss"].item() < result.initial["loss"].item()


def _reference_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "reference_igos_pp.py"
    spec = importlib.util.spec_from_file_location("reference_igos_pp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_schedule_gives_the_published_schedule_reference():
    # bench/reference_igos_pp.py re-implements the published one-image, one-term-per-pass loop;
    # with PAPER_SCHEDULE the batched explainer draws the same noise and takes the same steps.
    reference = _reference_module()
    model = tiny_cnn().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    chosen = params(mask_size=8, internal_batch_size=7, **FAST, **PAPER_SCHEDULE)
    ours = optimise(model, images, [0, 2], chosen, no_progress).heatmaps()["product"]
    theirs = reference.reference_igos_pp_batch(model, images, [0, 2], chosen)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_default_line_search_forwards_fewer_images_than_the_papers():
    model, image = SquareEvidence(), square_image()
    forwarded = []
    model.register_forward_hook(lambda _module, inputs, _output: forwarded.append(len(inputs[0])))
    chosen = {"mask_size": 12, "iterations": 6, "integration_steps": 8}
    counts = {}
    for name, schedule in (("ours", {}), ("paper", PAPER_SCHEDULE)):
        forwarded.clear()
        result = optimise(model.eval(), image, [1], params(**chosen, **schedule), no_progress)
        counts[name] = sum(forwarded)
        assert result.final["loss"].item() < result.initial["loss"].item()
    # Paper: 6 x (32 gradient + 32 base + 32 per trial, >= 1 trial). Ours: 6 x (32 + 4 x 5 per trial).
    assert counts["paper"] >= 6 * 3 * 32
    assert counts["ours"] < counts["paper"] / 2


def test_mask_concentrates_on_the_only_evidence():
    model, image = SquareEvidence(), square_image()
    explanation = IgosPP(model).explain(image, [1], params(mask_size=24))
    heatmap = explanation.heatmaps[0]
    region = torch.zeros(24, 24, dtype=torch.bool)
    region[SQUARE] = True
    top = heatmap.flatten().topk(int(region.sum())).indices
    assert region.flatten()[top].float().mean() > 0.9
    assert heatmap[region].sum() / heatmap.sum() > 0.6  # the square is 6% of the image
    details = explanation.details[0]
    assert details["l1_weight_used"] == 10.0  # full-resolution mask: the paper's higher L1 weight
    assert details["final_loss"] < details["initial_loss"]
    # Revealing the square first restores the score quickly; removing it first kills it.
    product = details["mask_auc"]["product"]
    assert product["insertion_auc"] > 0.7 > product["deletion_auc"]


def test_masks_stay_in_unit_range_and_details_are_complete():
    model, image = SquareEvidence(), square_image()
    explanation = IgosPP(model).explain(image, [1], params(mask_size=8, **FAST))
    heatmap = explanation.heatmaps[0]
    assert heatmap.shape == (24, 24) and heatmap.min() >= 0 and heatmap.max() <= 1
    details = explanation.details[0]
    assert details["iterations"] == 3 and details["mask_resolution"] == [8, 8]
    assert len(details["loss_per_iteration"]) == 3 and len(details["step_per_iteration"]) == 3
    assert set(details["final_loss_terms"]) == {
        "deletion_product", "insertion_product", "deletion_mask", "insertion_mask", "l1", "btv", "regulariser"
    }
    for name in ("deletion_mask", "insertion_mask", "product"):
        assert 0 <= details["mask_auc"][name]["deletion_auc"] <= 1
        assert 0 <= details["mask_auc"][name]["insertion_auc"] <= 1
    assert details["target_score"] > 0.9 > details["baseline_score"]


def test_masks_are_clamped_and_the_loss_decreases():
    model, image = SquareEvidence(), square_image()
    result = optimise(model.eval(), image, [1], params(mask_size=12, iterations=6), lambda f, n: None)
    for masks in (result.masks_del, result.masks_ins):
        assert masks.min() >= 0 and masks.max() <= 1
        assert masks.min() < 0.5  # the optimisation moved them
    assert result.final["loss"].item() < result.initial["loss"].item()


def test_cancel_stops_within_one_iteration():
    model, image = SquareEvidence(), square_image()
    calls = {"forward": 0}
    model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    seen = []

    def cancel(fraction, note):
        seen.append((calls["forward"], note))
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        IgosPP(model).explain(image, [1], params(mask_size=8, iterations=50, integration_steps=4), cancel)
    assert len(seen) == 1 and seen[0][1].startswith("iteration 1/50, loss ")
    assert calls["forward"] == seen[0][0]  # nothing ran after the first iteration's report


def test_batch_equals_one_image_at_a_time():
    model = tiny_cnn()
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 16, 16, generator=generator)
    chosen = params(mask_size=8, internal_batch_size=7, **FAST)  # chunks straddle images and terms
    explainer = IgosPP(model)
    batched = explainer.explain(images, [0, 2], chosen)
    for i, target in enumerate([0, 2]):
        alone = explainer.explain(images[i : i + 1], [target], chosen)
        torch.testing.assert_close(batched.heatmaps[i], alone.heatmaps[0], atol=1e-4, rtol=0)
        assert batched.details[i]["final_loss"] == pytest.approx(alone.details[0]["final_loss"], abs=1e-4)


def test_model_and_input_left_as_found():
    model = tiny_cnn().train()
    image = torch.rand(1, 3, 16, 16)
    before = image.clone()
    IgosPP(model).explain(image, [1], params(mask_size=8, **FAST))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert torch.equal(image, before)


def test_non_square_grey_input():
    square = (slice(4, 10), slice(20, 28))
    model, image = SquareEvidence(16, 40, square), square_image(16, 40, square)
    explanation = IgosPP(model).explain(image, [1], params(mask_size=8, iterations=6, integration_steps=8))
    assert explanation.heatmaps.shape == (1, 16, 40)
    assert explanation.details[0]["mask_resolution"] == [8, 20]
    region = torch.zeros(16, 40, dtype=torch.bool)
    region[square] = True
    heatmap = explanation.heatmaps[0]
    assert heatmap[region].mean() > 3 * heatmap[~region].mean()


def test_refuses_bad_mask_size_and_target():
    model, image = SquareEvidence(), square_image()
    with pytest.raises(InvalidInput) as error:
        IgosPP(model).explain(image, [1], params(mask_size=25))
    assert error.value.code == "invalid_params"
    with pytest.raises(InvalidInput) as error:
        IgosPP(model).explain(image, [2], params(mask_size=8, **FAST))
    assert error.value.code == "target_out_of_range"


def test_runs_under_inference_mode():
    # Jobs may call explainers inside torch.inference_mode(); the optimisation needs autograd anyway.
    model, image = SquareEvidence(), square_image()
    with torch.inference_mode():
        explanation = IgosPP(model).explain(image, [1], params(mask_size=8, **FAST))
    assert explanation.heatmaps.max() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu_answer():
    model, image = SquareEvidence().cuda(), square_image().cuda()
    explanation = IgosPP(model).explain(image, [1], params(mask_size=24))
    heatmap = explanation.heatmaps[0].cpu()
    region = torch.zeros(24, 24, dtype=torch.bool)
    region[SQUARE] = True
    assert heatmap.device.type == "cpu" and heatmap[region].sum() / heatmap.sum() > 0.6
