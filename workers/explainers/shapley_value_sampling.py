"""Shapley value sampling over a coarse grid of image cells (Castro et al. 2009), via Captum."""

from __future__ import annotations

from typing import Any, ClassVar

import captum.attr

from workers.explainers._catalogue import GridAttribution


class ShapleyValueSampling(GridAttribution):
    """Captum ShapleyValueSampling with one player per cell of a ``grid x grid`` partition of the image.

    Pixels are far too many players (TorchEsegeta's README: "takes lot of time for image input"), so cells are
    used; the cost is ``n_samples x grid^2`` forward passes per image. Params: ``grid``, ``n_samples``,
    ``baseline``, ``seed``, ``internal_batch_size``. Each image is explained under its own seeded generator.

    Example:
        >>> params = {"grid": 8, "n_samples": 25, "baseline": "black", "seed": 0, "internal_batch_size": 64}
        >>> heatmaps = ShapleyValueSampling(model).explain(images, [1], params).heatmaps
    """

    name = "shapley_value_sampling"
    captum_class = captum.attr.ShapleyValueSampling
    random_per_image: ClassVar[bool] = True

    def _passes_per_cell(self, params: dict[str, Any]) -> int:
        return params["n_samples"]

    def _options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"n_samples": params["n_samples"]}
