"""The batch-first explanation pipeline: load -> predict -> explain -> score -> render -> store.

A batch is the jobs a worker took as one unit of work (same model version, method and parameters;
see ``workers.claim``); a single job is a batch of one and runs through the same code. Each stage
runs once for the whole batch where the work allows it (one prediction pass, one explainer call,
deletion/insertion states of every image sharing forward passes, one round trip to store) and per
job where it cannot (rendering, localisation). A job whose own input cannot be read fails alone;
an error in a shared stage fails the batch. Every result carries per-stage timings, batched stages
reporting this job's share.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from redis import Redis

from models.preprocess import to_model_input
from workers import scoring
from workers.explain import MethodResult, run_method
from workers.runtime import GroupProgress, LoadedModel, WorkerContext
from xai.errors import ErrorCode, NotFound, ServiceError
from xai.imaging import render
from xai.imaging.resize import display_copy, fit_within, resize
from xai.jobs import (
    DISPLAY_COPY,
    INPUT_PNG,
    RAW_HEATMAP,
    ExplainJob,
    ExplainResult,
    Stage,
    Timings,
    annotation_key,
    display_key,
    input_key,
    native_key,
    public_files,
    source_key,
)
from xai.results import File, InputKey
from xai.wire import (
    DISPLAY_HEADER_BYTES,
    decode_canonical,
    decode_display,
    display_shape,
    encode_display,
    encode_heatmap,
)

FAITHFULNESS_STEPS = 50
# A display copy of up to this many values (a 1024 px grey one, 1 MiB) is stored as it is.
RAW_DISPLAY_MAX_VALUES = 1024 * 1024
# The share of a job's progress each stage spans.
SPANS = {
    Stage.LOADING_MODEL: (0.0, 0.05), Stage.PREPROCESSING: (0.05, 0.1), Stage.EXPLAINING: (0.1, 0.8),
    Stage.SCORING: (0.8, 0.92), Stage.RENDERING: (0.92, 0.97), Stage.STORING: (0.97, 1.0),
}


@dataclass
class Member:
    """One job of a batch with its inputs, as the worker read them from Redis."""

    job: ExplainJob
    image: np.ndarray  # canonical, at the model's input size
    display_shape: tuple[int, ...]  # of the display copy: uint8, at most display_max_side on the long side
    display: np.ndarray | None  # its pixels, read only where a file is drawn from them here (``_draws_display``)
    display_file: File  # the job's DISPLAY_COPY: its input's key (copied inside Redis), or a copy shrunk here
    native: np.ndarray | None  # the upload at its own resolution, patch mode only
    annotation: np.ndarray | None  # bool mask at the model's input size
    source: Dataset | None  # the source DICOM's filing attributes, outputs=dicom jobs only


class StageClock:
    """Milliseconds spent in each named stage."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000


