"""Claiming compatible waiting jobs as one unit of work, inside RQ's own bookkeeping.

RQ hands a worker one job (the leader). Before running it, the worker takes up to ``limit`` more
waiting jobs of the same batch key off the same queue. Each is removed from the queue list and
started the way RQ starts one (an ``Execution`` in the queue's StartedJobRegistry, status
``started``, a heartbeat) in one transaction: of two workers racing for a job exactly one gets it,
no job is computed twice, a kill between the two steps cannot strand a job, and if this worker
dies mid-batch RQ's abandoned-job cleanup re-queues or fails every one of them, exactly as it
does the leader. When the batch ends,
each claim is closed with RQ's own success or failure records (``Result``, finished or failed
registry, TTLs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now

from xai.jobs import EXPLAIN_ENTRY, ExplainJob, announce_end

log = logging.getLogger("xai.worker")

_POLL_S = 0.005
_TAKE_ATTEMPTS = 8


@dataclass
class Claim:
    """A waiting job this worker took off the queue and started, until it is closed."""

    job: Job
    execution: Execution
    request: ExplainJob
    closed: bool = field(default=False)


def batch_key_of(job: Job) -> str | None:
    if job.func_name != EXPLAIN_ENTRY or not job.args:
        return None
    return ExplainJob.model_validate(job.args[0]).batch_key()


def claim_compatible(
    queue: Queue, key: str, limit: int, *, wait_ms: int, worker_name: str, heartbeat_ttl: int
) -> list[Claim]:
    """Take up to ``limit`` waiting jobs with batch key ``key`` from ``queue``, waiting up to ``wait_ms`` for them."""
    claims: list[Claim] = []
    deadline = time.monotonic() + wait_ms / 1000
    while len(claims) < limit:
        for job in _waiting(queue, 4 * limit):
            if len(claims) == limit:
                break
            if batch_key_of(job) == key and (taken := _take(queue, job, worker_name, heartbeat_ttl)):
                claims.append(taken)
        if len(claims) == limit or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    return claims


def heartbeat(claims: list[Claim], ttl: int, connection: Redis) -> None:
    """Keep the claimed jobs' executions alive in the StartedJobRegistry (as RQ does for the leader)."""
    with connection.pipeline() as pipe:
        for claim in claims:
            if not claim.closed:
                claim.execution.heartbeat(claim.job.started_job_registry, ttl, pipeline=pipe)
                claim.job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
        pipe.execute()


def still_held(job: Job, execution: Execution, ttl: int) -> bool:
    """Renew ``execution``'s lease if it is still in the started registry; False once it is not.

    A worker cut off from Redis longer than ``ttl`` (a Redis restart) finds on its return that RQ's
    abandoned-job cleanup took the job back and re-queued it: another worker computes it, so this
    worker's outcome must be dropped or the job is computed twice. The renewal (ZADD XX) is what
    makes the answer hold: cleanup cannot take the job back for ``ttl`` seconds after it.
    """
    registry = job.started_job_registry
    with job.connection.pipeline() as pipe:
        registry.add_execution(execution, pipe, ttl=ttl, xx=True)
        pipe.zscore(registry.key, execution.composite_key)
        _, score = pipe.execute()
    return score is not None


def finish(claim: Claim, result: dict[str, Any], worker_name: str, ttl: int) -> None:
    """Close a claim as finished with ``result``, the job's return value, unless the job was taken back."""
    if _taken_back(claim, ttl):
        return
    job = claim.job
    job._result = result
    job._status = JobStatus.FINISHED
    job.ended_at = now()
    result_ttl = job.get_result_ttl(500)
    with job.connection.pipeline() as pipe:
        job._handle_success(result_ttl, pipeline=pipe, worker_name=worker_name, execution_id=claim.execution.id,
                            execution_started_at=claim.execution.created_at, execution_ended_at=job.ended_at)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        claim.execution.delete(job=job, pipeline=pipe)
        announce_end(pipe, job.id)
        pipe.execute()
    claim.closed = True


def fail(claim: Claim, reason: str, worker_name: str, ttl: int) -> None:
    """Close a claim as failed; ``reason`` is the exception text RQ keeps (the caller's error is in meta)."""
    if _taken_back(claim, ttl):
        return
    job = claim.job
    job.ended_at = now()
    with job.connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(reason, pipeline=pipe, worker_name=worker_name, execution_id=claim.execution.id,
                            execution_started_at=claim.execution.created_at, execution_ended_at=job.ended_at)
        claim.execution.delete(job=job, pipeline=pipe)
        announce_end(pipe, job.id)
        pipe.execute()
    claim.closed = True


def _taken_back(claim: Claim, ttl: int) -> bool:
    """True (and the claim closed with nothing written) when RQ re-queued the job while this worker was away."""
    if still_held(claim.job, claim.execution, ttl):
        return False
    log.warning("job %s was re-queued while this worker was cut off from Redis; its retry runs it", claim.job.id)
    claim.closed = True
    return True


def _waiting(queue: Queue, window: int) -> list[Job]:
    ids = queue.get_job_ids(0, window - 1)
    return [job for job in Job.fetch_many(ids, connection=queue.connection, serializer=JSONSerializer) if job]


def _take(queue: Queue, job: Job, worker_name: str, heartbeat_ttl: int) -> Claim | None:
    """Remove ``job`` from the queue and start it in one transaction, or leave it queued.

    Both happen or neither: a worker killed between a bare LREM and the start would strand the job,
    out of the queue yet in no registry, never run and never failed. WATCH makes the transaction fail
    when the queue changed since the job was seen there; then it is looked for again.
    """
    for _ in range(_TAKE_ATTEMPTS):
        with queue.connection.pipeline() as pipe:
            try:
                pipe.watch(queue.key)
                if pipe.lpos(queue.key, job.id) is None:
                    return None  # another worker took it
                pipe.multi()
                pipe.lrem(queue.key, 1, job.id)
                execution = Execution.create(job, heartbeat_ttl, pipeline=pipe, worker_name=worker_name)
                job.prepare_for_execution(worker_name, pipeline=pipe)
                pipe.execute()
                return Claim(job, execution, ExplainJob.model_validate(job.args[0]))
            except WatchError:
                continue
    return None  # a busy queue kept changing: the job stays queued for the next worker
