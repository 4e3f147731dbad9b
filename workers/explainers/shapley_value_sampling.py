"""Shapley value sampling over a coarse grid of image cells (Castro et al. 2009), via Captum."""

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


class ShapleyValueSampling(PerturbationAttribution):
    """Captum ShapleyValueSampling with one player per cell of a ``grid x grid`` partition of the image.

    Pixels are far too many players (TorchEsegeta's README: "takes lot of time for image input"), so cells are
    used; the cost is ``n_samples x grid^2`` forward passes per image. Params: ``grid``, ``n_samples``,
    ``baseline``, ``seed``, ``internal_batch_size``. Each image is explained under its own seeded generator.

    Example:
        >>> params = {"grid": 8, "n_samples": 25, "baseline": "black", "seed": 0, "internal_batch_size": 64}
        >>> heatmaps = ShapleyValueSampling(model).explain(images, [1], params).heatmaps
    """

    name = "shapley_value_sampling"
    random_per_image: ClassVar[bool] = True
    # Score differences between nearly equal logits do not survive half precision rounding.
    supports_autocast: ClassVar[bool] = False

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        height, width = images.shape[-2:]
        cells = min(params["grid"], height) * min(params["grid"], width)
        return 1 + params["n_samples"] * cells  # plus the pass on the baseline

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        attributions = captum.attr.ShapleyValueSampling(model).attribute(
            inputs,
            baselines=baseline_images(inputs, params["baseline"]),
            target=targets,
            feature_mask=grid_feature_mask(*inputs.shape[-2:], params["grid"], inputs.device),
            n_samples=params["n_samples"],
            perturbations_per_eval=rows_per_pass(params["internal_batch_size"], inputs.shape[0]),
        )
        return attributions, []
