"""Grad-CAM: the target layer's activations weighted by their pooled gradients (Selvaraju et al. 2017)."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution


class GradCam(CaptumAttribution):
    """Captum LayerGradCam on the manifest's target layer, upsampled bilinearly to the input size.

    Captum rather than pytorch-grad-cam because it can keep negative evidence (``relu=False``) and returns the
    map unscaled. Params: ``relu``. Reference: arXiv:1610.02391.

    Example:
        >>> explainer = GradCam(model, target_layer=model.features[-1])
        >>> heatmaps = explainer.explain(images, [1], {"relu": True}).heatmaps
    """

    name = "grad_cam"
    needs_target_layer: ClassVar[bool] = True

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        layer_maps = captum.attr.LayerGradCam(model, self.target_layer).attribute(
            inputs, target=targets, relu_attributions=params["relu"]
        )
        upsampled = captum.attr.LayerAttribution.interpolate(
            layer_maps, inputs.shape[-2:], interpolate_mode="bilinear"
        )
        return upsampled, []

    def _reduce(self, attributions: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return attributions[:, 0]  # one map per image already
