"""Job status, result files, cancellation and erasure. A caller sees only the jobs its API key submitted."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.deps import Caller, GatewayDep
from service.jobs import TERMINAL, cancel, fail_if_abandoned, fetch_owned, public_status, purge, read_file
from xai.jobs import observed_key

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {".png": "image/png", ".npy": "application/octet-stream", ".json": "application/json"}


@router.get("/{job_id}")
def get_job(job_id: str, request: Request, gateway: GatewayDep, caller: Caller) -> dict:
    job = fail_if_abandoned(gateway, fetch_owned(gateway, job_id, caller))
    body = public_status(job, str(request.base_url))
    _observe_end(request, gateway, body)
    return body


@router.delete("/{job_id}", status_code=202)
def delete_job(job_id: str, request: Request, gateway: GatewayDep, caller: Caller) -> Response:
    """An ended job is erased at once (204; then 404); a queued one is canceled at once and a running
    one at its next progress report (202 with its status: delete it again once it has ended)."""
    job = fail_if_abandoned(gateway, fetch_owned(gateway, job_id, caller))
    status = public_status(job, str(request.base_url))
    if status["status"] in TERMINAL:
        purge(gateway, job)
        return Response(status_code=204)
    cancel(gateway, job)
    return JSONResponse(public_status(job, str(request.base_url)), status_code=202)


@router.get("/{job_id}/{name:path}")
def get_file(job_id: str, name: str, gateway: GatewayDep, caller: Caller) -> Response:
    """A result file: heatmap.png, overlay.png, heatmap.npy, heatmap_model.npy (or <method>/... for a comparison)."""
    job = fetch_owned(gateway, job_id, caller)
    blob = read_file(gateway, job, name)
    suffix = name[name.rfind(".") :] if "." in name else ""
    headers = {"Content-Disposition": f'inline; filename="{name.replace("/", "_")}"'}
    return Response(blob, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=headers)


def _observe_end(request: Request, gateway: GatewayDep, body: dict) -> None:
    """Count each job's end once (the first time any poll sees it), with its latency when it finished."""
    if body["status"] not in TERMINAL:
        return
    if not gateway.redis.set(observed_key(body["job_id"]), 1, nx=True, ex=gateway.settings.result_ttl_s):
        return
    telemetry = request.app.state.telemetry
    methods = body["request"].get("methods") or [body["kind"]]
    for method in methods:
        telemetry.outcomes.labels(method, body["status"]).inc()
    timing = (body["result"] or {}).get("timing")
    if body["status"] == "finished" and timing:
        seconds = sum(timing[k] for k in ("queue_ms", "load_ms", "explain_ms", "score_ms", "render_ms", "store_ms"))
        for method in methods:
            telemetry.latency.labels(method).observe(seconds / 1000)
