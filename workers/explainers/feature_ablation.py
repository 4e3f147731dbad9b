"""Feature ablation over a regular grid: the target score's drop when each cell is replaced by a baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import (
    PerturbationAttribution,
    baseline_images,
    grid_feature_mask,
    rows_per_pass,
)


class FeatureAblation(PerturbationAttribution):
    """Captum FeatureAblation with one feature per cell of a ``grid x grid`` partition of the image.

    A regular grid rather than superpixels: it needs no segmentation library and its cost is known in advance
    (one forward pass per cell). Params: ``grid``, ``baseline``, ``internal_batch_size``.

    Example:
        >>> params = {"grid": 16, "baseline": "black", "internal_batch_size": 64}
        >>> heatmaps = FeatureAblation(model).explain(images, [1], params).heatmaps
    """

    name = "feature_ablation"
    # Score differences between nearly equal logits do not survive half precision rounding.
    supports_autocast: ClassVar[bool] = False

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        height, width = images.shape[-2:]
        return 1 + min(params["grid"], height) * min(params["grid"], width)  # plus the unablated pass

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        attributions = captum.attr.FeatureAblation(model).attribute(
            inputs,
            baselines=baseline_images(inputs, params["baseline"]),
            target=targets,
            feature_mask=grid_feature_mask(*inputs.shape[-2:], params["grid"], inputs.device),
            perturbations_per_eval=rows_per_pass(params["internal_batch_size"], inputs.shape[0]),
        )
        return attributions, []
