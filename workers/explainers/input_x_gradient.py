"""Gradient x Input: each pixel times the gradient of the target class score (Shrikumar et al. 2016)."""

from __future__ import annotations

import captum.attr

from workers.explainers._catalogue import PlainCaptumAttribution


class InputXGradient(PlainCaptumAttribution):
    """Input times gradient, reduced over channels as ``sign`` says. Reference: arXiv:1605.01713.

    Example:
        >>> heatmaps = InputXGradient(model).explain(images, [1], {"sign": "all"}).heatmaps
    """

    name = "input_x_gradient"
    captum_class = captum.attr.InputXGradient
