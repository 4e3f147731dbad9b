"""RQ job entry points, enqueued by dotted path from the gateway (which never imports this module).

Each takes one small JSON-safe dict. Errors a caller caused are stored as ``{"code", "message"}`` in
the job's meta before the job fails, so the gateway can show them; anything else becomes
``explanation_failed`` without internals (tracebacks stay in the worker log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from redis import Redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from models.preprocess import heatmap_to_input_size, to_model_input
from models.store import ModelStore
from workers import batching, render
from workers.explain import explain_image
from workers.runtime import JobProgress, ModelCache, pick_device
from xai.wire import decode_canonical
from xai.errors import JobCancelled, NotFound, ServiceError
from xai.jobs import Stage, annotation_key, input_key, result_index_key, result_key
from xai.settings import Settings, get_settings

log = logging.getLogger("xai.worker")


class WorkerContext:
    """Everything a worker process keeps resident between jobs."""

    def __init__(self, settings: Settings, connection: Redis):
        self.settings = settings
        self.connection = connection
        self.store = ModelStore(settings.model_store_dir)
        self.device = pick_device(settings.device)
        self.models = ModelCache(self.store, self.device, settings.model_cache_size)


_context: WorkerContext | None = None


def install_context(ctx: WorkerContext) -> None:
    """Called by workers.main before the first job, so the device and model cache are set up once."""
    global _context
    _context = ctx


def context() -> WorkerContext:
    """The process's context, built from the environment's settings if none was installed."""
    if _context is None:
        settings = get_settings()
        install_context(WorkerContext(settings, Redis.from_url(settings.redis_url)))
    return _context


def run_explanation(request: dict[str, Any]) -> dict[str, Any]:
    """Explain one input with one or more methods; store files; return the metrics JSON."""
    return _guarded(_run_explanation, request)


def _run_explanation(request: dict[str, Any], progress: JobProgress) -> dict[str, Any]:
    ctx = context()
    job_id = request["job_id"]
    queue_ms = (time.time() - request["submitted_at"]) * 1000
    progress.stage(Stage.LOADING_MODEL, (0.0, 0.05))
    loaded, resident = ctx.models.get(request["model_id"], request["model_version"])
    progress.stage(Stage.PREPROCESSING, (0.05, 0.1))
    image = _fetch_input(ctx.connection, job_id)
    annotation = _fetch_annotation(ctx.connection, job_id)
    tensor = to_model_input(image, loaded.manifest.input).to(ctx.device)
    precomputed = batching.take_ready(job_id)
    if precomputed is None and progress.job is not None and batching.batch_key(request):
        progress.stage(Stage.EXPLAINING, (0.1, 0.6))
        precomputed = batching.explain_with_waiting_peers(progress.job, ctx, loaded, tensor, request, progress,
                                                          ctx.settings.batch_max)
    outcome = explain_image(
        loaded, ctx.store, tensor, request, progress,
        annotation=_annotation_at_model_size(annotation, tensor), native=image, precomputed=precomputed,
    )
    progress.stage(Stage.RENDERING, (0.95, 0.98))
    files = {}
    for method, result in outcome.per_method.items():
        prefix = "" if len(outcome.per_method) == 1 else f"{method}/"
        heatmap = heatmap_to_input_size(result.heatmap, image.shape[:2])
        files |= {prefix + name: blob for name, blob in _render_files(image, heatmap, result.images).items()}
    progress.stage(Stage.STORING, (0.98, 1.0))
    _store_files(ctx.connection, job_id, files, ctx.settings.result_ttl_s)
    metrics = outcome.metrics
    metrics["timing"] = {
        "queue_ms": round(queue_ms, 1),
        "load_ms": 0.0 if resident else round(loaded.load_ms, 1),
        "model_resident": resident,
        **outcome.timing,
    }
    metrics["files"] = sorted(files)
    ctx.connection.delete(input_key(job_id), annotation_key(job_id))
    return metrics


def _fetch_input(connection: Redis, job_id: str) -> np.ndarray:
    blob = connection.get(input_key(job_id))
    if blob is None:
        raise NotFound("the uploaded image has expired before a worker reached it; submit it again", code="input_expired")
    return decode_canonical(blob)


def _fetch_annotation(connection: Redis, job_id: str) -> np.ndarray | None:
    blob = connection.get(annotation_key(job_id))
    return None if blob is None else decode_canonical(blob) > 0.5


def _annotation_at_model_size(mask: np.ndarray | None, tensor: torch.Tensor) -> np.ndarray | None:
    """Localisation is scored at the model's input size, where the explainer's heatmap lives."""
    if mask is None:
        return None
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None], size=tensor.shape[-2:], mode="nearest"
    )
    return resized[0, 0].numpy() > 0.5


def _render_files(image: np.ndarray, heatmap: np.ndarray, images: dict[str, np.ndarray]) -> dict[str, bytes]:
    files = {
        "heatmap.npy": render.npy_bytes(heatmap),
        "heatmap.png": render.png_bytes(render.colourise(heatmap)),
        "overlay.png": render.png_bytes(render.overlay(image, heatmap)),
    }
    return files | {f"{name}.png": render.png_bytes(pixels) for name, pixels in images.items()}


def _store_files(connection: Redis, job_id: str, files: dict[str, bytes], ttl_s: int) -> None:
    with connection.pipeline() as pipe:
        for name, blob in files.items():
            pipe.set(result_key(job_id, name), blob, ex=ttl_s)
        if files:
            pipe.sadd(result_index_key(job_id), *files)
            pipe.expire(result_index_key(job_id), ttl_s)
        pipe.execute()


def run_training(request: dict[str, Any]) -> dict[str, Any]:
    """Train explainer artifacts (SyCE/CyCE generators, GAD support models) for a model version."""
    from workers.training import train_artifacts  # training code is only needed on the train queue

    return _guarded(lambda req, progress: train_artifacts(context(), req, progress), request)


def validate_model(request: dict[str, Any]) -> dict[str, Any]:
    """Build and run a newly registered model once, and record whether it is usable."""
    from models.loader import validate_registration

    def _validate(req: dict[str, Any], progress: JobProgress) -> dict[str, Any]:
        store = context().store
        manifest = store.get(req["model_id"], req["model_version"])
        try:
            validate_registration(manifest, store.weights_path(manifest))
        except ServiceError as error:
            store.set_status(manifest.id, manifest.version, "invalid", error.message)
            raise
        store.set_status(manifest.id, manifest.version, "ready", None)
        return {"model_id": manifest.id, "version": manifest.version, "status": "ready"}

    return _guarded(_validate, request)


def _guarded(body: Callable[[dict[str, Any], JobProgress], dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    """Run a job body with progress, and leave a caller-readable error in meta when it fails."""
    job = get_current_job()
    progress = JobProgress(job, context().connection)
    try:
        result = body(request, progress)
    except JobCancelled:
        _fail(job, Stage.CANCELED, {"code": "canceled", "message": "the job was canceled at the caller's request"})
        raise
    except JobTimeoutException:
        _fail(job, Stage.FAILED, {"code": "timeout", "message": "the job ran past its queue's time limit; "
                                  "try fewer steps or iterations, or a smaller image"})
        raise
    except ServiceError as error:
        _fail(job, Stage.FAILED, error.to_dict())
        raise
    except torch.OutOfMemoryError:
        _fail(job, Stage.FAILED, {"code": "out_of_memory", "message": "the worker ran out of device memory; "
                                  "lower internal_batch_size or the image size and retry"})
        raise
    except Exception:
        log.exception("job %s failed", request.get("job_id"))
        _fail(job, Stage.FAILED, {"code": "explanation_failed", "message": "the worker failed while computing; "
                                  "the operators have the details in the worker log"})
        raise
    if job is not None:
        job.meta.update({"stage": Stage.FINISHED.value, "progress": 1.0,
                         "finished_at": datetime.now(UTC).isoformat()})
        job.save_meta()
    return result


def _fail(job, stage: Stage, error: dict[str, str]) -> None:
    if job is not None:
        job.meta.update({"stage": stage.value, "error": error})
        job.save_meta()
