"""The FastAPI gateway: ingests, validates, enqueues and serves results. It never imports torch."""

from __future__ import annotations

import ipaddress
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from service.callbacks import CallbackCourier
from service.deps import Gateway
from service.endings import JobEndings
from service.openapi import openapi_of
from service.routes import dicomweb, events, explanations, jobs, methods, models, system, viewer
from service.telemetry import Telemetry
from xai.errors import ErrorCode, Overloaded, ServiceError
from xai.settings import Settings, get_settings

log = logging.getLogger("xai.gateway")
RETRY_AFTER_S = 5


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without API keys: patient images must not be open to a network."""
    if not settings.api_keys and not is_loopback(settings.host):
        raise SystemExit(
            f"refusing to listen on {settings.host}: no API keys are configured. Set XAI_API_KEYS "
            '(e.g. \'[{"name": "pacs", "key_sha256": "<sha256 of the key>", "scopes": ["explain"]}]\') '
            "or bind to 127.0.0.1."
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_exposure(settings)
    # Starlette spools a form's file past 1 MiB to a temporary file on disk, writing each 64 KiB chunk on the
    # thread pool, and the route then reads it all back: a 17 MB DICOM spent about 30 ms there. Uploads are
    # bounded by max_upload_bytes and read into memory whole anyway, so they stay in memory (and patient
    # pixels never touch the disk). Starlette reads this limit from the class only.
    MultiPartParser.spool_max_size = settings.max_upload_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gateway = Gateway.open(settings)
        app.state.gateway = gateway
        app.state.telemetry = Telemetry(gateway.queues)
        courier = CallbackCourier(gateway).start()
        app.state.endings = JobEndings(gateway.redis).start()
        yield
        app.state.endings.stop()
        courier.stop()
        gateway.redis.close()

    app = FastAPI(
        title="Medical image classifier explanation service",
        version="0.1.0",
        description="Submit an image or DICOM instance and a registered classifier; poll the job for a heatmap "
        "and metrics. Methods: see GET /v1/methods.",
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        # Operation ids are the route functions' names (get_job, create_explanation): stable, and what a
        # generated client's methods are called.
        generate_unique_id_function=lambda route: route.name,
    )
    app.openapi = lambda: openapi_of(app)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match", "Last-Event-ID"],
            expose_headers=["ETag", "Retry-After", "Content-Disposition"],
            max_age=600,
        )
    # events before jobs: jobs' /{job_id}/{name:path} (result files) would otherwise take /{job_id}/events.
    # explanations.dicom_body before explanations.router: it takes only bare application/dicom bodies.
    for router in (system.router, methods.router, models.router, explanations.dicom_body, explanations.router,
                   dicomweb.router, events.router, jobs.router, viewer.router):
        app.include_router(router)
    return app


def _error_response(request: Request, status: int, code: str, message: str) -> JSONResponse:
    telemetry = getattr(request.app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.errors.labels(code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        response = _error_response(request, error.http_status, error.code, error.message)
        if isinstance(error, Overloaded):
            response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # Name the fields at fault without echoing the submitted values (they may be patient data).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query', 'path', 'form'))}: {e['msg']}"
            for e in error.errors()
        )
        return _error_response(request, 422, ErrorCode.INVALID_REQUEST, problems or "the request is malformed")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}
        return _error_response(request, error.status_code, codes.get(error.status_code, ErrorCode.HTTP_ERROR),
                               str(error.detail))

    @app.exception_handler(RedisError)
    async def redis_unreachable(request: Request, error: RedisError) -> JSONResponse:
        # Nothing was accepted: the caller may retry the same request (with its Idempotency-Key) later.
        log.warning("Redis unreachable on %s %s: %s", request.method, request.url.path, type(error).__name__)
        response = _error_response(request, 503, ErrorCode.SERVICE_UNAVAILABLE,
                                   "the job queue is unreachable; retry in a few seconds")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(request, 500, ErrorCode.INTERNAL_ERROR, ErrorCode.INTERNAL_ERROR.message)
