"""What the gradient, CAM and perturbation explainers share.

``CatalogueExplainer`` is the base of every method in the catalogue: it checks the target layer, runs the
method with gradients enabled, and, for methods that draw random numbers, explains each image under its own
seeded generator so that a heatmap does not depend on which other images share the batch.
``CaptumAttribution`` adds the common path of Captum input attributions, reducing ``B x C x H x W`` to
``B x H x W``; ``PlainCaptumAttribution`` and ``GridAttribution`` are the two ways of calling Captum that
several methods share.
``ReportingModel`` wraps the classifier so that library loops we cannot see into (Captum's steps and windows,
pytorch-grad-cam's channels) report progress after every forward pass, and so can be cancelled there.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import captum.attr
import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from workers.explainers.base import Explainer, Explanation, Progress
from xai.errors import InvalidInput

# Captum announces on every call that it sets hooks and grad flags; we do that on purpose, so these are noise.
_CAPTUM_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting (forward, )?backward hooks",
)


class ReportingModel(nn.Module):
    """The classifier, calling ``progress`` after each forward pass with the fraction of rows evaluated.

    Args:
        model: The classifier (not modified; it becomes a child module of this wrapper).
        progress: The job's progress callback; may raise ``JobCancelled``, which propagates.
        expected_rows: Rows (images) the method will evaluate in total, for the fraction.
        note: Text sent with each report.
    """

    def __init__(self, model: nn.Module, progress: Progress, expected_rows: int, note: str):
        super().__init__()
        self.model = model
        self.progress = progress
        self.expected_rows = max(expected_rows, 1)
        self.note = note
        self.rows = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.rows += images.shape[0]
        self.progress(min(self.rows / self.expected_rows, 1.0), self.note)
        return logits


class CatalogueExplainer(Explainer):
    """Base of the catalogue's explainers. Subclasses implement ``_explain_batch``.

    Class attributes:
        needs_target_layer: The method reads a layer of the model (CAM methods); ``None`` is refused.
        supports_autocast: The method tolerates float16 autocast on CUDA (see ``workers.precision``).
        random_per_image: The method draws random numbers; each image is explained under a generator seeded
            with ``params["seed"]``, so a result is reproducible and independent of batch composition.
    """

    needs_target_layer: ClassVar[bool] = False
    supports_autocast: ClassVar[bool] = True
    random_per_image: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, *, target_layer: nn.Module | None = None, artifacts: Path | None = None
    ):
        if self.needs_target_layer and target_layer is None:
            raise InvalidInput(
                f"method {self.name!r} needs a target layer; set 'target_layer' in the model manifest to the "
                "dotted name of a convolutional layer (usually the last one, e.g. 'features.denseblock4')",
                code="target_layer_required",
            )
        super().__init__(model, target_layer=target_layer, artifacts=artifacts)

    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        # A worker may call us from a no_grad context; gradient methods need autograd whatever the caller did.
        with torch.enable_grad():
            if self.random_per_image:
                return self._explain_one_by_one(images, targets, params, progress)
            return self._explain_batch(images, targets, params, progress)

    def _explain_one_by_one(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        """Explain each image under a generator seeded with ``params["seed"]``, whatever shares the batch."""
        count = images.shape[0]
        parts = []
        for index in range(count):
            report = sub_progress(progress, index / count, (index + 1) / count)
            with seeded_rng(params["seed"], images.device):
                parts.append(
                    self._explain_batch(images[index : index + 1], targets[index : index + 1], params, report)
                )
        return Explanation(
            heatmaps=torch.cat([part.heatmaps for part in parts]),
            details=[detail for part in parts for detail in part.details],
        )

    @abstractmethod
    def _explain_batch(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        """Explain a batch (one image at a time when ``random_per_image``)."""


class CaptumAttribution(CatalogueExplainer):
    """A Captum input attribution (``B x C x H x W``) reduced over channels to one heatmap per image.

    Subclasses implement ``_attribute`` and, when the method evaluates more than one row per image,
    ``_rows_per_image`` (for progress). Gradient methods reduce channels as ``params["sign"]`` says.
    """

    uses_gradients: ClassVar[bool] = True

    def _explain_batch(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        model = ReportingModel(
            self.model, progress, images.shape[0] * self._rows_per_image(images, params), self.name
        )
        # A clone: Captum sets requires_grad and may accumulate .grad on the tensor it is given.
        inputs = images.detach().clone().requires_grad_(self.uses_gradients)
        with warnings.catch_warnings():
            for notice in _CAPTUM_NOTICES:
                warnings.filterwarnings("ignore", message=notice)
            attributions, details = self._attribute(
                model, inputs, torch.tensor(targets, device=images.device), params
            )
        return Explanation(heatmaps=self._reduce(attributions.detach(), params), details=details)

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        return 1

    def _reduce(self, attributions: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return channel_heatmap(attributions, params["sign"])

    @abstractmethod
    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Return ``B x C x H x W`` attributions and per-image details (``[]`` for none)."""


