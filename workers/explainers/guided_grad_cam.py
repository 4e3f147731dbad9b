"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map (Selvaraju et al. 2017)."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import CaptumAttribution


class GuidedGradCam(CaptumAttribution):
    """Captum GuidedGradCam on the target layer (CAM upsampled bilinearly), reduced as ``sign`` says.

    Example:
        >>> explainer = GuidedGradCam(model, target_layer=model.features[-1])
        >>> heatmaps = explainer.explain(images, [1], {"sign": "absolute"}).heatmaps
    """

    name = "guided_grad_cam"
    needs_target_layer: ClassVar[bool] = True

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        return 2  # one pass for the CAM, one for guided backpropagation

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        explainer = captum.attr.GuidedGradCam(model, self.target_layer)
        return explainer.attribute(inputs, target=targets, interpolate_mode="bilinear"), []
