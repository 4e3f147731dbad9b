"""RQ job entry points, enqueued by dotted path from the gateway (which never imports this module).

Each takes the JSON form of one typed request of ``xai.jobs``. An explanation job is the leader of
the batch the worker claimed for it (``workers.claim``): its entry point runs the whole batch
through ``workers.pipeline`` and closes every other job of it. A job's error is stored as
``{"code", "message"}`` in its meta, so the gateway can show it; anything not caused by the caller
becomes ``explanation_failed`` without internals (tracebacks stay in the worker log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import tenacity
import torch
from redis import Redis
from rq import get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from workers import claim as claims
from workers.pipeline import explain_batch
from workers.runtime import REDIS_UNREACHABLE, GroupProgress, WorkerContext
from xai.errors import ErrorCode, JobCancelled, ServiceError
from xai.jobs import DeliverJob, Delivery, ExplainJob, ExplainResult, Stage, TrainJob, ValidateJob, input_keys
from xai.persistence import mark_patient_data_deleted
from xai.redis_client import connect
from xai.settings import get_settings

log = logging.getLogger("xai.worker")

_context: WorkerContext | None = None


def install_context(ctx: WorkerContext) -> None:
    """Called by workers.main before the first job, so the device and model cache are set up once."""
    global _context
    _context = ctx


def context() -> WorkerContext:
    """The process's context, built from the environment's settings if none was installed."""
    if _context is None:
        settings = get_settings()
        install_context(WorkerContext(settings, connect(settings.redis_url)))
    return _context


class JobFailed(Exception):
    """A job of a batch ended with ``error``; raised for the leader so RQ records it as failed."""

    def __init__(self, error: dict[str, str]):
        super().__init__(f"{error['code']}: {error['message']}")
        self.error = error


def run_explanation(payload: dict[str, Any]) -> dict[str, Any]:
    """Explain this job and the jobs the worker claimed with it; return this job's result."""
    ctx = context()
    leader = ExplainJob.model_validate(payload)
    leader_job = get_current_job()
    peers, execution = ctx.take_claims(leader.job_id)
    batch = [leader] + [peer.request for peer in peers]
    progress = GroupProgress([j for j in [leader_job] + [peer.job for peer in peers] if j is not None],
                             ctx.connection)
    try:
        ends = _through_redis_outages(ctx, lambda: explain_batch(ctx, batch, progress))
    except Exception as error:  # a shared stage failed (or timed out): every job of the batch ends so
        body = error_body(error, leader.job_id)
        ends = {job.job_id: body for job in batch}
    held = _still_held(ctx, leader.job_id, leader_job, execution, peers)
    for peer in peers:
        if peer.job.id in held:
            outcome = _outcome(ctx, peer.request.job_id, ends, progress.canceled)
            _send_if_asked(ctx, peer.request, peer.job, outcome[0])
            _close_peer(ctx, peer, *outcome)
        else:
            peer.closed = True
    # The leader's input goes when RQ has recorded its end (ExplainWorker); outside a worker, now.
    release_inputs(ctx.connection, [p.job.id for p in peers if p.job.id in held]
                   + ([leader.job_id] if leader_job is None else []))
    if leader.job_id not in held:
        return {}  # ExplainWorker drops this outcome (its lease is lost); the retry's is kept
    result, error = _outcome(ctx, leader.job_id, ends, progress.canceled)
    _send_if_asked(ctx, leader, leader_job, result)
    if error is not None:
        _mark(leader_job, _stage_of(error), error)
        raise JobCancelled(leader.job_id) if error["code"] == ErrorCode.CANCELED else JobFailed(error)
    _mark(leader_job, Stage.FINISHED)
    return result