class PlainCaptumAttribution(CaptumAttribution):
    """A Captum attribution that takes nothing but the inputs and the targets; subclasses name its class."""

    captum_class: ClassVar[type[captum.attr.Attribution]]

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return self.captum_class(model).attribute(inputs, target=targets), []


class PerturbationAttribution(CaptumAttribution):
    """A Captum perturbation method whose features span all channels of a pixel block.

    Every channel of a pixel then carries the same value, the change of the target score when the feature is
    replaced by the baseline; the heatmap is that value (signed: positive = removing it lowers the score).
    """

    uses_gradients = False
    # Score differences between nearly equal logits do not survive half precision rounding.
    supports_autocast: ClassVar[bool] = False

    def _reduce(self, attributions: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return attributions.mean(dim=1)


class GridAttribution(PerturbationAttribution):
    """A Captum perturbation method whose features are the cells of a ``grid x grid`` partition of the image.

    Subclasses name the Captum class; one that evaluates every cell more than once says how often
    (``_passes_per_cell``) and with which extra arguments (``_options``).
    """

    captum_class: ClassVar[type[captum.attr.Attribution]]

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        height, width = images.shape[-2:]
        cells = min(params["grid"], height) * min(params["grid"], width)
        return 1 + self._passes_per_cell(params) * cells  # plus one pass on the input or on the baseline

    def _passes_per_cell(self, params: dict[str, Any]) -> int:
        return 1

    def _options(self, params: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``captum_class.attribute`` beyond those every grid method takes."""
        return {}

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        attributions = self.captum_class(model).attribute(
            inputs,
            baselines=baseline_images(inputs, params["baseline"]),
            target=targets,
            feature_mask=grid_feature_mask(*inputs.shape[-2:], params["grid"], inputs.device),
            perturbations_per_eval=rows_per_pass(params["internal_batch_size"], inputs.shape[0]),
            **self._options(params),
        )
        return attributions, []


def channel_heatmap(attributions: torch.Tensor, sign: str) -> torch.Tensor:
    """Reduce ``B x C x H x W`` attributions to ``B x H x W``.

    Args:
        attributions: Per-channel attributions.
        sign: ``absolute`` (sum of |a| over channels), ``positive`` (signed sum, clipped at 0) or ``all``
            (signed sum).
    """
    if sign == "absolute":
        return attributions.abs().sum(dim=1)
    total = attributions.sum(dim=1)
    return total.clamp(min=0) if sign == "positive" else total


def baseline_images(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The reference images for ``images`` (B x C x H x W in [0, 1]): ``black``, ``white`` or ``blur``.

    ``blur`` is a Gaussian blur with sigma = 1/10 of the larger side: it removes structure but keeps the
    overall intensity, so the path from it to the input does not cross implausible all-black images.
    """
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "white":
        return torch.ones_like(images)
    height, width = images.shape[-2:]
    sigma = max(height, width) / 10
    # Largest odd kernel up to 4 sigma that reflect padding allows on this image.
    kernel = min(2 * int(2 * sigma) + 1, (min(height, width) - 1) | 1)
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma]) if kernel > 1 else images.clone()


def grid_feature_mask(height: int, width: int, cells: int, device: torch.device) -> torch.Tensor:
    """A ``1 x 1 x H x W`` mask numbering the cells of a ``cells x cells`` grid (row-major), for Captum.

    Cells are as equal as the image size allows; ``cells`` is clipped to the image size.
    """
    rows = torch.arange(height, device=device) * min(cells, height) // height
    cols = torch.arange(width, device=device) * min(cells, width) // width
    return (rows[:, None] * min(cells, width) + cols[None, :])[None, None]


def rows_per_pass(internal_batch_size: int, batch: int) -> int:
    """How many perturbations of each of ``batch`` images fit in one pass of ``internal_batch_size`` rows."""
    return max(1, internal_batch_size // batch)


def sub_progress(progress: Progress, start: float, end: float) -> Progress:
    """A progress callback that maps [0, 1] onto [start, end] of ``progress``."""

    def report(fraction: float, note: str | None = None) -> None:
        progress(start + (end - start) * fraction, note)

    return report


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and ``device``) and NumPy's global generator, and restore their states after.

    NumPy is included because Captum's GradientShap draws its baselines and path points with ``np.random``.
    """
    cuda_devices = [device] if device.type == "cuda" else []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.random.default_generator.manual_seed(seed)
            if cuda_devices:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
