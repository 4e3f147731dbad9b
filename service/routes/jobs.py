"""Job status, result files, cancellation and erasure. A caller sees only the jobs its API key submitted."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from rq.job import Job

from service.deps import Caller, ExplainCaller, FileReader, Gateway, GatewayDep
from service.jobs import (
    TERMINAL,
    cancel,
    dicom_files,
    fail_if_abandoned,
    fetch_owned,
    has_ended,
    list_owned,
    multipart_related,
    public_status,
    purge,
    read_file,
    request_delivery,
    status_url,
)
from service.schemas import Accepted, JobList, JobStatus, error_responses
from xai.errors import NotFound
from xai.jobs import observed_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {".png": "image/png", ".npy": "application/octet-stream", ".json": "application/json",
               ".dcm": "application/dicom"}
# A finished job's files never change, so a browser may reuse them; "private": they derive from a patient's
# image and no shared cache may keep them.
FILE_CACHE_CONTROL = "private, max-age=3600, immutable"
MAX_WAIT_S = 60  # below the idle timeouts of common proxies and load balancers


@router.get("", response_model=JobList, response_model_exclude_unset=True,
            responses=error_responses(401, 422, 500, 503))
def list_jobs(
    request: Request, gateway: GatewayDep, caller: Caller,
    status: Annotated[Literal["queued", "started", "finished", "failed", "canceled"] | None,
                      Query(description="only jobs in this state")] = None,
    model_id: Annotated[str | None, Query(max_length=64, description="only jobs of this model")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")] = None,
) -> JobList:
    """The caller's jobs, newest first, each as GET /v1/jobs/{id} shows it; follow next_cursor for more."""
    page, next_cursor = list_owned(gateway, caller, limit=limit, cursor=cursor, status=status, model_id=model_id)
    base_url = str(request.base_url)
    return JobList(jobs=[public_status(job, base_url, gateway.signer) for job in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobStatus, response_model_exclude_unset=True,
            responses=error_responses(401, 404, 422, 500, 503))
async def get_job(
    job_id: str, request: Request, gateway: GatewayDep, caller: Caller,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the job to end before "
                                 "answering (long polling): the answer comes as soon as it ends; 0 answers at once")]
    = 0,
) -> Response:
    """A job's status, progress and stage; when finished its metrics, timing and signed file URLs."""

    def look() -> tuple[Response, bool]:
        """The job's answer and whether it has ended: one thread hop, Redis and serialisation included."""
        job = fail_if_abandoned(gateway, fetch_owned(gateway, job_id, caller))
        return _answer(request, gateway, job), has_ended(job)

    async def looked() -> tuple[Response, bool]:
        return await run_in_threadpool(look)

    return await request.app.state.endings.wait_until_ended(job_id, wait, looked) if wait else (await looked())[0]


def _answer(request: Request, gateway: Gateway, job: Job) -> Response:
    """The job's status as JSON. Serialised here, once: FastAPI would validate the model again first."""
    body = public_status(job, str(request.base_url), gateway.signer)
    _observe_end(request, gateway, body)
    return Response(body.model_dump_json(exclude_unset=True), media_type="application/json")


@router.delete("/{job_id}", status_code=202, response_model=JobStatus, response_model_exclude_unset=True,
               responses={204: {"description": "The ended job was erased"}}
               | error_responses(401, 404, 422, 500, 503))
def delete_job(job_id: str, request: Request, gateway: GatewayDep, caller: Caller) -> Response:
    """An ended job is erased at once (204; then 404); a queued one is canceled at once and a running
    one at its next progress report (202 with its status: delete it again once it has ended)."""
    job = fail_if_abandoned(gateway, fetch_owned(gateway, job_id, caller))
    if public_status(job, str(request.base_url)).status in TERMINAL:
        purge(gateway, job)
        return Response(status_code=204)
    cancel(gateway, job)
    body = public_status(job, str(request.base_url)).model_dump(mode="json", exclude_unset=True)
    return JSONResponse(body, status_code=202)


DICOM_CONTENT = {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/{job_id}/dicom", response_class=Response,
            responses={200: {"content": DICOM_CONTENT, "description": "Every DICOM result, as multipart/related; "
                             'type="application/dicom"'}} | error_responses(401, 403, 404, 422, 500, 503))