def _through_redis_outages(ctx: WorkerContext, work: Callable[[], Any]) -> Any:
    """``work()``, run again while Redis is unreachable, for up to the jobs' lease (``abandoned_after_s``).

    A Redis restart mid-batch loses nothing the batch needs (inputs, claims and leases are in its
    append-only file), so an accepted job must not fail for it. The batch is computed again once Redis
    answers; an outage longer than the lease lets RQ's cleanup take the jobs back, and ``_still_held``
    then drops this worker's outcome, so no job is computed twice by two workers.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(REDIS_UNREACHABLE), reraise=True,
        stop=tenacity.stop_after_delay(ctx.settings.abandoned_after_s),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2),
        before_sleep=lambda state: log.warning("Redis unreachable mid-batch (attempt %d); the batch runs again "
                                               "once it answers", state.attempt_number))
    return retrying(work)


def release_inputs(connection: Redis, job_ids: list[str]) -> None:
    """Delete the uploads of jobs whose end is recorded. Not before: a worker killed between computing a
    job and recording its end leaves the input to the retry RQ's abandoned-job cleanup starts. (A job
    RQ took back from this worker keeps its input for that retry too.)"""
    if job_ids:
        with connection.pipeline(transaction=False) as pipe:
            pipe.delete(*(key for job_id in job_ids for key in input_keys(job_id)))
            mark_patient_data_deleted(pipe)
            pipe.execute()


def _send_if_asked(ctx: WorkerContext, request: ExplainJob, job: Job | None, result: dict[str, Any] | None) -> None:
    """A finished job with a destination sends its DICOM results there (stage ``sending``) before it ends."""
    if result is None or request.destination is None or job is None:
        return
    job.meta["stage"] = Stage.SENDING.value
    job.save_meta()
    send_dicom(ctx, request.job_id, ExplainResult.model_validate(result).files, request.destination, job)


def send_dicom(ctx: WorkerContext, job_id: str, files: list[str], destination: str, job: Job) -> Delivery:
    """STOW-RS the job's DICOM results to ``destination`` and record how it went in the job's meta.

    A delivery that fails leaves the job finished, with its results kept: POST /v1/jobs/{id}/deliveries re-sends.
    """
    settings = ctx.settings
    job.meta["delivery"] = Delivery(destination=destination, status="sending",
                                    updated_at=datetime.now(UTC).isoformat()).model_dump()
    job.save_meta()
    config = settings.dicomweb_destinations.get(destination)
    if config is None:  # the settings changed since the job was accepted
        delivery = Delivery(destination=destination, status="failed", updated_at=datetime.now(UTC).isoformat(),
                            reason=f"destination {destination!r} is no longer in XAI_DICOMWEB_DESTINATIONS")
    else:
        from workers.delivery import deliver  # dicomweb-client only where something is sent

        instances = [ctx.results.get(job_id, name) for name in files if name.endswith(".dcm")]
        delivery = deliver(instances, destination, config, attempts=settings.dicomweb_attempts,
                           backoff_s=settings.dicomweb_backoff_s, timeout_s=settings.dicomweb_timeout_s)
    job.meta["delivery"] = delivery.model_dump()
    job.save_meta()
    return delivery


def run_delivery(payload: dict[str, Any]) -> dict[str, Any]:
    """Re-send a finished job's DICOM results (POST /v1/jobs/{id}/deliveries)."""
    ctx = context()
    request = DeliverJob.model_validate(payload)

    def send(progress: GroupProgress) -> dict[str, Any]:
        target = Job.fetch(request.of_job, connection=ctx.connection, serializer=JSONSerializer)
        files = ExplainResult.model_validate(target.return_value()).files
        return send_dicom(ctx, request.of_job, files, request.destination, target).model_dump()

    return _guarded(request.job_id, send)


def _outcome(
    ctx: WorkerContext, job_id: str, ends: dict[str, Any], canceled: set[str]
) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """A job's (return value, None) when it finished, else (None, its error body)."""
    end = ends[job_id]
    if job_id in canceled:
        ctx.results.purge(job_id)
        return None, ErrorCode.CANCELED.body()
    if isinstance(end, ExplainResult):
        return end.model_dump(mode="json"), None
    return None, end.to_dict() if isinstance(end, ServiceError) else end


