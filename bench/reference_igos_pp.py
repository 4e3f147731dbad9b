"""The published iGOS++ schedule, re-implemented from the paper for bench_igos_pp.py to time against.

Written from the paper (Khorram et al. 2021, section 3.2) and from the description of the authors'
code in ../shared/notes/reference-implementations.md (A2); none of the published code (GPL) is
copied. What it reproduces is the published cost structure, one image at a time:

- per iteration, four separate integrated-gradient passes (deletion and insertion on the product
  mask, deletion on the deletion mask, insertion on the insertion mask), each one forward and one
  backward call over ``integration_steps`` noisy path images;
- an Armijo backtracking line search that evaluates the objective at the current masks first, then
  tries steps from ``step_size`` (1000) every iteration, shrinking by ``step_decay`` (0.2) until
  ``loss(new) <= loss - armijo_beta * step * |g|^2`` (1e-4) or the step falls below ``min_step_size``;
  every evaluation is the full four-term objective with fresh noise on every path image, each term
  its own forward call.

Masks, objective, regulariser, noise scale and baseline are those of ``workers.explainers.igos_pp``
(shared pure helpers), so a difference in the bench's deletion/insertion is down to the schedule. With
``IgosPP``'s paper-schedule setting (``PAPER_SCHEDULE``) the service draws the same noise in the same
order, and both give the same heatmap up to float rounding (tests/test_igos_pp.py checks it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.guard import model_left_as_found
from workers.explainers.igos_pp import (
    TERM_SIGNS,
    Settings,
    bilateral_weights,
    blur_baseline,
    regulariser,
    upsample,
)


def reference_igos_pp(model: nn.Module, image: torch.Tensor, target: int, params: dict[str, Any]) -> torch.Tensor:
    """Explain one image (1 x C x H x W in [0, 1]); returns the H x W heatmap, high = important.

    ``params`` are validated ``igos_pp`` parameters (defaults filled); only the optimisation ones are
    read (mask, iterations, integration steps, weights, noise, blur, line-search constants, seed):
    the published schedule is fixed here whatever the service's line-search settings say. The model
    runs in eval mode with its weights frozen, as in the service (restored afterwards).
    """
    with torch.enable_grad(), model_left_as_found(model):
        model.requires_grad_(False)
        return _PublishedSchedule(model, image.detach().float(), target, params).run()


def reference_igos_pp_batch(
    model: nn.Module, images: torch.Tensor, targets: list[int], params: dict[str, Any]
) -> torch.Tensor:
    """The published loop over images: B x H x W heatmaps."""
    return torch.stack([reference_igos_pp(model, images[i : i + 1], targets[i], params) for i in range(len(images))])


class _PublishedSchedule:
    def __init__(self, model: nn.Module, image: torch.Tensor, target: int, params: dict[str, Any]):
        self.model, self.image, self.target = model, image, target
        self.s = Settings.from_params(params, image.shape[-2], image.shape[-1])
        self.size = (image.shape[-2], image.shape[-1])
        self.baseline = blur_baseline(image, params["blur_kernel_fraction"])
        self.weights = bilateral_weights(image, params["btv_sigma"])
        self.generator = torch.Generator(image.device).manual_seed(params["seed"])
        self.alphas = torch.linspace(1 / self.s.steps, 1, self.s.steps, device=image.device).view(-1, 1, 1, 1)

    def run(self) -> torch.Tensor:
        masks_del = torch.ones(1, 1, *self.s.grid, device=self.image.device)
        masks_ins = torch.ones_like(masks_del)
        for _ in range(self.s.iterations):
            grad_del, grad_ins = self.gradient(masks_del, masks_ins)
            masks_del, masks_ins = self.line_search(masks_del, masks_ins, grad_del, grad_ins)
        return 1 - upsample(masks_del * masks_ins, self.size)[0, 0]

    def gradient(self, masks_del: torch.Tensor, masks_ins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Half the summed gradient of the four terms, one forward and backward call each, plus the regulariser's."""
        masks_del, masks_ins = masks_del.detach().requires_grad_(), masks_ins.detach().requires_grad_()
        noise = self.draw_noise()
        grad_del, grad_ins = torch.zeros_like(masks_del), torch.zeros_like(masks_ins)
        for index, sign in enumerate(TERM_SIGNS):
            score = self.term_score(index, masks_del, masks_ins, noise[index])
            term_del, term_ins = torch.autograd.grad(sign * score, (masks_del, masks_ins), allow_unused=True)
            grad_del += 0 if term_del is None else term_del
            grad_ins += 0 if term_ins is None else term_ins
        reg_del, reg_ins = torch.autograd.grad(self.regulariser(masks_del, masks_ins), (masks_del, masks_ins))
        return 0.5 * grad_del + reg_del, 0.5 * grad_ins + reg_ins

    def line_search(
        self, masks_del: torch.Tensor, masks_ins: torch.Tensor, grad_del: torch.Tensor, grad_ins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.s
        with torch.no_grad():
            base_loss = self.loss(masks_del, masks_ins)
            slope = -s.armijo_beta * float(grad_del.pow(2).sum() + grad_ins.pow(2).sum())
            step = s.step_size
            while True:
                trial_del = (masks_del - step * grad_del).clamp(0, 1)
                trial_ins = (masks_ins - step * grad_ins).clamp(0, 1)
                if self.loss(trial_del, trial_ins) <= base_loss + step * slope or step < s.min_step_size:
                    return trial_del, trial_ins
                step *= s.step_decay

    def loss(self, masks_del: torch.Tensor, masks_ins: torch.Tensor) -> float:
        """The four-term objective plus the regulariser, fresh noise, one forward call per term."""
        noise = self.draw_noise()
        scores = [self.term_score(index, masks_del, masks_ins, noise[index]) for index in range(4)]
        ig = sum(sign * score for sign, score in zip(TERM_SIGNS, scores))
        return float(ig + self.regulariser(masks_del, masks_ins))

    def term_score(
        self, index: int, masks_del: torch.Tensor, masks_ins: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Mean target probability along one term's path (terms in ``TERMS`` order)."""
        up_del, up_ins = upsample(masks_del, self.size), upsample(masks_ins, self.size)
        mask = (up_del * up_ins, up_del * up_ins, up_del, up_ins)[index]
        weight = self.alphas * mask
        difference = self.image - self.baseline
        path = self.baseline + weight * difference if index % 2 == 0 else self.image - weight * difference
        return torch.softmax(self.model(path + noise), dim=1)[:, self.target].mean()

    def regulariser(self, masks_del: torch.Tensor, masks_ins: torch.Tensor) -> torch.Tensor:
        s = self.s
        return regulariser(masks_del * masks_ins, self.weights, s.l1_weight, s.btv_weight, s.btv_beta)[0][0]

    def draw_noise(self) -> torch.Tensor:
        """Noise for one evaluation, 4 terms x steps path images, drawn in one call (the service's order)."""
        shape = (4 * self.s.steps, *self.image.shape[1:])
        if self.s.noise_std == 0:
            return torch.zeros(shape, device=self.image.device).view(4, self.s.steps, *self.image.shape[1:])
        noise = torch.randn(shape, generator=self.generator, device=self.image.device) * self.s.noise_std
        return noise.view(4, self.s.steps, *self.image.shape[1:])
