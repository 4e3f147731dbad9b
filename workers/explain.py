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
from models.store import ModelStore
from workers import metrics as scoring
from workers.explainers import EXPLAINERS
from workers.explainers.base import Progress
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
) -> Outcome:
    """Explain ``image`` (1 x C x H x W at the model size) with every method the request names."""
    manifest, model = loaded.manifest, loaded.classifier
    prediction = scoring.prediction(model, image, manifest.class_names)
    target = prediction["class"] if request.get("target") is None else int(request["target"])
    methods: list[str] = request["methods"]
    per_method: dict[str, MethodResult] = {}
    compute_ms = 0.0
    for index, method in enumerate(methods):
        span = (0.1 + 0.85 * index / len(methods), 0.1 + 0.85 * (index + 1) / len(methods))
        progress.stage(Stage.EXPLAINING, span)
        started = time.perf_counter()
        result = _run_method(loaded, store, method, image, target, request["params"].get(method, {}), progress)
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


def _run_method(
    loaded: LoadedModel,
    store: ModelStore,
    method: str,
    image: torch.Tensor,
    target: int,
    params: dict[str, Any],
    progress: Progress,
) -> MethodResult:
    spec = get_method(method)
    manifest = loaded.manifest
    target_layer = None
    if spec.needs_target_layer:
        if not manifest.target_layer:
            raise InvalidInput(
                f"method {method!r} needs a target layer and model {manifest.id!r} names none in its manifest",
                code="target_layer_required",
            )
        target_layer = resolve_layer(loaded.classifier, manifest.target_layer)
    explainer = EXPLAINERS[method](
        loaded.classifier, target_layer=target_layer, artifacts=store.artifact_path(manifest, method)
    )
    explanation = explainer.explain(image, [target], params, progress)
    images = {name: _image_array(batch[0]) for name, batch in explanation.images.items()}
    details = explanation.details[0]
    method_metrics: dict[str, Any] = {"method": {"name": method, "params": params}}
    if details:
        method_metrics[method] = details
    return MethodResult(explanation.heatmaps[0].cpu(), images, method_metrics)


def _image_array(tensor: torch.Tensor) -> np.ndarray:
    """C x H x W in [0, 1] -> H x W (grey) or H x W x 3."""
    array = tensor.detach().float().cpu().clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


def _score(
    model: torch.nn.Module, image: torch.Tensor, heatmap: torch.Tensor, target: int, annotation: np.ndarray | None
) -> dict[str, Any]:
    scores: dict[str, Any] = {
        "faithfulness": scoring.deletion_insertion(
            model, image, heatmap.to(image.device), target, steps=FAITHFULNESS_STEPS
        ),
        "complexity": scoring.complexity(heatmap.numpy()),
    }
    if annotation is not None and annotation.any():
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
