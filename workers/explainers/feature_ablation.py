"""Feature ablation over a regular grid: the target score's drop when each cell is replaced by a baseline."""

from __future__ import annotations

import captum.attr

from workers.explainers._catalogue import GridAttribution


class FeatureAblation(GridAttribution):
    """Captum FeatureAblation with one feature per cell of a ``grid x grid`` partition of the image.

    A regular grid rather than superpixels: it needs no segmentation library and its cost is known in advance
    (one forward pass per cell). Params: ``grid``, ``baseline``, ``internal_batch_size``.

    Example:
        >>> params = {"grid": 16, "baseline": "black", "internal_batch_size": 64}
        >>> heatmaps = FeatureAblation(model).explain(images, [1], params).heatmaps
    """

    name = "feature_ablation"
    captum_class = captum.attr.FeatureAblation
