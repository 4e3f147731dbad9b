"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from rq import Queue
from rq.worker import Worker

from service.deps import GatewayDep
from service.schemas import Health, Readiness

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> Health:
    """The gateway process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Redis unreachable, or waiting jobs with no worker"}})
def readyz(gateway: GatewayDep) -> JSONResponse:
    """Ready when Redis answers and every queue holding jobs has at least one live worker."""
    try:
        gateway.redis.ping()
        queues = {
            name: {"waiting": queue.count, "workers": _live_workers(queue, gateway.settings.worker_ttl_s)}
            for name, queue in gateway.queues.items()
        }
    except RedisError as error:
        body = {"status": "not_ready", "redis": f"unreachable: {type(error).__name__}"}
        return JSONResponse(body, status_code=503)
    stalled = [name for name, q in queues.items() if q["waiting"] and not q["workers"]]
    body = {"status": "not_ready" if stalled else "ready", "redis": "ok", "queues": queues}
    if stalled:
        body["reason"] = f"no live worker on queue(s) with waiting jobs: {', '.join(stalled)}"
    return JSONResponse(body, status_code=503 if stalled else 200)


def _live_workers(queue: Queue, ttl_s: int) -> int:
    """Workers on the queue heard from within ``ttl_s``. A killed worker's record outlives it by RQ's own
    expiry (its TTL plus 60 s), so counting records would call a queue served that no one serves."""
    oldest = datetime.now(UTC) - timedelta(seconds=ttl_s)
    return sum(1 for worker in Worker.all(queue=queue)
               if worker.last_heartbeat and worker.last_heartbeat.replace(tzinfo=UTC) >= oldest)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