def explain_batch(
    ctx: WorkerContext, jobs: list[ExplainJob], progress: GroupProgress
) -> dict[str, ExplainResult | ServiceError]:
    """Explain every job of a batch; each job id maps to its result or to the error that ended it."""
    started_at = time.time()
    clock = StageClock()
    ends: dict[str, ExplainResult | ServiceError] = {}
    with clock("load"):
        progress.stage(Stage.LOADING_MODEL, SPANS[Stage.LOADING_MODEL])
        loaded, resident = ctx.models.get(jobs[0].model_id, jobs[0].model_version)
        progress.stage(Stage.PREPROCESSING, SPANS[Stage.PREPROCESSING])
        members = []
        for job in jobs:
            try:
                members.append(read_member(ctx.connection, job, ctx.settings.display_max_side,
                                           hold_s=max(ctx.settings.timeout_fast_s, ctx.settings.timeout_slow_s)))
            except ServiceError as error:
                ends[job.job_id] = error
    if not members:
        return ends
    spec = loaded.manifest.input
    batch = torch.cat([to_model_input(m.image, spec) for m in members]).to(ctx.device)
    with clock("explain"):
        predictions = scoring.predictions(loaded.classifier, batch, loaded.manifest.class_names)
        targets = [p["class"] if m.job.target is None else m.job.target for p, m in zip(predictions, members)]
        per_method = _explain(ctx, loaded, members, batch, targets, progress)
    # Rendering needs only the heatmaps: it runs on its own thread while the scoring passes run
    # (libpng, Pillow and torch all release the GIL), so it adds little to a job's latency.
    rendering = ctx.render_pool.submit(_render_all, members, per_method)
    with clock("score"):
        progress.stage(Stage.SCORING, SPANS[Stage.SCORING])
        for results in per_method.values():
            _score(loaded, batch, members, targets, results)
    progress.stage(Stage.RENDERING, SPANS[Stage.RENDERING])
    files, render_ms = rendering.result()
    metrics = [_metrics(loaded, member, predictions[index], targets[index],
                        {m: results[index] for m, results in per_method.items()})
               for index, member in enumerate(members)]
    for index, member in enumerate(members):  # after scoring: the reports carry its figures
        if member.source is not None:
            started = time.perf_counter()
            metrics[index]["dicom"] = _add_dicom(files[member.job.job_id], member, loaded, per_method, index,
                                                 predictions[index], targets[index])
            render_ms[member.job.job_id] += (time.perf_counter() - started) * 1000
    with clock("store"):
        progress.stage(Stage.STORING, SPANS[Stage.STORING])
        ctx.results.put(files, ctx.settings.result_ttl_s)
    share = {name: ms / len(members) for name, ms in clock.ms.items()}
    for index, member in enumerate(members):
        job = member.job
        timing = Timings(
            queue_ms=round(max(0.0, started_at - job.submitted_at) * 1000, 1),
            load_ms=round(0.0 if resident else loaded.load_ms, 1) + round(share["load"], 1),
            explain_ms=round(share["explain"], 1), score_ms=round(share["score"], 1),
            render_ms=round(render_ms[job.job_id], 1), store_ms=round(share["store"], 1),
            batch_size=len(members), model_resident=resident,
        )
        ends[job.job_id] = ExplainResult(metrics=metrics[index], files=public_files(files[job.job_id]), timing=timing)
    return ends


def read_member(connection: Redis, job: ExplainJob, display_max_side: int, *, hold_s: int) -> Member:
    """A job's inputs from Redis; ``input_expired`` when the upload aged out before a worker reached it.

    Of the display copy only its header is read, unless a file is drawn from it here (``_draws_display``):
    the result store copies it from the input's key when the job ends (a 1024 px one is 1 MiB read and
    written again). So that it is still there then, a copy that would expire within ``hold_s`` (the
    longest job timeout) is kept that long; the job's end deletes it as before."""
    key = display_key(job.job_id)
    with connection.pipeline(transaction=False) as pipe:
        pipe.mget([input_key(job.job_id), native_key(job.job_id), annotation_key(job.job_id), source_key(job.job_id)])
        pipe.getrange(key, 0, DISPLAY_HEADER_BYTES - 1)
        pipe.ttl(key)
        (image_blob, native_blob, annotation_blob, source_blob), display_head, seconds_left = pipe.execute()
    if image_blob is None or not display_head or ("dicom" in job.outputs and source_blob is None):
        raise NotFound(code=ErrorCode.INPUT_EXPIRED)
    if 0 <= seconds_left < hold_s:  # a job that waited nearly XAI_INPUT_TTL_S in the queue
        connection.expire(key, hold_s)
    shape, display, display_file = display_shape(display_head), None, InputKey(key)
    if _draws_display(job, shape, display_max_side):
        blob = connection.get(key)
        if blob is None:
            raise NotFound(code=ErrorCode.INPUT_EXPIRED)
        display = decode_display(blob)
        if max(shape[:2]) > display_max_side:  # stored under a larger cap than this worker's
            display = display_copy(display, *fit_within(*shape[:2], display_max_side))
            display_file = encode_display(display)
        shape = display.shape
    return Member(
        job=job,
        image=decode_canonical(image_blob),
        display_shape=shape,
        display=display,
        display_file=display_file,
        native=None if native_blob is None else decode_canonical(native_blob),
        annotation=None if annotation_blob is None else decode_canonical(annotation_blob) > 0.5,
        source=None if source_blob is None else pydicom.dcmread(io.BytesIO(source_blob)),
    )


