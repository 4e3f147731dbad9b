"""POST /v1/explanations: decode and validate the upload, store it, enqueue one job."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from models.manifest import ModelManifest
from service.admission import admit
from service.callbacks import callback_request
from service.deps import ExplainCaller, GatewayDep
from service.schemas import Accepted, error_responses
from service.ingest import ingest_upload, job_inputs, limits_from_settings
from service.jobs import claim_idempotency, enqueue, new_job_id, status_url
from xai import jsontext
from xai.errors import Conflict, InvalidInput, PayloadTooLarge
from xai.imaging import decode_annotation
from xai.jobs import EXPLAIN_ENTRY, QUALITY_METRICS, ExplainJob, InputInfo
from xai.methods import get_method

router = APIRouter(prefix="/v1/explanations", tags=["explanations"])

QUEUE_ORDER = ("fast", "slow")  # a request runs on the slowest queue any of its methods needs
_DEFAULTS = ExplainJob.model_fields  # the form's defaults are the contract's


@router.post("", status_code=202, response_model=Accepted,
             responses=error_responses(401, 403, 404, 409, 413, 415, 422, 429, 500, 503))
async def create_explanation(
    request: Request,
    gateway: GatewayDep,
    caller: ExplainCaller,
    file: Annotated[UploadFile, File(description="PNG, JPEG, TIFF (8/16-bit) or DICOM")],
    model_id: Annotated[str, Form()],
    method: Annotated[str, Form(description="A method name, or several comma-separated to compare them")],
    target: Annotated[str | None, Form(description="Class index or name; default: the predicted class")] = None,
    params: Annotated[str | None, Form(description="JSON object of method parameters")] = None,
    annotation: Annotated[UploadFile | None, File(description="Mask image or JSON boxes [[x, y, w, h], ...]")] = None,
    frame: Annotated[int | None, Form(ge=0, description="Frame of a multi-frame DICOM (default 0)")] = None,
    model_version: Annotated[int | None, Form(ge=1)] = None,
    quality: Annotated[str | None, Form(description="Extra quality metrics, comma-separated: "
                                        + ", ".join(QUALITY_METRICS))] = None,
    patch_mode: Annotated[bool, Form(description="Explain a large image tile by tile at its own resolution")] =
        _DEFAULTS["patch_mode"].default,
    patch_overlap: Annotated[float, Form(ge=0.0, le=0.9, description="Tile overlap, a fraction of the tile")] =
        _DEFAULTS["patch_overlap"].default,
    callback_url: Annotated[str | None, Form(max_length=2000, description="Where to POST the job's final status, "
                                             "signed (a host in XAI_CALLBACK_HOSTS)")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    settings = gateway.settings
    callback = callback_request(callback_url, caller, settings, str(request.base_url))
    manifest = gateway.store.get(model_id, model_version)
    methods = _methods(method, manifest)
    queue = max((get_method(m).queue for m in methods), key=QUEUE_ORDER.index)
    admit(gateway, caller, queue)
    method_params = _params(params, methods)
    target_index = _target(target, manifest)
    quality_metrics = _quality_metrics(quality)
    limits = limits_from_settings(settings)
    data = await _read_limited(file, settings.max_upload_bytes)
    decoded = await run_in_threadpool(ingest_upload, data, frame=frame, limits=limits)
    mask = None
    if annotation is not None:
        annotation_bytes = await _read_limited(annotation, settings.max_upload_bytes)
        mask = await run_in_threadpool(
            decode_annotation, annotation_bytes, shape=decoded.pixels.shape[:2], limits=limits
        )
    # Claimed only once the request is known to be valid, so a refused request never holds a key.
    job_id = new_job_id()
    existing = claim_idempotency(gateway, caller.name, idempotency_key, job_id)
    if existing:
        return _accepted(request, existing)
    height, width = decoded.pixels.shape[:2]
    job = ExplainJob(
        job_id=job_id, submitted_at=time.time(), model_id=manifest.id, model_version=manifest.version,
        methods=methods, params=method_params, target=target_index, quality=quality_metrics,
        patch_mode=patch_mode, patch_overlap=patch_overlap,
        input=InputInfo(height=height, width=width, channels=3 if decoded.pixels.ndim == 3 else 1,
                        annotation=mask is not None, details=decoded.meta),
    )
    inputs = await run_in_threadpool(
        job_inputs, job_id, decoded.pixels, manifest.input, display_max_side=settings.display_max_side,
        keep_native=patch_mode, annotation=mask,
    )
    enqueue(gateway, queue, EXPLAIN_ENTRY, job, owner=caller.name, inputs=inputs, idempotency=idempotency_key,
            callback=callback)
    for name in methods:
        request.app.state.telemetry.submitted.labels("explanation", name).inc()
    return _accepted(request, job_id)


def _accepted(request: Request, job_id: str) -> JSONResponse:
    return JSONResponse({"job_id": job_id, "status_url": status_url(str(request.base_url), job_id)}, status_code=202)


def _methods(field: str, manifest: ModelManifest) -> list[str]:
    names = [name.strip() for name in field.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise InvalidInput("give one method, or several distinct ones separated by commas", code="invalid_request")
    ready = manifest.available_methods()
    for name in names:
        spec = get_method(name)
        if name not in ready:
            why = "has no trained artifacts for it (train them: POST /v1/models/{id}/train/" + name + ")" \
                if spec.needs_artifacts else "names no target layer in its manifest"
            raise Conflict(f"model {manifest.key} {why}", code="method_unavailable")
    if manifest.status != "ready":
        raise Conflict(f"model {manifest.key} is {manifest.status}: {manifest.status_reason or 'being validated'}",
                       code="model_not_ready")
    return names


def _params(field: str | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Validate ``params`` against each method's spec. Several methods take {"method": {...}, ...}."""
    given = jsontext.loads(field, what="params", code="invalid_params") if field else {}
    if not isinstance(given, dict):
        raise InvalidInput("params must be a JSON object", code="invalid_params")
    if len(methods) == 1:
        given = {methods[0]: given}
    elif set(given) - set(methods):
        raise InvalidInput("with several methods, params maps method names to their parameters", code="invalid_params")
    return {name: get_method(name).resolve_params(given.get(name, {})) for name in methods}


def _quality_metrics(field: str | None) -> list[str]:
    names = [name.strip() for name in (field or "").split(",") if name.strip()]
    unknown = sorted(set(names) - set(QUALITY_METRICS))
    if unknown:
        raise InvalidInput(f"unknown quality metric(s) {', '.join(unknown)}; valid: {', '.join(QUALITY_METRICS)} "
                           "(deletion/insertion AUC and complexity are always computed)", code="invalid_quality")
    return names


def _target(field: str | None, manifest: ModelManifest) -> int | None:
    if field is None or field == "":
        return None
    try:
        return manifest.class_index(field)
    except ValueError as error:
        raise InvalidInput(str(error), code="invalid_target") from None


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit} bytes", code="payload_too_large")
    return data
