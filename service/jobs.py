"""Submitting jobs to RQ, reading them back as the public job status, serving and purging their files. Torch-free.

The RQ job argument is the JSON form of a typed request (``xai.jobs``), without pixels or patient
data; the inputs wait under their own keys with a TTL. Every enqueue states its timeouts and TTLs:
RQ's default failure TTL is a year, far too long for anything derived from a patient's image. A
queued job itself never expires (no RQ ``ttl``): if its input has expired by the time a worker
reaches it, it fails with ``input_expired`` instead of vanishing.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from redis.client import Pipeline
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from service import schemas  # its JobStatus is the API's; rq's JobStatus is the queue's
from service.deps import Gateway, Principal
from service.rendering import is_rendered, rendered_file
from service.signing import UrlSigner
from xai.callbacks import CallbackDelivery
from xai.errors import ErrorCode, InvalidInput, NotFound, Overloaded
from xai.imaging.resize import resize
from xai.jobs import (
    CALLBACK_OUTBOX,
    DELIVER_ENTRY,
    DERIVED_HEATMAPS,
    RAW_HEATMAP,
    DeliverJob,
    Delivery,
    ExplainJob,
    ExplainResult,
    Stage,
    announce_end,
    cancel_key,
    idempotency_key,
    input_keys,
    observed_key,
    owner_jobs_key,
    parse_request,
)
from xai.persistence import mark_patient_data_deleted
from xai.results import JOB_ID
from xai.settings import Settings
from xai.wire import decode_heatmap, npy_bytes

TERMINAL = ("finished", "failed", "canceled")
WORKER_LOST_RETRIES = 1
STALE_CLAIM_S = 15  # longer than any request holds an idempotency claim before its job is enqueued
CLAIM_RETRY_AFTER_S = 1


def new_job_id() -> str:
    return uuid.uuid4().hex


def status_url(base_url: str, job_id: str) -> str:
    """Where a caller polls a job (``base_url`` is the request's, ending in a slash)."""
    return f"{base_url}v1/jobs/{job_id}"


def claim_idempotency(gateway: Gateway, owner: str, key: str | None, job_id: str) -> str | None:
    """Reserve ``key`` for ``job_id``; returns the job id already holding it, if any.

    A claim whose job is not in the queue yet belongs to a request still being accepted, or to one
    that died between the claim and the enqueue (Redis or the gateway killed): a retry meanwhile is
    told to come back (409 ``request_in_progress``), never given a job id that may never exist, and
    once the claim is older than any request takes, the retry takes it over and is enqueued.
    """
    if not key:
        return None
    redis_key = idempotency_key(owner, key)
    ttl = gateway.settings.result_ttl_s
    if gateway.redis.set(redis_key, job_id, nx=True, ex=ttl):
        return None
    existing = (gateway.redis.get(redis_key) or b"").decode()
    claimed_s_ago = ttl - gateway.redis.ttl(redis_key)
    if existing and Job.exists(existing, connection=gateway.redis):
        return existing
    if claimed_s_ago < STALE_CLAIM_S:
        raise Overloaded("a request with this Idempotency-Key is still being accepted; send it again in a moment",
                         code="request_in_progress", retry_after_s=CLAIM_RETRY_AFTER_S)
    gateway.redis.set(redis_key, job_id, ex=ttl)
    return None


def enqueue(
    gateway: Gateway, queue_name: str, entry: str, request: BaseModel, *, owner: str,
    inputs: dict[str, bytes] | None = None, idempotency: str | None = None, callback: CallbackDelivery | None = None,
) -> Job:
    """Store the inputs (if any) with a TTL and enqueue ``entry`` by dotted path with the typed request.

    One transaction: the inputs, the job, its owner's index and the callback outbox are written together
    or not at all, in one round trip. With ``callback`` the job is put in the callback outbox, which the
    gateways' couriers deliver from.
    """
    settings = gateway.settings
    meta = {"owner": owner, "stage": Stage.QUEUED.value, "progress": 0.0}
    if idempotency:
        meta["idempotency"] = idempotency_key(owner, idempotency)
    if callback:
        meta["callback"] = callback.model_dump()
    with gateway.redis.pipeline() as pipe:
        job = gateway.queues[queue_name].enqueue(  # first: RQ starts the transaction (MULTI) on this pipeline
            entry,
            request.model_dump(mode="json"),
            job_id=request.job_id,
            job_timeout=settings.timeout_for(queue_name),
            result_ttl=settings.result_ttl_s,
            failure_ttl=settings.failure_ttl_s,
            meta=meta,
            # Every job is idempotent (its inputs stay until it ends; training resumes from its checkpoint), so
            # one whose worker died is run once more before it fails worker_lost. RQ's abandoned-job cleanup
            # does the re-queue; the worker spends the retry on nothing else (ExplainWorker.handle_job_failure).
            retry=Retry(max=WORKER_LOST_RETRIES),
            pipeline=pipe,
        )
        for key, blob in (inputs or {}).items():
            pipe.set(key, blob, ex=settings.input_ttl_s)
        _index_by_owner(pipe, settings, owner, job.id)
        if callback:
            pipe.zadd(CALLBACK_OUTBOX, {job.id: time.time()})
        pipe.execute()
    return job


def _index_by_owner(pipe: Pipeline, settings: Settings, owner: str, job_id: str) -> None:
    """List the job under its owner; the index outlives its longest-kept job and drops expired ids lazily."""
    key = owner_jobs_key(owner)
    pipe.zadd(key, {job_id: time.time_ns() // 1_000_000})
    pipe.expire(key, max(settings.result_ttl_s, settings.failure_ttl_s, settings.input_ttl_s) + 3600)


def list_owned(
    gateway: Gateway, principal: Principal, *, limit: int, cursor: str | None,
    status: str | None = None, model_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """The caller's jobs, newest first, optionally of one status and model: a page and the next page's cursor.

    The cursor names the last job shown (submission ms and id), so pages neither repeat nor skip a job
    when newer ones arrive meanwhile.
    """
    key = owner_jobs_key(principal.name)
    before_ms, before_id = _decode_cursor(cursor) if cursor else (None, None)
    page: list[Job] = []
    offset = 0
    while len(page) < limit:
        window = gateway.redis.zrevrangebyscore(
            key, before_ms if before_ms is not None else "+inf", "-inf", start=offset, num=limit * 4, withscores=True)
        if not window:
            return page, None
        offset += len(window)
        for member, score in window:
            job_id = member.decode()
            if before_ms is not None and int(score) == before_ms and job_id >= before_id:
                continue
            job = _fetch_listed(gateway, key, job_id)
            if job is None or not _matches(job, status, model_id):
                continue
            page.append(job)
            if len(page) == limit:
                return page, _encode_cursor(int(score), job_id)
    return page, None


def _fetch_listed(gateway: Gateway, key: str, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=gateway.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        gateway.redis.zrem(key, job_id)  # expired or purged: drop it from the index
        return None


def _matches(job: Job, status: str | None, model_id: str | None) -> bool:
    if status is not None and _public_state(job, job.get_meta(refresh=False)) != status:
        return False
    return model_id is None or getattr(parse_request(job.args[0]), "model_id", None) == model_id


def _encode_cursor(score_ms: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score_ms}:{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, _, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if JOB_ID.fullmatch(job_id) and score.isdecimal():
            return int(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidInput("the cursor is not one a previous page of GET /v1/jobs returned", code="invalid_cursor")


def fetch_owned(gateway: Gateway, job_id: str, principal: Principal) -> Job:
    """The job, if it exists and belongs to the caller; another caller's job is reported as not found."""
    job = None
    if JOB_ID.fullmatch(job_id):
        try:
            job = Job.fetch(job_id, connection=gateway.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
    if job is None or job.meta.get("owner") != principal.name:
        raise NotFound(f"no job {job_id[:64]!r} (it may have expired or been deleted)", code="unknown_job")
    return job


def fail_if_abandoned(gateway: Gateway, job: Job) -> Job:
    """A 'started' job whose worker stopped heartbeating is moved to failed by RQ's own cleanup.

    ``job`` was just fetched, so its status is fresh: a poll of a running job costs one round trip. A job
    started less than ``abandoned_after_s`` ago still holds its first lease, so nothing is cleaned up for
    it yet (the first poll of a long-polling client comes right after its POST)."""
    if job.get_status(refresh=False) == JobStatus.STARTED and not _lease_surely_held(job, gateway.settings):
        StartedJobRegistry(job.origin, connection=gateway.redis, serializer=JSONSerializer).cleanup()
        job.refresh()
    return job


def _lease_surely_held(job: Job, settings: Settings) -> bool:
    """A worker's lease on a job lasts ``abandoned_after_s`` from its start, and heartbeats only extend it."""
    started = job.started_at
    return started is not None and (datetime.now(UTC) - started).total_seconds() < settings.abandoned_after_s


def public_status(job: Job, base_url: str, signer: UrlSigner | None = None) -> schemas.JobStatus:
    """The job as the API shows it: status, progress, stage, error and, when finished, the result.

    With ``signer`` the result's file URLs are signed, so a browser loads them without its key. Fields a
    job has no value for (a callback it never asked for, a metric block its method has not) are left
    unset, and the API leaves unset fields out.
    """
    meta = job.get_meta(refresh=False)
    status = _public_state(job, meta)
    request = parse_request(job.args[0])
    body: dict[str, Any] = {
        "job_id": job.id,
        "kind": request.kind,
        "status": status,
        "progress": 1.0 if status == "finished" else float(meta.get("progress", 0.0)),
        "stage": status if status in TERMINAL else meta.get("stage", Stage.QUEUED.value),
        "note": meta.get("note"),
        "error": _error(job, meta, status),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "request": request.model_dump(include={"model_id", "model_version", "methods", "target", "faithfulness",
                                               "method"}),
        "result": None,
    }
    if meta.get("callback"):
        body["callback"] = CallbackDelivery.model_validate(meta["callback"]).public()
    if meta.get("delivery"):
        body["delivery"] = Delivery.model_validate(meta["delivery"])
    if status == "finished":
        body["result"] = _public_result(request, job.return_value(), status_url(base_url, job.id) + "/")
        if signer:
            files = body["result"]["files"]
            body["result"]["files"] = {name: signer.sign(url, job.id, name, meta["owner"]) for name, url in files.items()}
    return schemas.JobStatus.model_validate(body)


def _public_result(request: Any, value: dict[str, Any] | None, files_url: str) -> dict[str, Any]:
    if not isinstance(request, ExplainJob):
        return {"metrics": value or {}, "timing": None, "files": {}}
    result = ExplainResult.model_validate(value)
    return {
        "metrics": result.metrics,
        "timing": result.timing.model_dump(),
        "files": {name: files_url + name for name in result.files},
    }


def has_ended(job: Job) -> bool:
    """Whether the job's public status is terminal, from the record just fetched (no Redis call)."""
    return _public_state(job, job.get_meta(refresh=False)) in TERMINAL


def _public_state(job: Job, meta: dict) -> str:
    status = job.get_status(refresh=False)
    if meta.get("stage") == Stage.CANCELED.value or status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return "canceled"
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED):
        return "queued"
    return str(status.value if hasattr(status, "value") else status)


def _error(job: Job, meta: dict, status: str) -> dict[str, str] | None:
    if status == "canceled":
        return meta.get("error") or ErrorCode.CANCELED.body()
    if status != "failed":
        return None
    if meta.get("error"):
        return meta["error"]
    latest = job.latest_result()
    trace = (latest.exc_string or "") if latest else ""
    if "AbandonedJobError" in trace:
        return ErrorCode.WORKER_LOST.body()
    if "JobTimeoutException" in trace:
        return ErrorCode.TIMEOUT.body()
    return ErrorCode.EXPLANATION_FAILED.body()


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def cancel(gateway: Gateway, job: Job) -> None:
    """A queued job is canceled at once; a running one stops at its next progress report."""
    status = job.get_status(refresh=True)
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        job.meta["stage"] = Stage.CANCELED.value
        job.save_meta()
        gateway.redis.delete(*input_keys(job.id))
        mark_patient_data_deleted(gateway.redis)
        announce_end(gateway.redis, job.id)
    elif status == JobStatus.STARTED:
        gateway.redis.set(cancel_key(job.id), 1, ex=gateway.settings.timeout_slow_s)


def purge(gateway: Gateway, job: Job) -> None:
    """Erase an ended job: its RQ record and results history, files, inputs, idempotency entry and flags."""
    gateway.results.purge(job.id)
    keys = [*input_keys(job.id), cancel_key(job.id), observed_key(job.id)]
    if job.meta.get("idempotency"):
        keys.append(job.meta["idempotency"])
    gateway.redis.delete(*keys)
    mark_patient_data_deleted(gateway.redis)
    gateway.redis.zrem(owner_jobs_key(job.meta["owner"]), job.id)
    gateway.redis.zrem(CALLBACK_OUTBOX, job.id)
    Result.delete_all(job)
    job.delete(remove_from_queue=True, delete_dependents=False)


def read_file(gateway: Gateway, job: Job, name: str) -> bytes:
    """A result file of a finished explanation; the NPY heatmaps are made here from the stored float16 one,
    the PNGs on their first download (``service.rendering``).

    ``heatmap_model.npy`` is the heatmap at the resolution its explainer made it; ``heatmap.npy`` is
    that map enlarged to the input's resolution with the worker's own interpolation (bilinear).
    """
    request = parse_request(job.args[0])
    if not isinstance(request, ExplainJob) or job.get_status(refresh=False) != JobStatus.FINISHED:
        raise NotFound(f"job {job.id!r} has no result files (it is not a finished explanation)", code="unknown_file")
    listed = ExplainResult.model_validate(job.return_value()).files
    if name not in listed:
        raise NotFound(f"job {job.id!r} has no file {name[:100]!r}; files: {', '.join(listed)}", code="unknown_file")
    if is_rendered(name):
        return rendered_file(gateway, job, listed, name)
    prefix, _, base = name.rpartition("/")
    if base not in DERIVED_HEATMAPS:
        return gateway.results.get(job.id, name)
    heatmap = decode_heatmap(gateway.results.get(job.id, f"{prefix}/{RAW_HEATMAP}" if prefix else RAW_HEATMAP))
    if base == "heatmap.npy":
        heatmap = resize(heatmap, request.input.height, request.input.width)
    return npy_bytes(heatmap)


def dicom_files(gateway: Gateway, job: Job) -> list[str]:
    """The names of a finished explanation's DICOM results, in the order GET /v1/jobs/{id}/dicom/{n} numbers them."""
    request = parse_request(job.args[0])
    if not isinstance(request, ExplainJob) or job.get_status(refresh=False) != JobStatus.FINISHED:
        raise NotFound(f"job {job.id!r} has no DICOM results (it is not a finished explanation)", code="unknown_file")
    names = [n for n in ExplainResult.model_validate(job.return_value()).files if n.endswith(".dcm")]
    if not names:
        raise NotFound(f"job {job.id!r} has no DICOM results: submit it with outputs=dicom and a DICOM upload",
                       code="unknown_file")
    return names


def request_delivery(gateway: Gateway, job: Job, destination: str | None) -> Job:
    """Queue a (re-)sending of a finished job's DICOM results; to the job's own destination unless one is named."""
    dicom_files(gateway, job)  # 404 unless there is something to send
    request = parse_request(job.args[0])
    name = destination or request.destination
    if not name:
        raise InvalidInput("the job was submitted without a destination: name one (a key of "
                           "XAI_DICOMWEB_DESTINATIONS)", code="unknown_destination")
    if name not in gateway.settings.dicomweb_destinations:
        known = ", ".join(sorted(gateway.settings.dicomweb_destinations)) or "none"
        raise InvalidInput(f"destination {name[:64]!r} is not configured; configured: {known}",
                           code="unknown_destination")
    order = DeliverJob(job_id=new_job_id(), submitted_at=time.time(), of_job=job.id, destination=name)
    return enqueue(gateway, "fast", DELIVER_ENTRY, order, owner=job.meta["owner"])


def multipart_related(parts: list[bytes], media_type: str) -> tuple[bytes, str]:
    """``parts`` as one multipart/related body (PS3.18 8.6.1.2) and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode() + part + b"\r\n"
                    for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{media_type}"; boundary={boundary}'
