"""Saliency: the gradient of the target class score with respect to the input (Simonyan et al. 2014)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution, channel_heatmap


class Saliency(CaptumAttribution):
    """Gradient of the target logit with respect to each pixel, summed over channels.

    Params: ``abs`` (take |gradient| before summing channels). Reference: arXiv:1312.6034.

    Example:
        >>> heatmaps = Saliency(model).explain(images, [1], {"abs": True}).heatmaps
    """

    name = "saliency"

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return captum.attr.Saliency(model).attribute(inputs, target=targets, abs=params["abs"]), []

    def _reduce(self, attributions: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        # Captum has already taken |gradient| when abs is set; the plain sum then is sum_c |g_c|.
        return channel_heatmap(attributions, "all")
