"""Guided backpropagation: ReLUs pass back positive gradients where active (Springenberg et al. 2015)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution


class GuidedBackprop(CaptumAttribution):
    """Guided backpropagation through the model's ``nn.ReLU`` modules (in-place ones included).

    Captum overrides the gradient of ReLU *modules* with hooks; ReLUs called as functions (``F.relu``) keep
    their plain gradient. Reference: arXiv:1412.6806.

    Example:
        >>> heatmaps = GuidedBackprop(model).explain(images, [1], {"sign": "absolute"}).heatmaps
    """

    name = "guided_backprop"

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return captum.attr.GuidedBackprop(model).attribute(inputs, target=targets), []
