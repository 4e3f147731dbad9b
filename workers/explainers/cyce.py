"""CyCE: the cyclic conditioned explanation (Charachon et al. 2021, section 5).

The simpler embodiment: the generator trained with cycle consistency only (no symmetry terms) maps
the input to a counterfactual ``G[s](x)`` that the classifier decides the other way, and the
explanation is ``|x - G[s](x)|`` averaged over channels (the reference code's ``"ori - adv"``).

Example:
    >>> explainer = CyCE(classifier, artifacts=store.artifact_path(manifest, "cyce"))
    >>> result = explainer.explain(images, [1], {})
    >>> result.images["counterfactual"].shape
    torch.Size([1, 1, 28, 28])
"""

from __future__ import annotations

from typing import Any

import torch

from workers.explainers.base import Explanation, Progress
from workers.explainers.syce import GenerativeExplainer, ordinary


class CyCE(GenerativeExplainer):
    """Heatmap ``|x - G(x)|``; image "counterfactual" (G(x))."""

    name = "cyce"
    variant = "cyce"

    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        self._check_input(images)
        with torch.inference_mode():
            score_input, sides = self._scores(images, targets)
            counterfactual = self.pair.translate(images, sides)
            score_counterfactual, counterfactual_sides = self._scores(counterfactual, targets)
            heatmaps = (images - counterfactual).abs().mean(dim=1)
        heatmaps, counterfactual = ordinary(heatmaps, counterfactual)
        details = self._common_details(sides, counterfactual_sides != sides, heatmaps.flatten(1).mean(1))
        for detail, scores in zip(details, zip(score_input.tolist(), score_counterfactual.tolist())):
            detail |= dict(zip(("score_input", "score_counterfactual"), (round(s, 6) for s in scores)))
        images_out = {"counterfactual": counterfactual} if params.get("return_images", True) else {}
        return Explanation(heatmaps, details, images_out)