def _draws_display(job: ExplainJob, shape: tuple[int, ...], display_max_side: int) -> bool:
    """Whether this worker needs the display copy's pixels: for DICOM results (the overlay), for a copy over
    its own cap, and for one stored as input.png (``_render``)."""
    return ("dicom" in job.outputs or max(shape[:2]) > display_max_side
            or ("png" in job.outputs and math.prod(shape) > RAW_DISPLAY_MAX_VALUES))


def _explain(
    ctx: WorkerContext, loaded: LoadedModel, members: list[Member], batch: torch.Tensor, targets: list[int],
    progress: GroupProgress,
) -> dict[str, list[MethodResult]]:
    """Each method on the whole batch; its results in member order."""
    job = members[0].job  # every member shares model, methods and params (the batch key)
    low, high = SPANS[Stage.EXPLAINING]
    per_method = {}
    for index, method in enumerate(job.methods):
        progress.stage(Stage.EXPLAINING, (low + (high - low) * index / len(job.methods),
                                          low + (high - low) * (index + 1) / len(job.methods)))
        patches = (members[0].native, job.patch_overlap) if job.patch_mode and members[0].native is not None else None
        per_method[method] = run_method(loaded, ctx.store, method, batch, targets, job.params.get(method, {}),
                                        progress, quality=tuple(job.quality), patches=patches)
    return per_method


def _score(
    loaded: LoadedModel, batch: torch.Tensor, members: list[Member], targets: list[int], results: list[MethodResult]
) -> None:
    """Complexity, faithfulness when asked for and (with an annotation) localisation of each heatmap, at the
    model's size."""
    size = tuple(batch.shape[-2:])
    heatmaps = [_at_size(result.heatmap, size) for result in results]
    if members[0].job.scores_faithfulness:  # the batch key keeps it equal across the batch
        faithfulness = scoring.deletion_insertion_batch(
            loaded.classifier, batch, torch.stack(heatmaps).to(batch.device), targets, steps=FAITHFULNESS_STEPS
        )
        for result, figures in zip(results, faithfulness, strict=True):
            result.metrics["faithfulness"] = figures
    for member, result, heatmap in zip(members, results, heatmaps, strict=True):
        result.metrics["complexity"] = scoring.complexity(heatmap.numpy())
        if member.annotation is not None:
            result.metrics["localization"] = scoring.localization(heatmap.numpy(), member.annotation)


