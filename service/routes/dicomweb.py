"""The gateway as a STOW-RS origin a PACS sends to (PS3.18 10.5): each instance becomes one explanation job.

``POST /dicomweb/studies`` routes every instance by the first matching rule of ``XAI_DICOM_ROUTES``;
``POST /dicomweb/models/{model_id}/methods/{method}/studies`` names model and method in the path, so a
PACS that can STOW to a configured base URL targets them with no rule. One instance refused (unreadable,
unroutable, over a limit) is answered in the Failed SOP Sequence and does not stop the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from service.deps import ExplainCaller, GatewayDep
from service.jobs import status_url
from service.schemas import error_responses
from service.stow import DICOM, Identity, StowResponse, identify, route_for, split_parts
from service.submission import Order, check_order, read_body_limited, submit
from xai.errors import InvalidInput, ServiceError, UnsupportedMediaType

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
_DICOM_JSON_BODY = {DICOM_JSON: {"schema": {"type": "object", "description": "Store Instances Response Module "
                                            "(PS3.18 Table 10.5.3-2) as DICOM JSON"}}}
STOW_RESPONSES = {
    200: {"description": "Every instance accepted: Referenced SOP Sequence, one job each", "content": _DICOM_JSON_BODY},
    202: {"description": "Some instances refused: Failed SOP Sequence gives each one's reason",
          "content": _DICOM_JSON_BODY},
} | error_responses(401, 403, 413, 415, 422, 500, 503) | {
    409: {"description": "No instance accepted: Failed SOP Sequence gives each one's reason",
          "content": _DICOM_JSON_BODY}}


@router.post("/studies", response_class=JSONResponse, responses=STOW_RESPONSES)
async def stow_routed(request: Request, gateway: GatewayDep, caller: ExplainCaller) -> JSONResponse:
    """Store instances: each is explained as the first rule of XAI_DICOM_ROUTES it matches says."""

    def order_for(identity: Identity) -> Order:
        rule = route_for(identity, gateway.settings.dicom_routes)
        if rule is None:
            raise InvalidInput(f"no rule of XAI_DICOM_ROUTES matches {identity.describe()}; send it to "
                               "/dicomweb/models/{model_id}/methods/{method}/studies instead", code="no_dicom_route")
        params = rule.params.get(rule.methods[0], {}) if len(rule.methods) == 1 else rule.params
        return Order(model_id=rule.model_id, model_version=rule.model_version, method=",".join(rule.methods),
                     params=params, outputs=rule.outputs, destination=rule.destination,
                     faithfulness=rule.faithfulness)

    return await _store(request, gateway, caller, order_for)


@router.post("/models/{model_id}/methods/{method}/studies",
             response_class=JSONResponse, responses=STOW_RESPONSES)
async def stow_to_method(
    request: Request, gateway: GatewayDep, caller: ExplainCaller,
    model_id: Annotated[str, Path(max_length=128)],
    method: Annotated[str, Path(max_length=200, description="a method, or several comma-separated")],
    params: Annotated[str | None, Query(description="JSON object of method parameters")] = None,
    outputs: Annotated[str, Query(description="dicom (default), png, or both comma-separated")] = "dicom",
    destination: Annotated[str | None, Query(max_length=64, description="a name of XAI_DICOMWEB_DESTINATIONS")] =
        None,
    target: Annotated[str | None, Query(description="class index or name; default: the predicted class")] = None,
    faithfulness: Annotated[bool, Query(description="also score deletion and insertion AUC (into the SR)")] = False,
) -> JSONResponse:
    """Store instances: each is explained with the model and method the path names. What the path and query
    get wrong is wrong for every instance: the whole request is refused (4xx), before any instance is read."""
    order = Order(model_id=model_id, method=method, params=params, outputs=outputs, destination=destination,
                  target=target, faithfulness=faithfulness)
    check_order(gateway, order)
    return await _store(request, gateway, caller, lambda identity: order)


async def _store(request: Request, gateway: GatewayDep, caller: ExplainCaller,
                 order_for: Callable[[Identity], Order]) -> JSONResponse:
    """Submit each instance of the request as ``order_for`` says; answer the Store Instances Response."""
    settings = gateway.settings
    body = await read_body_limited(request, settings.stow_max_bytes)
    parts = split_parts(body, request.headers.get("content-type", ""))
    if not parts:
        raise UnsupportedMediaType("the STOW-RS request holds no part", code="invalid_stow_request")
    response = StowResponse()
    for part in parts:
        identity = identify(part.data)
        try:
            if part.headers.get("content-type", DICOM).split(";")[0].strip().lower() != DICOM:
                raise UnsupportedMediaType("a part is not application/dicom; send each instance as a Part 10 file",
                                           code="invalid_stow_request")
            order = order_for(identity)
            job_id = await submit(request, gateway, caller, order, part.data,
                                  idempotency_key=_retry_key(identity, order))
        except ServiceError as error:
            response.refuse(identity, error)
            continue
        response.accept(identity, job_id, status_url(str(request.base_url), job_id))
    return JSONResponse(response.to_json(), status_code=response.http_status, media_type=DICOM_JSON)


def _retry_key(identity: Identity, order: Order) -> str | None:
    """A PACS re-sending the same instance to the same explanation gets the job it already has, not a second one.
    A digest: the SOP Instance UID never appears in a key name or a job's meta."""
    if not identity.sop_instance_uid:
        return None
    what = [identity.sop_instance_uid, order.model_id, order.model_version, order.method, order.params,
            order.outputs, order.destination, order.target]
    return "stow-" + hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:40]
