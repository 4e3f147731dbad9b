"""Occlusion: the target score's drop when a sliding window is blanked out (Zeiler and Fergus 2014)."""

from __future__ import annotations

import math
from typing import Any

import captum.attr
import torch
from torch import nn

from workers.explainers._catalogue import PerturbationAttribution, baseline_images, rows_per_pass


class Occlusion(PerturbationAttribution):
    """Captum Occlusion with a square window over all channels.

    Params: ``window`` and ``stride`` in pixels (the window is clipped to the image, the stride to the window,
    as Captum requires), ``baseline``, ``internal_batch_size``. A pixel's value is the mean score drop over
    the windows that cover it; the last window in each direction is cut at the image edge.
    Reference: arXiv:1311.2901.

    Example:
        >>> params = {"window": 16, "stride": 8, "baseline": "black", "internal_batch_size": 64}
        >>> heatmaps = Occlusion(model).explain(images, [1], params).heatmaps
    """

    name = "occlusion"

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        windows = [
            math.ceil((size - window) / stride) + 1
            for size, window, stride in zip(
                images.shape[-2:], *_window_and_stride(images, params), strict=True
            )
        ]
        return 1 + math.prod(windows)  # plus the unoccluded pass

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        channels = inputs.shape[1]
        window, stride = _window_and_stride(inputs, params)
        attributions = captum.attr.Occlusion(model).attribute(
            inputs,
            sliding_window_shapes=(channels, *window),
            strides=(channels, *stride),
            baselines=baseline_images(inputs, params["baseline"]),
            target=targets,
            perturbations_per_eval=rows_per_pass(params["internal_batch_size"], inputs.shape[0]),
        )
        return attributions, []


def _window_and_stride(
    images: torch.Tensor, params: dict[str, Any]
) -> tuple[tuple[int, int], tuple[int, int]]:
    window = tuple(min(params["window"], size) for size in images.shape[-2:])
    return window, tuple(min(params["stride"], side) for side in window)
