"""SmoothGrad: a gradient method averaged over noisy copies of the input (Smilkov et al. 2017)."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution, rows_per_pass

_BASES: dict[str, type[captum.attr.Attribution]] = {
    "guided_backprop": captum.attr.GuidedBackprop,
    "input_x_gradient": captum.attr.InputXGradient,
    "integrated_gradients": captum.attr.IntegratedGradients,
    "saliency": captum.attr.Saliency,
}


class SmoothGrad(CaptumAttribution):
    """NoiseTunnel over saliency, integrated gradients (black baseline), gradient x input or guided backprop.

    Params: ``base``, ``nt_type`` (smoothgrad, smoothgrad_sq, vargrad), ``nt_samples``, ``stdev`` (in image
    range units, the paper's 10-20 % noise level), ``n_steps`` (IG only), ``sign``, ``seed``,
    ``internal_batch_size`` (rows per pass: noisy copies x integration steps). Each image is explained under
    its own seeded generator. Reference: arXiv:1706.03825.

    Example:
        >>> params = {"base": "saliency", "nt_type": "smoothgrad", "nt_samples": 25, "stdev": 0.15,
        ...           "n_steps": 20, "sign": "absolute", "seed": 0, "internal_batch_size": 64}
        >>> heatmaps = SmoothGrad(model).explain(images, [1], params).heatmaps
    """

    name = "smoothgrad"
    random_per_image: ClassVar[bool] = True

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        return params["nt_samples"] * _base_rows(params)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        samples_per_pass = rows_per_pass(params["internal_batch_size"], inputs.shape[0] * _base_rows(params))
        attributions = captum.attr.NoiseTunnel(_BASES[params["base"]](model)).attribute(
            inputs,
            nt_type=params["nt_type"],
            nt_samples=params["nt_samples"],
            nt_samples_batch_size=min(samples_per_pass, params["nt_samples"]),
            stdevs=params["stdev"],
            target=targets,
            **_base_arguments(params, samples_per_pass * inputs.shape[0]),
        )
        return attributions, []


def _base_rows(params: dict[str, Any]) -> int:
    return params["n_steps"] if params["base"] == "integrated_gradients" else 1


def _base_arguments(params: dict[str, Any], noisy_rows: int) -> dict[str, Any]:
    if params["base"] == "integrated_gradients":
        # Captum IG cannot split a pass below one row per example it is given (here, noisy_rows copies).
        return {
            "n_steps": params["n_steps"],
            "internal_batch_size": max(params["internal_batch_size"], noisy_rows),
        }
    if params["base"] == "saliency":
        # Average signed gradients, as the paper does; ``sign`` takes |.| afterwards.
        return {"abs": False}
    return {}
