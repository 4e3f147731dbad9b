"""The naive baseline for bench_igos_pp.py: iGOS++ one image at a time, one term per pass.

This is the same algorithm as ``workers.explainers.igos_pp.IgosPP`` (same masks, objective, noise
draws, line search and update), evaluated the straightforward way the published code does it: a loop
over images, and for each image each of the four integrated-gradient terms as its own forward (and
backward) pass of ``integration_steps`` path images; the line search tries one step at a time for
one image. It shares only the pure tensor helpers (grid, blur, bilateral weights, regulariser) with
the service's module, so the bench also cross-checks the batched path-image bookkeeping: both should
give the same heatmap up to float rounding.

Not the published code (none of it is copied): it exists to measure what batching buys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.explainers.igos_pp import (
    TERM_SIGNS,
    Settings,
    bilateral_weights,
    blur_baseline,
    regulariser,
    upsample,
)


def naive_igos_pp(model: nn.Module, image: torch.Tensor, target: int, params: dict[str, Any]) -> torch.Tensor:
    """Explain one image (1 x C x H x W in [0, 1]) with iGOS++; returns the H x W heatmap, high = important.

    ``params`` are the validated ``igos_pp`` parameters (defaults filled); ``metric_steps`` and
    ``internal_batch_size`` are ignored (no metrics, one term per pass).
    """
    model.eval()
    with torch.enable_grad():
        return _optimise(model, image.detach().float(), target, params)


def naive_igos_pp_batch(
    model: nn.Module, images: torch.Tensor, targets: list[int], params: dict[str, Any]
) -> torch.Tensor:
    """The loop over images: B x H x W heatmaps."""
    heatmaps = [naive_igos_pp(model, images[i : i + 1], targets[i], params) for i in range(len(images))]
    return torch.stack(heatmaps)


def _optimise(model: nn.Module, image: torch.Tensor, target: int, params: dict[str, Any]) -> torch.Tensor:
    s = Settings.from_params(params, image.shape[-2], image.shape[-1])
    size = (image.shape[-2], image.shape[-1])
    baseline = blur_baseline(image, params["blur_kernel_fraction"])
    weights = bilateral_weights(image, params["btv_sigma"])
    generator = torch.Generator(image.device).manual_seed(params["seed"])
    alphas = torch.linspace(1 / s.steps, 1, s.steps, device=image.device).view(-1, 1, 1, 1)

    def draw_noise() -> torch.Tensor:
        shape = (4 * s.steps, *image.shape[1:])
        if s.noise_std == 0:
            return torch.zeros(shape, device=image.device)
        return torch.randn(shape, generator=generator, device=image.device) * s.noise_std

    def term(mask: torch.Tensor, deletion: bool, noise: torch.Tensor) -> torch.Tensor:
        weight = alphas * mask  # steps x 1 x H x W
        if deletion:
            path = baseline + weight * (image - baseline)
        else:
            path = image - weight * (image - baseline)
        return torch.softmax(model(path + noise), dim=1)[:, target].mean()

    def objective(masks_del: torch.Tensor, masks_ins: torch.Tensor) -> tuple[list, torch.Tensor]:
        # One noise draw per evaluation, all four terms at once, in the service's order.
        noise = draw_noise().view(4, s.steps, *image.shape[1:])
        up_del, up_ins = upsample(masks_del, size), upsample(masks_ins, size)
        masks = (up_del * up_ins, up_del * up_ins, up_del, up_ins)
        scores = [term(mask, index % 2 == 0, noise[index]) for index, mask in enumerate(masks)]
        reg = regulariser(masks_del * masks_ins, weights, s.l1_weight, s.btv_weight, s.btv_beta)[0][0]
        return scores, reg

    masks_del = torch.ones(1, 1, *s.grid, device=image.device)
    masks_ins = torch.ones_like(masks_del)
    for _ in range(s.iterations):
        masks_del.requires_grad_(True)
        masks_ins.requires_grad_(True)
        scores, reg = objective(masks_del, masks_ins)
        ig = sum(sign * score for sign, score in zip(TERM_SIGNS, scores))
        grad_del, grad_ins = torch.autograd.grad(0.5 * ig + reg, (masks_del, masks_ins))
        base_loss = float((ig + reg).detach())
        masks_del, masks_ins = masks_del.detach(), masks_ins.detach()
        slope = -s.armijo_beta * float(grad_del.pow(2).sum() + grad_ins.pow(2).sum())
        step = s.step_size
        with torch.no_grad():
            while True:
                trial_del = (masks_del - step * grad_del).clamp(0, 1)
                trial_ins = (masks_ins - step * grad_ins).clamp(0, 1)
                scores, reg = objective(trial_del, trial_ins)
                loss = float(sum(sign * score for sign, score in zip(TERM_SIGNS, scores)) + reg)
                if loss <= base_loss + step * slope or step < s.min_step_size:
                    break
                step *= s.step_decay
        masks_del, masks_ins = trial_del, trial_ins
    return 1 - upsample(masks_del * masks_ins, size)[0, 0]