def get_dicom(job_id: str, gateway: GatewayDep, caller: Caller) -> Response:
    """The job's DICOM results (Secondary Capture, Parametric Map, Structured Report per method), as WADO-RS
    answers a study: one multipart/related body of application/dicom parts, in result.files order."""
    job = fetch_owned(gateway, job_id, caller)
    body, content_type = multipart_related([read_file(gateway, job, n) for n in dicom_files(gateway, job)],
                                           "application/dicom")
    return Response(body, media_type=content_type, headers={"Cache-Control": FILE_CACHE_CONTROL})


@router.get("/{job_id}/dicom/{number}", response_class=Response,
            responses={200: {"content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "One DICOM result (a Part 10 file)"}}
            | error_responses(401, 403, 404, 422, 500, 503))
def get_dicom_instance(job_id: str, number: int, gateway: GatewayDep, caller: Caller) -> Response:
    """The job's n-th DICOM result (1-based, in result.files order)."""
    job = fetch_owned(gateway, job_id, caller)
    names = dicom_files(gateway, job)
    if not 1 <= number <= len(names):
        raise NotFound(f"job {job_id!r} has {len(names)} DICOM result(s), numbered 1 to {len(names)}",
                       code="unknown_file")
    name = names[number - 1]
    return Response(read_file(gateway, job, name), media_type="application/dicom",
                    headers={"Cache-Control": FILE_CACHE_CONTROL,
                             "Content-Disposition": f'attachment; filename="{name.replace("/", "_")}"'})


class DeliveryOrder(BaseModel):
    destination: str | None = Field(None, max_length=64, description="a name of XAI_DICOMWEB_DESTINATIONS; "
                                    "default: the one the job was submitted with")


@router.post("/{job_id}/deliveries", status_code=202, response_model=Accepted,
             responses=error_responses(401, 404, 422, 429, 500, 503))
def create_delivery(job_id: str, request: Request, gateway: GatewayDep, caller: ExplainCaller,
                    order: DeliveryOrder | None = None) -> JSONResponse:
    """Send a finished job's DICOM results (again): to its own destination, or to the one named. The sending is
    a job of its own; the explained job's ``delivery`` shows how it went."""
    job = fetch_owned(gateway, job_id, caller)
    request_delivery(gateway, job, order.destination if order else None)
    return JSONResponse({"job_id": job.id, "status_url": status_url(str(request.base_url), job.id)}, status_code=202)


FILE_CONTENT = {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/{job_id}/{name:path}", response_class=Response,
            responses={200: {"content": FILE_CONTENT, "description": "The file (PNG or NumPy .npy)"},
                       304: {"description": "Not modified (If-None-Match matched its ETag)"}}
            | error_responses(401, 403, 404, 422, 500, 503))
def get_file(job_id: str, name: str, request: Request, gateway: GatewayDep, caller: FileReader) -> Response:
    """A result file: heatmap.png, overlay.png, heatmap.npy, heatmap_model.npy (or <method>/... for a comparison).
    Read with the owner's key, or with no key through the signed URL the job's result.files lists."""
    job = fetch_owned(gateway, job_id, caller)
    blob = read_file(gateway, job, name)
    etag = '"' + hashlib.sha256(blob).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    suffix = name[name.rfind(".") :] if "." in name else ""
    headers["Content-Disposition"] = f'inline; filename="{name.replace("/", "_")}"'
    return Response(blob, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=headers)


def _observe_end(request: Request, gateway: GatewayDep, body: JobStatus) -> None:
    """Count each job's end once (the first time any poll sees it), with its latency when it finished."""
    if body.status not in TERMINAL:
        return
    if not gateway.redis.set(observed_key(body.job_id), 1, nx=True, ex=gateway.settings.result_ttl_s):
        return
    telemetry = request.app.state.telemetry
    methods = body.request.methods or [body.kind]
    for method in methods:
        telemetry.outcomes.labels(method, body.status).inc()
    timing = body.result.timing if body.result else None
    if body.status == "finished" and timing:
        for method in methods:
            telemetry.latency.labels(method).observe(timing.total_ms / 1000)
