"""POST /v1/explanations: an upload as a multipart form, or a raw DICOM instance, becomes one queued job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from service.deps import ExplainCaller, GatewayDep
from service.jobs import status_url
from service.schemas import Accepted, error_responses
from service.submission import DEFAULTS, Order, read_body_limited, submit
from xai.errors import PayloadTooLarge
from xai.jobs import QUALITY_METRICS

DICOM_MEDIA_TYPE = "application/dicom"


class DicomBodyRoute(APIRoute):
    """Answers only requests whose body is a bare DICOM instance, so the form route keeps its own schema."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
        return (match, child) if content_type == DICOM_MEDIA_TYPE.encode() else (Match.NONE, {})


router = APIRouter(prefix="/v1/explanations", tags=["explanations"])
dicom_body = APIRouter(prefix="/v1/explanations", tags=["explanations"], route_class=DicomBodyRoute)


@dicom_body.post("", status_code=202, response_model=Accepted, include_in_schema=False)
async def create_explanation_from_dicom(
    request: Request,
    gateway: GatewayDep,
    caller: ExplainCaller,
    model_id: Annotated[str, Query()],
    method: Annotated[str, Query()],
    target: Annotated[str | None, Query()] = None,
    params: Annotated[str | None, Query()] = None,
    frame: Annotated[int | None, Query(ge=0)] = None,
    model_version: Annotated[int | None, Query(ge=1)] = None,
    quality: Annotated[str | None, Query()] = None,
    faithfulness: Annotated[bool, Query()] = DEFAULTS["faithfulness"].default,
    outputs: Annotated[str | None, Query()] = None,
    destination: Annotated[str | None, Query(max_length=64)] = None,
    callback_url: Annotated[str | None, Query(max_length=2000)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """The same job as the form's, for a PACS bridge that POSTs the instance itself (documented on the form route)."""
    order = Order(model_id=model_id, method=method, target=target, params=params, frame=frame,
                  model_version=model_version, quality=quality, faithfulness=faithfulness, callback_url=callback_url,
                  outputs=outputs, destination=destination)
    data = await read_body_limited(request, gateway.settings.max_upload_bytes)
    job_id = await submit(request, gateway, caller, order, data, idempotency_key=idempotency_key)
    return _accepted(request, job_id)


_RAW_DICOM_BODY = {
    "requestBody": {"content": {DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"},
                                                   "description": "A bare DICOM instance; model_id, method and the "
                                                   "other fields go in the query string"}}},
}


@router.post("", status_code=202, response_model=Accepted, openapi_extra=_RAW_DICOM_BODY,
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
    faithfulness: Annotated[bool, Form(description="Also score each heatmap by deletion and insertion AUC (102 "
                                       "model passes per heatmap); always on when several methods are compared")] =
        DEFAULTS["faithfulness"].default,
    patch_mode: Annotated[bool, Form(description="Explain a large image tile by tile at its own resolution")] =
        DEFAULTS["patch_mode"].default,
    patch_overlap: Annotated[float, Form(ge=0.0, le=0.9, description="Tile overlap, a fraction of the tile")] =
        DEFAULTS["patch_overlap"].default,
    callback_url: Annotated[str | None, Form(max_length=2000, description="Where to POST the job's final status, "
                                             "signed (a host in XAI_CALLBACK_HOSTS)")] = None,
    outputs: Annotated[str | None, Form(description="png (default), dicom, or both comma-separated: dicom adds a "
                                        "Secondary Capture, Parametric Map and Structured Report filed in the "
                                        "source's study (DICOM uploads only)")] = None,
    destination: Annotated[str | None, Form(max_length=64, description="A name of XAI_DICOMWEB_DESTINATIONS the "
                                            "DICOM results are sent to (STOW-RS) when the job ends")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    order = Order(model_id=model_id, method=method, target=target, params=params, frame=frame,
                  model_version=model_version, quality=quality, faithfulness=faithfulness, patch_mode=patch_mode,
                  patch_overlap=patch_overlap, callback_url=callback_url, outputs=outputs, destination=destination)
    limit = gateway.settings.max_upload_bytes
    data = await _read_limited(file, limit)
    mask = await _read_limited(annotation, limit) if annotation is not None else None
    job_id = await submit(request, gateway, caller, order, data, annotation=mask, idempotency_key=idempotency_key)
    return _accepted(request, job_id)


def _accepted(request: Request, job_id: str) -> JSONResponse:
    return JSONResponse({"job_id": job_id, "status_url": status_url(str(request.base_url), job_id)}, status_code=202)


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the upload is larger than the limit of {limit} bytes", code="payload_too_large")
    return data
