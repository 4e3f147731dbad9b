"""GET /v1/jobs/{id}/events: a job's progress as Server-Sent Events, until it ends.

Workers write progress into the job's RQ meta; the stream reads it back every ``POLL_S`` and sends an
event only when something a caller sees changed, so a quiet job costs one Redis read per poll and no
traffic (sse-starlette's ping comment keeps proxies from closing an idle stream). Polling the meta,
rather than a pub/sub channel the workers would have to publish on, keeps the workers unchanged and
loses nothing: a stream opened late starts from the job's current state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Request
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.deps import Caller, Gateway, GatewayDep
from service.jobs import TERMINAL, fail_if_abandoned, fetch_owned, public_status
from xai.errors import ErrorCode

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

POLL_S = 0.25
PING_S = 15
PROGRESS_FIELDS = ("status", "progress", "stage", "note")


@router.get("/{job_id}/events", response_class=EventSourceResponse)
def job_events(job_id: str, request: Request, gateway: GatewayDep, caller: Caller) -> EventSourceResponse:
    """``progress`` events (status, progress, stage, note) on every change, then one ``status`` event with
    the job's full status (as GET /v1/jobs/{id} answers it), then the stream closes. A job deleted while
    streamed ends the stream with an ``error`` event (unknown_job)."""
    job = fetch_owned(gateway, job_id, caller)  # an unknown or foreign job is a 404 before any stream starts
    return EventSourceResponse(_events(gateway, job, str(request.base_url)), ping=PING_S)


async def _events(gateway: Gateway, job: Job, base_url: str) -> AsyncIterator[ServerSentEvent]:
    last: dict | None = None
    while True:
        try:
            body = await to_thread.run_sync(_current, gateway, job, base_url)
        except NoSuchJobError:
            yield ServerSentEvent(json.dumps({"error": ErrorCode.UNKNOWN_JOB.body()}), event="error")
            return
        progress = {"job_id": job.id} | {name: body[name] for name in PROGRESS_FIELDS}
        if progress != last:
            yield ServerSentEvent(json.dumps(progress), event="progress")
            last = progress
        if body["status"] in TERMINAL:
            yield ServerSentEvent(json.dumps(body), event="status")
            return
        await asyncio.sleep(POLL_S)


def _current(gateway: Gateway, job: Job, base_url: str) -> dict:
    job.refresh()  # NoSuchJobError once the job is deleted or expired
    return public_status(fail_if_abandoned(gateway, job), base_url, gateway.signer)
