"""SyCE: the symmetrically conditioned explanation (Charachon et al. 2021, section 4).

Two generators trained for this classifier (format: ``models.artifacts.syce``) map images the
classifier decides one way to images it decides the other way. For an input x decided on side s, the
adversarial image is ``x_a = G[s](x)`` and the stable image ``x_st = G[s](x_a)`` (the same generator
applied again, as the reference code does); the explanation is ``|x_st - x_a|`` averaged over
channels. Comparing two generated images instead of the input cancels what the generator cannot
reproduce, so the map keeps what changes the decision. Two generator passes per image, no gradients.

Example:
    >>> explainer = SyCE(classifier, artifacts=store.artifact_path(manifest, "syce"))
    >>> result = explainer.explain(images, [1] * len(images), {"return_images": True})
    >>> result.details[0]["flipped"], result.images["adversarial"].shape
    (True, torch.Size([1, 1, 28, 28]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from models.artifacts.syce import GeneratorPair, load_artifact
from workers.explainers.base import Explainer, Explanation, Progress
from xai.errors import Conflict, InvalidInput, ServiceError


class GenerativeExplainer(Explainer):
    """What SyCE and CyCE share: loading the artifact of the right variant, the generator passes,
    decisions and scores; they differ in ``passes``."""

    variant: ClassVar[str]
    # The images made, in order: each is the generator of the input's side applied to the one before
    # (the first to the input), and the heatmap is |last - the one before it| (the input for one pass).
    passes: ClassVar[tuple[str, ...]]
    # Generator passes in float16 on CUDA: group norm and the residual sum run in float32 under
    # autocast, and a heatmap that overflows is recomputed in float32 (workers.precision).
    supports_autocast: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, *, target_layer: nn.Module | None = None, artifacts: Path | None = None
    ):
        super().__init__(model, target_layer=target_layer, artifacts=artifacts)
        if artifacts is None:
            raise Conflict(
                f"this model has no trained {self.variant} generators; train them first "
                f"(xai train {self.variant} --model ID --data FOLDER, "
                f"or POST /v1/models/ID/train/{self.variant})",
                code="artifact_missing",
            )
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.pair: GeneratorPair = load_artifact(artifacts, device)
        if self.pair.variant != self.variant:
            raise ServiceError(
                f"the artifact at {artifacts} holds {self.pair.variant} generators, not {self.variant}; "
                f"train {self.variant} for this model",
                code="artifact_mismatch",
            )

    def _check_input(self, images: torch.Tensor) -> None:
        expected = self.pair.config["input"]
        wanted = (expected["channels"], expected["height"], expected["width"])
        if tuple(images.shape[1:]) != wanted:
            raise InvalidInput(
                f"the {self.variant} generators were trained on {wanted[0]} x {wanted[1]} x {wanted[2]} "
                f"images, got {tuple(images.shape[1:])}",
                code="artifact_input_mismatch",
            )

    def _scores(self, images: torch.Tensor, targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probability of each image's target class, and the decision side of each image."""
        logits = self.model(images)
        probabilities = logits.softmax(dim=1)
        target_index = torch.as_tensor(targets, device=images.device)[:, None]
        return probabilities.gather(1, target_index)[:, 0], self.pair.sides(logits)

    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        self._check_input(images)
        with torch.inference_mode():
            input_scores, sides = self._scores(images, targets)
            chain = [images]
            for _ in self.passes:
                chain.append(self.pair.translate(chain[-1], sides))
            scores, generated_sides = zip(*(self._scores(image, targets) for image in chain[1:]))
            heatmaps = (chain[-1] - chain[-2]).abs().mean(dim=1)
        heatmaps, *generated = ordinary(heatmaps, *chain[1:])
        # A flip is judged on the first generated image (the counterfactual, or SyCE's adversarial image).
        flipped = generated_sides[0] != sides
        named_scores = dict(zip(("input", *self.passes), (input_scores, *scores)))
        details = self._details(sides, flipped, heatmaps.flatten(1).mean(1), named_scores)
        images_out = dict(zip(self.passes, generated)) if params.get("return_images", True) else {}
        return Explanation(heatmaps, details, images_out)

    def _details(
        self,
        sides: torch.Tensor,
        flipped: torch.Tensor,
        difference: torch.Tensor,
        scores: dict[str, torch.Tensor],
    ) -> list[dict]:
        """Per image: the decisions, whether the first generated image flipped it, and every image's score."""
        details = [
            {
                "explained_class": self.pair.target_class,
                "input_decided_as_explained_class": bool(side),
                "flipped": bool(flip),
                "mean_abs_difference": round(float(value), 6),
            }
            for side, flip, value in zip(sides.tolist(), flipped.tolist(), difference.tolist())
        ]
        for name, score in scores.items():
            for detail, value in zip(details, score.tolist()):
                detail[f"score_{name}"] = round(value, 6)
        return details


def ordinary(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Copies usable in autograd: a metric may feed a returned image back to the model with gradients on,
    which inference-mode tensors refuse."""
    return tuple(tensor.clone() for tensor in tensors)


class SyCE(GenerativeExplainer):
    """Heatmap ``|G(G(x)) - G(x)|``; images "adversarial" (G(x)) and "stable" (G(G(x)))."""

    name = "syce"
    variant = "syce"
    passes = ("adversarial", "stable")
