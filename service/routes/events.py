"""GET /v1/jobs/{id}/events: a job's progress as Server-Sent Events, until it ends.

Workers write progress into the job's RQ meta; the stream reads it back every ``POLL_S`` and sends an
event only when something a caller sees changed, so a quiet job costs one Redis read per poll and no
traffic (sse-starlette's ping comment keeps proxies from closing an idle stream). The job's end does
not wait for the next poll: the workers announce it (service.endings) and the stream reads the final
status at once. Polling the meta for progress loses nothing: a stream opened late starts from the
job's current state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Request
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.deps import Caller, Gateway, GatewayDep
from service.endings import JobEndings, Watch
from service.jobs import TERMINAL, fail_if_abandoned, fetch_owned, public_status
from service.schemas import JobStatus, error_responses
from xai.errors import ErrorCode

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

POLL_S = 0.25
PING_S = 15
PROGRESS_FIELDS = ("status", "progress", "stage", "note")


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "progress events, then one status event (a JobStatus)"}}
            | error_responses(401, 404, 422, 500, 503))
def job_events(job_id: str, request: Request, gateway: GatewayDep, caller: Caller) -> EventSourceResponse:
    """``progress`` events (status, progress, stage, note) on every change, then one ``status`` event with
    the job's full status (as GET /v1/jobs/{id} answers it), then the stream closes. A job deleted while
    streamed ends the stream with an ``error`` event (unknown_job)."""
    job = fetch_owned(gateway, job_id, caller)  # an unknown or foreign job is a 404 before any stream starts
    return EventSourceResponse(_events(gateway, request.app.state.endings, job, str(request.base_url)), ping=PING_S)


async def _events(gateway: Gateway, endings: JobEndings, job: Job, base_url: str) -> AsyncIterator[ServerSentEvent]:
    with endings.watching(job.id) as watch:  # the job's end is sent as soon as it is announced
        async for event in _changes(gateway, watch, job, base_url):
            yield event


async def _changes(gateway: Gateway, watch: Watch, job: Job, base_url: str) -> AsyncIterator[ServerSentEvent]:
    last: dict | None = None
    while True:
        try:
            body = await to_thread.run_sync(_current, gateway, job, base_url)
        except NoSuchJobError:
            yield ServerSentEvent(json.dumps({"error": ErrorCode.UNKNOWN_JOB.body()}), event="error")
            return
        progress = {"job_id": job.id} | body.model_dump(mode="json", include=set(PROGRESS_FIELDS))
        if progress != last:
            yield ServerSentEvent(json.dumps(progress), event="progress")
            last = progress
        if body.status in TERMINAL:
            yield ServerSentEvent(body.model_dump_json(exclude_unset=True), event="status")
            return
        await watch.pause(POLL_S)


def _current(gateway: Gateway, job: Job, base_url: str) -> JobStatus:
    job.refresh()  # NoSuchJobError once the job is deleted or expired
    return public_status(fail_if_abandoned(gateway, job), base_url, gateway.signer)
