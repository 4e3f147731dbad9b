"""Guided backpropagation: ReLUs pass back positive gradients where active (Springenberg et al. 2015)."""

from __future__ import annotations

import captum.attr

from workers.explainers._catalogue import PlainCaptumAttribution


class GuidedBackprop(PlainCaptumAttribution):
    """Guided backpropagation through the model's ``nn.ReLU`` modules (in-place ones included).

    Captum overrides the gradient of ReLU *modules* with hooks; ReLUs called as functions (``F.relu``) keep
    their plain gradient. Reference: arXiv:1412.6806.

    Example:
        >>> heatmaps = GuidedBackprop(model).explain(images, [1], {"sign": "absolute"}).heatmaps
    """

    name = "guided_backprop"
    captum_class = captum.attr.GuidedBackprop
