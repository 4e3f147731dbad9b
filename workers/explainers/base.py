"""The one call shape every explainer has, and the guard that leaves a model as it was found.

An explainer is built once per (model, method) and called per batch::

    explainer = IntegratedGradients(model, target_layer=None, artifacts=None)
    explanation = explainer.explain(images, targets, params, progress)

``model`` is a ``models.loader.Classifier``: it takes images in [0, 1] at the manifest's input size
(normalisation is inside it) and returns one logit per class, also for sigmoid models, so an
explainer never has to know how the classifier was trained. ``params`` arrive validated, with
defaults filled, from ``xai.methods.CATALOGUE[name]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from models.guard import model_left_as_found

# Called with a fraction in [0, 1] and an optional note ("iteration 12/100, loss 0.31").
# It may raise xai.errors.JobCancelled: explainers let it propagate.
Progress = Callable[[float, str | None], None]


def no_progress(fraction: float, note: str | None = None) -> None:
    """The progress callback for direct calls outside a job."""


@dataclass
class Explanation:
    """What an explainer returns for a batch of B images of size H x W (the model input size).

    heatmaps: B x H x W float32, finite, high = important for the target class.
    details: one JSON-safe dict per image with method-specific figures (may be empty dicts).
    images: extra images a user may want to see (e.g. a counterfactual), name -> B x C x H x W in [0, 1].
    """

    heatmaps: torch.Tensor
    details: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.details:
            self.details = [{} for _ in range(self.heatmaps.shape[0])]


class Explainer(ABC):
    """Base class. Subclasses set ``name`` (the catalogue key) and implement ``_explain``."""

    name: ClassVar[str]
    # Opt-in to autocast on CUDA (workers/precision.py), for methods whose result survives float16.
    supports_autocast: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, target_layer: nn.Module | None = None, artifacts: Path | None = None):
        self.model = model
        self.target_layer = target_layer
        self.artifacts = artifacts

    def explain(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        params: dict[str, Any],
        progress: Progress = no_progress,
    ) -> Explanation:
        """Explain ``targets[i]`` for ``images[i]`` (B x C x H x W in [0, 1]); the model is left as found."""
        if images.ndim != 4 or len(targets) != images.shape[0]:
            raise ValueError(f"expected B x C x H x W images and B targets, got {tuple(images.shape)} and {len(targets)}")
        with model_left_as_found(self.model):
            explanation = self._explain(images, list(targets), params, progress)
        explanation.heatmaps = torch.nan_to_num(explanation.heatmaps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        return explanation

    @abstractmethod
    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation: ...
