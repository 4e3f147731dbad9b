"""Deconvolution: ReLUs pass back positive gradients whatever their forward input (Zeiler and Fergus 2014)."""

from __future__ import annotations

from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution


class Deconvolution(CaptumAttribution):
    """Deconvnet backpropagation through the model's ``nn.ReLU`` modules.

    Because the forward ReLU masks are ignored, the map depends little on the class and on the upper layers
    (Adebayo et al. 2018, arXiv:1810.03307 show it passes the randomisation check poorly); it is offered as a
    reference. Reference: arXiv:1311.2901.

    Example:
        >>> heatmaps = Deconvolution(model).explain(images, [1], {"sign": "absolute"}).heatmaps
    """

    name = "deconvolution"

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return captum.attr.Deconvolution(model).attribute(inputs, target=targets), []
