"""Claiming compatible waiting jobs as one unit of work, inside RQ's own bookkeeping.

RQ hands a worker one job (the leader). Before running it, the worker takes up to ``limit`` more
waiting jobs of the same batch key off the same queue: ``LREM`` removes a job id from the queue
list atomically, so of two workers racing for a job exactly one gets it, and no job is computed
twice. Each claimed job is then started the way RQ starts one (an ``Execution`` in the queue's
StartedJobRegistry, status ``started``, a heartbeat), so that if this worker dies mid-batch RQ's
abandoned-job cleanup fails every one of them, exactly as it fails the leader. When the batch ends,
each claim is closed with RQ's own success or failure records (``Result``, finished or failed
registry, TTLs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now

from xai.jobs import EXPLAIN_ENTRY, ExplainJob

_POLL_S = 0.005


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
            if batch_key_of(job) == key and queue.connection.lrem(queue.key, 1, job.id) == 1:
                claims.append(_start(job, worker_name, heartbeat_ttl))
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


def finish(claim: Claim, result: dict[str, Any], worker_name: str) -> None:
    """Close a claim as finished with ``result``, the job's return value."""
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
        pipe.execute()
    claim.closed = True


def fail(claim: Claim, reason: str, worker_name: str) -> None:
    """Close a claim as failed; ``reason`` is the exception text RQ keeps (the caller's error is in meta)."""
    job = claim.job
    job.ended_at = now()
    with job.connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(reason, pipeline=pipe, worker_name=worker_name, execution_id=claim.execution.id,
                            execution_started_at=claim.execution.created_at, execution_ended_at=job.ended_at)
        claim.execution.delete(job=job, pipeline=pipe)
        pipe.execute()
    claim.closed = True


def _waiting(queue: Queue, window: int) -> list[Job]:
    ids = queue.get_job_ids(0, window - 1)
    return [job for job in Job.fetch_many(ids, connection=queue.connection, serializer=JSONSerializer) if job]


def _start(job: Job, worker_name: str, heartbeat_ttl: int) -> Claim:
    with job.connection.pipeline() as pipe:
        execution = Execution.create(job, heartbeat_ttl, pipeline=pipe, worker_name=worker_name)
        job.prepare_for_execution(worker_name, pipeline=pipe)
        pipe.execute()
    return Claim(job, execution, ExplainJob.model_validate(job.args[0]))
