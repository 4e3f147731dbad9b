"""Submitting jobs to RQ and reading them back as the public job status. Torch-free.

The RQ job argument is a small JSON dict without pixels or patient data; the canonical image waits
under its own key with a TTL. Every enqueue states its timeouts and TTLs: RQ's default failure TTL
is a year, far too long for anything derived from a patient's image. A queued job itself never
expires (no RQ ``ttl``): if its input has expired by the time a worker reaches it, it fails with
``input_expired`` instead of vanishing.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from service.deps import Gateway, Principal
from xai.wire import encode_canonical
from xai.errors import NotFound
from xai.jobs import (
    Stage,
    annotation_key,
    cancel_key,
    idempotency_key,
    input_key,
    result_index_key,
    result_key,
)

WORKER_LOST = {
    "code": "worker_lost",
    "message": "the worker running this job stopped (killed or crashed) before finishing; submit the request again",
}
TIMED_OUT = {"code": "timeout", "message": "the job ran past its time limit; try fewer steps or a smaller image"}
FAILED = {"code": "explanation_failed", "message": "the job failed; the operators have the details in the worker log"}


def new_job_id() -> str:
    return uuid.uuid4().hex


def claim_idempotency(gateway: Gateway, owner: str, key: str | None, job_id: str) -> str | None:
    """Reserve ``key`` for ``job_id``; returns the job id already holding it, if any."""
    if not key:
        return None
    redis_key = idempotency_key(owner, key)
    if gateway.redis.set(redis_key, job_id, nx=True, ex=gateway.settings.result_ttl_s):
        return None
    existing = gateway.redis.get(redis_key)
    return existing.decode() if existing else None


def enqueue(
    gateway: Gateway, queue_name: str, entry: str, request: dict[str, Any], *, job_id: str, owner: str,
    pixels=None, annotation=None,
) -> Job:
    """Store the inputs (if any) with a TTL, then enqueue ``entry`` by dotted path on ``queue_name``."""
    settings = gateway.settings
    with gateway.redis.pipeline() as pipe:
        if pixels is not None:
            pipe.set(input_key(job_id), encode_canonical(pixels), ex=settings.input_ttl_s)
        if annotation is not None:
            pipe.set(annotation_key(job_id), encode_canonical(annotation.astype("float32")), ex=settings.input_ttl_s)
        pipe.execute()
    request = {**request, "job_id": job_id, "submitted_at": time.time()}
    return gateway.queues[queue_name].enqueue(
        entry,
        request,
        job_id=job_id,
        job_timeout=settings.timeout_for(queue_name),
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        meta={"owner": owner, "stage": Stage.QUEUED.value, "progress": 0.0},
    )


def fetch_owned(gateway: Gateway, job_id: str, principal: Principal) -> Job:
    """The job, if it exists and belongs to the caller; another caller's job is reported as not found."""
    try:
        job = Job.fetch(job_id, connection=gateway.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        job = None
    if job is None or job.meta.get("owner") != principal.name:
        raise NotFound(f"no job {job_id!r} (it may have expired)", code="unknown_job")
    return job


def fail_if_abandoned(gateway: Gateway, job: Job) -> Job:
    """A 'started' job whose worker stopped heartbeating is moved to failed by RQ's own cleanup."""
    if job.get_status(refresh=True) == JobStatus.STARTED:
        StartedJobRegistry(job.origin, connection=gateway.redis, serializer=JSONSerializer).cleanup()
        job.refresh()
    return job


def public_status(job: Job, base_url: str) -> dict[str, Any]:
    """The job as the API shows it: status, progress, stage, error and, when finished, the result."""
    meta = job.get_meta(refresh=False)
    status = _public_state(job, meta)
    request = job.args[0] if job.args else {}
    body: dict[str, Any] = {
        "job_id": job.id,
        "kind": request.get("kind", "explanation"),
        "status": status,
        "progress": 1.0 if status == "finished" else float(meta.get("progress", 0.0)),
        "stage": _public_stage(status, meta),
        "note": meta.get("note"),
        "error": _error(job, meta, status),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "request": {k: request[k] for k in ("model_id", "model_version", "methods", "target", "method") if k in request},
        "result": None,
    }
    if status == "finished":
        result = job.return_value()
        files = (result or {}).get("files", [])
        body["result"] = {
            "metrics": {k: v for k, v in (result or {}).items() if k != "files"},
            "files": {name: f"{base_url}v1/jobs/{job.id}/{name}" for name in files},
        }
    return body


def _public_state(job: Job, meta: dict) -> str:
    status = job.get_status(refresh=False)
    if meta.get("stage") == Stage.CANCELED.value or status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return "canceled"
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED):
        return "queued"
    return str(status.value if hasattr(status, "value") else status)


def _public_stage(status: str, meta: dict) -> str:
    if status in ("finished", "failed", "canceled"):
        return status
    return meta.get("stage", Stage.QUEUED.value)


def _error(job: Job, meta: dict, status: str) -> dict[str, str] | None:
    if status == "canceled":
        return meta.get("error") or {"code": "canceled", "message": "the job was canceled at the caller's request"}
    if status != "failed":
        return None
    if meta.get("error"):
        return meta["error"]
    latest = job.latest_result()
    trace = (latest.exc_string or "") if latest else ""
    if "AbandonedJobError" in trace:
        return WORKER_LOST
    if "JobTimeoutException" in trace:
        return TIMED_OUT
    return FAILED


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def cancel(gateway: Gateway, job: Job) -> None:
    """A queued job is canceled at once; a running one stops at its next progress report."""
    status = job.get_status(refresh=True)
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        job.meta["stage"] = Stage.CANCELED.value
        job.save_meta()
        gateway.redis.delete(input_key(job.id), annotation_key(job.id))
    elif status == JobStatus.STARTED:
        gateway.redis.set(cancel_key(job.id), 1, ex=gateway.settings.timeout_slow_s)


def read_file(redis: Redis, job_id: str, name: str) -> bytes:
    blob = redis.get(result_key(job_id, name))
    if blob is None:
        known = sorted(n.decode() for n in redis.smembers(result_index_key(job_id)))
        raise NotFound(
            f"job {job_id!r} has no file {name!r}" + (f"; files: {', '.join(known)}" if known else ""),
            code="unknown_file",
        )
    return blob