def _at_size(heatmap: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A patch-mode heatmap (at the native size) is scored at the model's size, like every other."""
    if tuple(heatmap.shape) == size:
        return heatmap.float()
    return torch.from_numpy(resize(heatmap.float().numpy(), size[0], size[1]))


def _render_all(
    members: list[Member], per_method: dict[str, list[MethodResult]]
) -> tuple[dict[str, dict[str, File]], dict[str, float]]:
    """Every job's files, and the milliseconds each job's took."""
    files, render_ms = {}, {}
    for index, member in enumerate(members):
        started = time.perf_counter()
        files[member.job.job_id] = _render(member, {m: results[index] for m, results in per_method.items()})
        render_ms[member.job.job_id] = (time.perf_counter() - started) * 1000
    return files, render_ms


def _render(member: Member, results: dict[str, MethodResult]) -> dict[str, File]:
    """The files of one job: the raw heatmap of each method and, for outputs=png, the input's display
    copy and per method any extra images (at the model's size). The gateway renders input.png and the
    heatmap and overlay PNGs from the copy when they are first downloaded (``service.rendering``): at
    a large display size that encoding is most of a fast job's time, and a PACS caller never needs it.
    (An outputs=dicom job's DICOM files are added after scoring: ``_add_dicom``.)"""
    png = "png" in member.job.outputs
    files = {}
    if png and math.prod(member.display_shape) <= RAW_DISPLAY_MAX_VALUES:
        files[DISPLAY_COPY] = member.display_file
    elif png:  # a large colour copy would hold up to 3 MiB until the first download: keep it as its PNG
        files[INPUT_PNG] = render.png_bytes(member.display)
    for method, result in results.items():
        prefix = _prefix(method, results)
        files[prefix + RAW_HEATMAP] = encode_heatmap(_stored_heatmap(result, member))
        if png:
            files |= {f"{prefix}{name}.png": render.png_bytes(pixels) for name, pixels in result.images.items()}
    return files


def _prefix(method: str, results: dict) -> str:
    return "" if len(results) == 1 else f"{method}/"


def _stored_heatmap(result: MethodResult, member: Member) -> np.ndarray:
    heatmap = result.heatmap.float().numpy()
    if max(heatmap.shape) > max(member.display_shape[:2]):  # patch mode: keep no more than is shown
        heatmap = resize(heatmap, *member.display_shape[:2])
    return heatmap


def _add_dicom(
    files: dict[str, File], member: Member, loaded: LoadedModel, per_method: dict[str, list[MethodResult]],
    index: int, prediction: dict, target: int,
) -> dict:
    """Write each method's DICOM results into ``files``; what the job's metrics say of them."""
    # highdicom only for outputs=dicom jobs: a worker starts faster without it.
    from workers import dicom_results

    manifest, job = loaded.manifest, member.job
    series = dicom_results.SeriesUids()
    notes = []
    results = {m: r[index] for m, r in per_method.items()}
    for number, (method, result) in enumerate(results.items(), start=1):
        heatmap = _stored_heatmap(result, member)
        explained = dicom_results.Explained(
            method=method, params=job.params.get(method, {}), model_id=manifest.id, model_version=manifest.version,
            class_names=list(manifest.class_names), predicted=prediction["class"], target=target,
            target_probability=float(prediction["probabilities"][manifest.class_names[target]]), metrics=result.metrics,
            frame=int(job.input.details.get("frame", 0) or 0),
        )
        written = dicom_results.write(member.source, render.overlay_pixels(heatmap, member.display), heatmap,
                                      explained, series, number)
        files |= {_prefix(method, results) + name: blob for name, blob in written.files.items()}
        notes += written.notes
    return {"series": {"secondary_capture": series.sc, "parametric_map": series.pm, "structured_report": series.sr},
            "notes": notes}


def _metrics(
    loaded: LoadedModel, member: Member, prediction: dict, target: int, results: dict[str, MethodResult]
) -> dict:
    manifest, job = loaded.manifest, member.job
    metrics = {
        "prediction": prediction,
        "target": {"class": target, "class_name": manifest.class_names[target],
                   "chosen_by": "caller" if job.target is not None else "predicted class"},
        "model": {"id": manifest.id, "version": manifest.version, "sha256": manifest.weights_sha256},
        "input": job.input.model_dump(),
    }
    if len(results) == 1:
        return metrics | next(iter(results.values())).metrics
    metrics["methods"] = {name: result.metrics for name, result in results.items()}
    metrics["comparison"] = [_comparison_row(name, result.metrics) for name, result in results.items()]
    return metrics


def _comparison_row(method: str, metrics: dict) -> dict:
    row = {
        "method": method,
        "deletion_auc": metrics["faithfulness"]["deletion_auc"],
        "insertion_auc": metrics["faithfulness"]["insertion_auc"],
        "complexity": metrics["complexity"]["area_fraction"],
    }
    if "localization" in metrics:
        row |= {k: metrics["localization"][k] for k in ("iou_p85", "iou_p90", "iou_p95", "iou_p98", "ncc")}
    return row
