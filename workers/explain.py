"""One method on a batch of images at the model's input size: build (and cache) its explainer, run it.

Pure torch, no Redis: ``workers.pipeline`` calls it for each method of a batch of jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.loader import resolve_layer
from models.preprocess import to_model_input
from models.store import ModelStore
from workers import quality as quality_metrics
from workers.explainers import EXPLAINERS
from workers.explainers.base import Explainer, Progress
from workers.patching import explain_in_patches
from workers.precision import explain_mixed_precision
from workers.runtime import LoadedModel
from xai.errors import InvalidInput
from xai.methods import get_method


@dataclass
class MethodResult:
    heatmap: torch.Tensor  # H x W at the model input size (or the native size in patch mode), on the CPU
    images: dict[str, np.ndarray] = field(default_factory=dict)  # extra images, H x W (x 3) in [0, 1]
    metrics: dict[str, Any] = field(default_factory=dict)


def run_method(
    loaded: LoadedModel,
    store: ModelStore,
    method: str,
    images: torch.Tensor,
    targets: list[int],
    params: dict[str, Any],
    progress: Progress,
    *,
    quality: tuple[str, ...] = (),
    patches: tuple[np.ndarray, float] | None = None,
) -> list[MethodResult]:
    """One method on a batch of images (B x C x H x W at the model size), one result per image.

    Quality metrics and patch mode are per-image options, for a batch of one: ``quality`` names the
    metrics to add, and ``patches`` = (the canonical image at its own resolution, tile overlap)
    explains it tile by tile at that resolution when it is larger than the model's input.
    """
    manifest = loaded.manifest
    if method not in loaded.explainers:
        loaded.explainers[method] = _build_explainer(loaded.classifier, method, store, loaded)
    explainer = loaded.explainers[method]
    spec = manifest.input
    if patches is not None and (patches[0].shape[0] > spec.height or patches[0].shape[1] > spec.width):
        native, overlap = patches
        full = to_model_input(native, spec.model_copy(update={"height": native.shape[0], "width": native.shape[1]}))
        heatmap = explain_in_patches(explainer, full.to(images.device), targets[0], params,
                                     (spec.height, spec.width), overlap, progress)
        tiling = {"patch_size": [spec.height, spec.width], "overlap": overlap}
        return [MethodResult(heatmap.detach().float().cpu(), {}, {**_method_block(method, params), "patches": tiling})]
    explanation, precision = explain_mixed_precision(explainer, images, targets, params, progress)
    results = []
    for index, details in enumerate(explanation.details):
        method_metrics = {**_method_block(method, params), "precision": precision}
        if details:
            method_metrics[method] = details
        extra = {name: _image_array(batch[index]) for name, batch in explanation.images.items()}
        results.append(MethodResult(explanation.heatmaps[index].cpu(), extra, method_metrics))
    if quality:
        results[0].metrics["quality"] = _quality(loaded, store, method, explainer, images, results[0].heatmap,
                                                 targets[0], params, quality)
    return results


def _method_block(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"method": {"name": method, "params": params}}


def _build_explainer(model: torch.nn.Module, method: str, store: ModelStore, loaded: LoadedModel) -> Explainer:
    """The method's explainer on ``model`` (the classifier, or a randomised copy of it)."""
    manifest = loaded.manifest
    target_layer = None
    if get_method(method).needs_target_layer:
        if not manifest.target_layer:
            raise InvalidInput(
                f"method {method!r} needs a target layer and model {manifest.id!r} names none in its manifest",
                code="target_layer_required",
            )
        target_layer = resolve_layer(model, manifest.target_layer)
    return EXPLAINERS[method](model, target_layer=target_layer, artifacts=store.artifact_path(manifest, method))


def _quality(
    loaded: LoadedModel, store: ModelStore, method: str, explainer: Explainer, image: torch.Tensor,
    heatmap: torch.Tensor, target: int, params: dict[str, Any], wanted: tuple[str, ...],
) -> dict[str, Any]:
    """The explanation-quality metrics the caller asked for (each costs extra model or explainer runs)."""

    def explain_fn_of(candidate: Explainer):
        return lambda images, targets: candidate.explain(images, targets, params).heatmaps

    heatmap = heatmap.to(image.device)
    figures: dict[str, Any] = {}
    if "infidelity" in wanted:
        figures["infidelity"] = quality_metrics.infidelity(loaded.classifier, image, heatmap, target)
    if "max_sensitivity" in wanted:
        figures["max_sensitivity"] = quality_metrics.max_sensitivity(explain_fn_of(explainer), image, target,
                                                             max_examples_per_batch=1)
    if "randomisation" in wanted:
        figures["randomisation"] = quality_metrics.randomisation_check(
            loaded.classifier,
            lambda copy: explain_fn_of(_build_explainer(copy, method, store, loaded)),
            image, target, trained_heatmap=heatmap,
        )
    return figures


def _image_array(tensor: torch.Tensor) -> np.ndarray:
    """C x H x W in [0, 1] -> H x W (grey) or H x W x 3."""
    array = tensor.detach().float().cpu().clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