def _still_held(ctx: WorkerContext, leader_id: str, leader_job: Job | None, execution: Execution | None,
                peers: list[claims.Claim]) -> set[str]:
    """The ids of the batch's jobs this worker still holds (claims.still_held renews each lease)."""
    ttl = ctx.settings.abandoned_after_s
    held = {peer.job.id for peer in peers if claims.still_held(peer.job, peer.execution, ttl)}
    if leader_job is None or execution is None or claims.still_held(leader_job, execution, ttl):
        held.add(leader_id)
    if len(held) < len(peers) + 1:
        log.warning("RQ re-queued %d job(s) of this batch while the worker was cut off from Redis; their retries "
                    "compute them", len(peers) + 1 - len(held))
    return held


def _close_peer(ctx: WorkerContext, peer: claims.Claim, result: dict[str, Any] | None,
                error: dict[str, str] | None) -> None:
    ttl = ctx.settings.abandoned_after_s
    if error is None:
        _mark(peer.job, Stage.FINISHED)
        claims.finish(peer, result, ctx.worker_name, ttl)
    else:
        _mark(peer.job, _stage_of(error), error)
        claims.fail(peer, f"JobFailed: {error['code']}", ctx.worker_name, ttl)


def _stage_of(error: dict[str, str]) -> Stage:
    return Stage.CANCELED if error["code"] == ErrorCode.CANCELED else Stage.FAILED


def error_body(error: BaseException, job_id: str) -> dict[str, str]:
    """What a caller is told of an exception that ended a job."""
    if isinstance(error, JobCancelled):
        return ErrorCode.CANCELED.body()
    if isinstance(error, JobTimeoutException):
        return ErrorCode.TIMEOUT.body()
    if isinstance(error, ServiceError):
        return error.to_dict()
    if isinstance(error, torch.OutOfMemoryError):
        return ErrorCode.OUT_OF_MEMORY.body()
    log.error("job %s failed", job_id, exc_info=error)
    return ErrorCode.EXPLANATION_FAILED.body()


def run_training(payload: dict[str, Any]) -> dict[str, Any]:
    """Train explainer artifacts (SyCE/CyCE generators, GAD support models) for a model version."""
    from workers.training import train_artifacts  # training code is only needed on the train queue

    request = TrainJob.model_validate(payload)
    return _guarded(request.job_id, lambda progress: train_artifacts(context(), request, progress))


def validate_model(payload: dict[str, Any]) -> dict[str, Any]:
    """Build and run a newly registered model once, and record whether it is usable."""
    from models.loader import validate_registration

    request = ValidateJob.model_validate(payload)

    def validate(progress: GroupProgress) -> dict[str, Any]:
        store = context().store
        manifest = store.get(request.model_id, request.model_version)
        try:
            validate_registration(manifest, store.weights_path(manifest))
        except ServiceError as error:
            store.set_status(manifest.id, manifest.version, "invalid", error.message)
            raise
        store.set_status(manifest.id, manifest.version, "ready", None)
        return {"model_id": manifest.id, "version": manifest.version, "status": "ready"}

    return _guarded(request.job_id, validate)


def _guarded(job_id: str, body: Callable[[GroupProgress], dict[str, Any]]) -> dict[str, Any]:
    """Run a one-job body with progress, and leave a caller-readable error in meta when it fails."""
    job = get_current_job()
    progress = GroupProgress([job] if job is not None else [], context().connection)
    try:
        result = body(progress)
    except Exception as error:
        body_of_error = error_body(error, job_id)
        _mark(job, _stage_of(body_of_error), body_of_error)
        raise
    _mark(job, Stage.FINISHED)
    return result


def _mark(job: Job | None, stage: Stage, error: dict[str, str] | None = None) -> None:
    """Record a job's end in its meta: the stage, and the error or the time it finished."""
    if job is None:
        return
    job.meta["stage"] = stage.value
    if error is not None:
        job.meta["error"] = error
    else:
        job.meta |= {"progress": 1.0, "finished_at": datetime.now(UTC).isoformat()}
    job.save_meta()
