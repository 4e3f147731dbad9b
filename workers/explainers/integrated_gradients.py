"""Integrated Gradients: gradients along the straight path from a baseline (Sundararajan et al. 2017)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution, baseline_images


class IntegratedGradients(CaptumAttribution):
    """Integrated Gradients from a black, white or blurred baseline.

    Params: ``n_steps``, ``baseline``, ``method`` (integration rule), ``sign``, ``internal_batch_size``.
    Details: ``convergence_delta`` = sum of attributions - (f(input) - f(baseline)) for the target class;
    completeness says it is 0, so its size relative to the score change tells whether ``n_steps`` suffices.
    Reference: arXiv:1703.01365.

    Example:
        >>> params = {"n_steps": 50, "baseline": "black", "method": "gausslegendre", "sign": "all",
        ...           "internal_batch_size": 64}
        >>> explanation = IntegratedGradients(model).explain(images, [1], params)
    """

    name = "integrated_gradients"

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        # The path points, plus one forward pass at each end of the path for the convergence delta.
        return params["n_steps"] + 2

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        attributions, delta = captum.attr.IntegratedGradients(model).attribute(
            inputs,
            baselines=baseline_images(inputs.detach(), params["baseline"]),
            target=targets,
            n_steps=params["n_steps"],
            method=params["method"],
            # Captum cannot split a pass below one row per image (it warns and uses the batch size).
            internal_batch_size=max(params["internal_batch_size"], inputs.shape[0]),
            return_convergence_delta=True,
        )
        return attributions, [{"convergence_delta": float(value)} for value in delta]
