"""Job status, result files and cancellation. A caller sees only the jobs its API key submitted."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.deps import ExplainCaller, GatewayDep
from service.jobs import cancel, fail_if_abandoned, fetch_owned, public_status, read_file

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {".png": "image/png", ".npy": "application/octet-stream", ".json": "application/json"}


@router.get("/{job_id}")
def get_job(job_id: str, request: Request, gateway: GatewayDep, caller: ExplainCaller) -> dict:
    job = fail_if_abandoned(gateway, fetch_owned(gateway, job_id, caller))
    body = public_status(job, str(request.base_url))
    _observe_end(request, gateway, body)
    return body


@router.delete("/{job_id}", status_code=202)
def cancel_job(job_id: str, request: Request, gateway: GatewayDep, caller: ExplainCaller) -> dict:
    """Cancel: a queued job at once, a running one at its next progress report (poll to see it end)."""
    job = fetch_owned(gateway, job_id, caller)
    cancel(gateway, job)
    return public_status(job, str(request.base_url))


@router.get("/{job_id}/{name:path}")
def get_file(job_id: str, name: str, gateway: GatewayDep, caller: ExplainCaller) -> Response:
    """A result file: heatmap.png, overlay.png, heatmap.npy (or <method>/... for a comparison job)."""
    fetch_owned(gateway, job_id, caller)
    blob = read_file(gateway.redis, job_id, name)
    suffix = name[name.rfind(".") :] if "." in name else ""
    headers = {"Content-Disposition": f'inline; filename="{name.replace("/", "_")}"'}
    return Response(blob, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=headers)


def _observe_end(request: Request, gateway: GatewayDep, body: dict) -> None:
    """Count each job's end once (the first time any poll sees it), with its latency when it finished."""
    if body["status"] not in ("finished", "failed", "canceled"):
        return
    if not gateway.redis.set(f"xai:observed:{body['job_id']}", 1, nx=True, ex=gateway.settings.result_ttl_s):
        return
    telemetry = request.app.state.telemetry
    methods = body["request"].get("methods") or [body["kind"]]
    for method in methods:
        telemetry.outcomes.labels(method, body["status"]).inc()
    if body["status"] == "finished" and body["result"]:
        timing = body["result"]["metrics"].get("timing", {})
        seconds = (timing.get("queue_ms", 0) + timing.get("load_ms", 0) + timing.get("compute_ms", 0)) / 1000
        for method in methods:
            telemetry.latency.labels(method).observe(seconds)
