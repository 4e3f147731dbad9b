"""Grad-CAM++: CAM weighted by positive higher-order gradients (Chattopadhyay et al. 2018)."""

from __future__ import annotations

from typing import Any

import pytorch_grad_cam
import torch

from workers.explainers._catalogue import ReportingModel
from workers.explainers._grad_cam_library import LibraryCam, library_cam
from workers.explainers.base import Explanation, Progress


class GradCamPlusPlus(LibraryCam):
    """pytorch-grad-cam's GradCAMPlusPlus on the manifest's target layer; maps scaled to [0, 1] per image.

    Never under autocast (``LibraryCam``), which it could not take anyway: cubes of float16 gradients
    underflow. Reference: arXiv:1710.11063.

    Example:
        >>> explainer = GradCamPlusPlus(model, target_layer=model.features[-1])
        >>> heatmaps = explainer.explain(images, [1], {}).heatmaps
    """

    name = "grad_cam_plus_plus"

    def _explain_batch(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        model = ReportingModel(self.model, progress, images.shape[0], self.name)
        return Explanation(
            heatmaps=library_cam(pytorch_grad_cam.GradCAMPlusPlus, model, self.target_layer, images, targets)
        )
