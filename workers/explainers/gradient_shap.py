"""GradientSHAP (expected gradients): gradients at random points between the input and random baselines."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution, rows_per_pass

_NOISE_BASELINES = 8


class GradientShap(CaptumAttribution):
    """Captum GradientShap over a baseline distribution: black and white, black, or uniform noise images.

    Params: ``baselines``, ``n_samples``, ``stdev``, ``sign``, ``seed``, ``internal_batch_size`` (samples per
    pass; the average over passes is weighted by their sample counts, so it equals one big pass in law).
    Each image is explained under its own seeded generator. References: arXiv:1705.07874, arXiv:1906.10670.

    Example:
        >>> params = {"baselines": "black_white", "n_samples": 20, "stdev": 0.0, "sign": "absolute",
        ...           "seed": 0, "internal_batch_size": 64}
        >>> heatmaps = GradientShap(model).explain(images, [1], params).heatmaps
    """

    name = "gradient_shap"
    random_per_image: ClassVar[bool] = True

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        return params["n_samples"]

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        shap = captum.attr.GradientShap(model)
        baselines = baseline_distribution(inputs.detach(), params["baselines"])
        total, per_pass = params["n_samples"], rows_per_pass(params["internal_batch_size"], inputs.shape[0])
        attributions = torch.zeros_like(inputs, dtype=torch.float32)
        for start in range(0, total, per_pass):
            samples = min(per_pass, total - start)
            part = shap.attribute(
                inputs, baselines=baselines, n_samples=samples, stdevs=params["stdev"], target=targets
            )
            attributions += part.float() * samples
        return attributions / total, []


def baseline_distribution(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``N x C x H x W`` baselines to draw from: ``black_white``, ``black`` or ``uniform_noise``."""
    shape = (1, *images.shape[1:])
    if kind == "black":
        return images.new_zeros(shape)
    if kind == "black_white":
        return torch.cat([images.new_zeros(shape), images.new_ones(shape)])
    return torch.rand((_NOISE_BASELINES, *images.shape[1:]), device=images.device, dtype=images.dtype)
