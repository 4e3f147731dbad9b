"""Deconvolution: ReLUs pass back positive gradients whatever their forward input (Zeiler and Fergus 2014)."""

from __future__ import annotations

import captum.attr

from workers.explainers._catalogue import PlainCaptumAttribution


class Deconvolution(PlainCaptumAttribution):
    """Deconvnet backpropagation through the model's ``nn.ReLU`` modules.

    Because the forward ReLU masks are ignored, the map depends little on the class and on the upper layers
    (Adebayo et al. 2018, arXiv:1810.03307 show it passes the randomisation check poorly); it is offered as a
    reference. Reference: arXiv:1311.2901.

    Example:
        >>> heatmaps = Deconvolution(model).explain(images, [1], {"sign": "absolute"}).heatmaps
    """

    name = "deconvolution"
    captum_class = captum.attr.Deconvolution
