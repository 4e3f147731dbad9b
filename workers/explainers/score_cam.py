"""Score-CAM: CAM weighted by the score of the input masked by each activation map (Wang et al. 2020)."""

from __future__ import annotations

from typing import Any

import pytorch_grad_cam
import torch

from workers.explainers._catalogue import ReportingModel, sub_progress
from workers.explainers._grad_cam_library import LibraryCam, library_cam
from workers.explainers.base import Explanation, Progress


class ScoreCam(LibraryCam):
    """pytorch-grad-cam's ScoreCAM on the manifest's target layer; maps scaled to [0, 1] per image.

    Images are explained one at a time: the library builds every masked copy of a batch at once
    (``B x channels x C x H x W``), which for a 1024-channel layer and 16 images of 224 x 224 is ~10 GB.
    Params: ``internal_batch_size`` (masked copies per pass). Reference: arXiv:1910.01279.

    Example:
        >>> explainer = ScoreCam(model, target_layer=model.features[-1])
        >>> heatmaps = explainer.explain(images, [1], {"internal_batch_size": 64}).heatmaps
    """

    name = "score_cam"

    def _explain_batch(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        count = images.shape[0]
        rows = 1 + self._layer_channels(images[:1])  # the plain pass, then one masked copy per channel
        maps = []
        for index in range(count):
            model = ReportingModel(
                self.model, sub_progress(progress, index / count, (index + 1) / count), rows, self.name
            )
            image, target = images[index : index + 1], targets[index : index + 1]
            maps.append(
                library_cam(
                    pytorch_grad_cam.ScoreCAM,
                    model,
                    self.target_layer,
                    image,
                    target,
                    params["internal_batch_size"],
                )
            )
        return Explanation(heatmaps=torch.cat(maps))

    def _layer_channels(self, image: torch.Tensor) -> int:
        """Channels of the target layer's output, from one forward pass (for the progress fraction)."""
        channels: list[int] = []
        handle = self.target_layer.register_forward_hook(
            lambda module, inputs, output: channels.append(output.shape[1])
        )
        try:
            with torch.no_grad():
                self.model(image)
        finally:
            handle.remove()
        return channels[0]
