"""Gradient x Input: each pixel times the gradient of the target class score (Shrikumar et al. 2016)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution


class InputXGradient(CaptumAttribution):
    """Input times gradient, reduced over channels as ``sign`` says. Reference: arXiv:1605.01713.

    Example:
        >>> heatmaps = InputXGradient(model).explain(images, [1], {"sign": "all"}).heatmaps
    """

    name = "input_x_gradient"

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return captum.attr.InputXGradient(model).attribute(inputs, target=targets), []
