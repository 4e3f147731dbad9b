"""One explanation request on one input: predict, run each method, score each heatmap.

Pure torch, no Redis: ``workers.jobs`` feeds it and stores what it returns, and tests call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.loader import resolve_layer
from models.preprocess import to_model_input
from models.store import ModelStore
from workers import scoring
from workers import quality
from workers.explainers import EXPLAINERS
from workers.explainers.base import Explainer, Progress
from workers.patching import explain_in_patches
from workers.precision import explain_mixed_precision
from workers.runtime import JobProgress, LoadedModel
from xai.errors import InvalidInput
from xai.jobs import Stage
from xai.methods import get_method

FAITHFULNESS_STEPS = 50


@dataclass
class MethodResult:
    heatmap: torch.Tensor  # H x W at the model input size, on the CPU
    images: dict[str, np.ndarray] = field(default_factory=dict)  # extra images, H x W (x 3) in [0, 1]
    metrics: dict[str, Any] = field(default_factory=dict)
    target: int | None = None  # the class explained, when it was chosen in a batch
    compute_ms: float | None = None  # this image's share of a batch's compute time


@dataclass
class Outcome:
    per_method: dict[str, MethodResult]
    metrics: dict[str, Any]
    timing: dict[str, float]


def explain_image(
    loaded: LoadedModel,
    store: ModelStore,
    image: torch.Tensor,
    request: dict[str, Any],
    progress: JobProgress,
    *,
    annotation: np.ndarray | None = None,
    native: np.ndarray | None = None,
    precomputed: MethodResult | None = None,
) -> Outcome:
    """Explain ``image`` (1 x C x H x W at the model size) with every method the request names.

    With ``request["patch_mode"]`` and the canonical ``native`` image larger than the model input,
    each method runs tile by tile at the native resolution and the tiles are blended; the metrics
    are still scored at the model size, on the blended heatmap resized to it. ``precomputed`` is
    the single method's result when the worker already computed it in a batch with other jobs.
    """
    manifest, model = loaded.manifest, loaded.classifier
    prediction = scoring.prediction(model, image, manifest.class_names)
    target = prediction["class"] if request.get("target") is None else int(request["target"])
    if precomputed is not None and precomputed.target is not None:
        target = precomputed.target
    methods: list[str] = request["methods"]
    per_method: dict[str, MethodResult] = {}
    compute_ms = 0.0
    job = JobSettings.from_request(request)
    for index, method in enumerate(methods):
        span = (0.1 + 0.85 * index / len(methods), 0.1 + 0.85 * (index + 1) / len(methods))
        progress.stage(Stage.EXPLAINING, span)
        if precomputed is not None:
            result = precomputed
            compute_ms += precomputed.compute_ms or 0.0
        else:
            started = time.perf_counter()
            result = run_method(
                loaded, store, method, image, [target], request["params"].get(method, {}), progress, job, native
            )[0]
            compute_ms += (time.perf_counter() - started) * 1000
        result.metrics |= _score(model, image, result.heatmap, target, annotation)
        per_method[method] = result
    metrics: dict[str, Any] = {
        "prediction": prediction,
        "target": {"class": target, "class_name": manifest.class_names[target],
                   "chosen_by": "caller" if request.get("target") is not None else "predicted class"},
        "model": {"id": manifest.id, "version": manifest.version, "sha256": manifest.weights_sha256},
        "input": request.get("input", {}),
    }
    if len(methods) == 1:
        metrics |= per_method[methods[0]].metrics
    else:
        metrics["methods"] = {name: result.metrics for name, result in per_method.items()}
        metrics["comparison"] = [_comparison_row(name, result.metrics) for name, result in per_method.items()]
    return Outcome(per_method, metrics, {"compute_ms": round(compute_ms, 1)})


@dataclass(frozen=True)
class JobSettings:
    """Request-level options that apply to every method of a job."""

    quality_metrics: tuple[str, ...] = ()
    patch_mode: bool = False
    patch_overlap: float = 0.25

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> JobSettings:
        return cls(tuple(request.get("quality_metrics") or ()), bool(request.get("patch_mode")),
                   float(request.get("patch_overlap", 0.25)))


def run_method(
    loaded: LoadedModel,
    store: ModelStore,
    method: str,
    images: torch.Tensor,
    targets: list[int],
    params: dict[str, Any],
    progress: Progress,
    job: JobSettings,
    native: np.ndarray | None = None,
) -> list[MethodResult]:
    """One method on a batch of images (B x C x H x W at the model size), one result per image.

    Patch mode and quality metrics are per-image options: the worker only batches jobs without them.
    """
    manifest = loaded.manifest
    if method not in loaded.explainers:
        loaded.explainers[method] = _build_explainer(loaded.classifier, method, store, loaded)
    explainer = loaded.explainers[method]
    spec = manifest.input
    if job.patch_mode and native is not None and (native.shape[0] > spec.height or native.shape[1] > spec.width):
        full = to_model_input(native, spec.model_copy(update={"height": native.shape[0], "width": native.shape[1]}))
        heatmap = explain_in_patches(explainer, full.to(images.device), targets[0], params,
                                     (spec.height, spec.width), job.patch_overlap, progress)
        patches = {"patch_size": [spec.height, spec.width], "overlap": job.patch_overlap}
        return [MethodResult(heatmap.detach().float().cpu(), {}, {**_method_block(method, params), "patches": patches})]
    explanation, precision = explain_mixed_precision(explainer, images, targets, params, progress)
    results = []
    for index, details in enumerate(explanation.details):
        method_metrics = {**_method_block(method, params), "precision": precision}
        if details:
            method_metrics[method] = details
        extra = {name: _image_array(batch[index]) for name, batch in explanation.images.items()}
        results.append(MethodResult(explanation.heatmaps[index].cpu(), extra, method_metrics))
    if job.quality_metrics:
        results[0].metrics["quality"] = _quality(loaded, store, method, explainer, images, results[0].heatmap,
                                                 targets[0], params, job.quality_metrics)
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
        figures["infidelity"] = quality.infidelity(loaded.classifier, image, heatmap, target)
    if "max_sensitivity" in wanted:
        figures["max_sensitivity"] = quality.max_sensitivity(explain_fn_of(explainer), image, target,
                                                             max_examples_per_batch=1)
    if "randomisation" in wanted:
        figures["randomisation"] = quality.randomisation_check(
            loaded.classifier,
            lambda copy: explain_fn_of(_build_explainer(copy, method, store, loaded)),
            image, target, trained_heatmap=heatmap,
        )
    return figures


def _image_array(tensor: torch.Tensor) -> np.ndarray:
    """C x H x W in [0, 1] -> H x W (grey) or H x W x 3."""
    array = tensor.detach().float().cpu().clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


def _score(
    model: torch.nn.Module, image: torch.Tensor, heatmap: torch.Tensor, target: int, annotation: np.ndarray | None
) -> dict[str, Any]:
    if heatmap.shape != image.shape[-2:]:  # a patch-mode heatmap is at the native size
        heatmap = torch.nn.functional.interpolate(heatmap[None, None], size=image.shape[-2:], mode="bilinear",
                                                  antialias=True)[0, 0]
    scores: dict[str, Any] = {
        "faithfulness": scoring.deletion_insertion(
            model, image, heatmap.to(image.device), target, steps=FAITHFULNESS_STEPS
        ),
        "complexity": scoring.complexity(heatmap.numpy()),
    }
    if annotation is not None:
        scores["localization"] = scoring.localization(heatmap.numpy(), annotation)
    return scores


def _comparison_row(method: str, metrics: dict[str, Any]) -> dict[str, Any]:
    row = {
        "method": method,
        "deletion_auc": metrics["faithfulness"]["deletion_auc"],
        "insertion_auc": metrics["faithfulness"]["insertion_auc"],
        "complexity": metrics["complexity"]["area_fraction"],
    }
    if "localization" in metrics:
        row |= {k: metrics["localization"][k] for k in ("iou_p85", "iou_p90", "iou_p95", "iou_p98", "ncc")}
    return row
