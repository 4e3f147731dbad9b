"""Turning one explanation order into one queued job: shared by every route that accepts one.

The multipart form and the raw ``application/dicom`` body of POST /v1/explanations, and each
instance of a STOW-RS request (service.routes.dicomweb), become an ``Order``; ``submit`` validates
it against the model and the settings, decodes the upload off the event loop and enqueues the job.
Nothing is claimed or stored before the order is known to be valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from models.manifest import ModelManifest
from service.admission import admit
from service.callbacks import CallbackDelivery, callback_request
from service.deps import Gateway, Principal
from service.ingest import ingest_upload, job_inputs, limits_from_settings
from service.jobs import claim_idempotency, enqueue, new_job_id
from service.telemetry import Telemetry
from xai import jsontext
from xai.errors import Conflict, InvalidInput, PayloadTooLarge
from xai.imaging import decode_annotation
from xai.imaging.dicom import filing_attributes
from xai.jobs import EXPLAIN_ENTRY, QUALITY_METRICS, ExplainJob, InputInfo, source_key
from xai.methods import get_method
from xai.settings import OutputKind

QUEUE_ORDER = ("fast", "slow")  # a request runs on the slowest queue any of its methods needs
DEFAULTS = ExplainJob.model_fields  # every route's defaults are the contract's
OUTPUT_KINDS: tuple[str, ...] = OutputKind.__args__


@dataclass
class Order:
    """What a caller asked for, as given (strings from a form or a query); ``submit`` validates it."""

    model_id: str
    method: str
    target: str | None = None
    params: str | dict[str, Any] | None = None
    frame: int | None = None
    model_version: int | None = None
    quality: str | None = None
    faithfulness: bool = DEFAULTS["faithfulness"].default
    patch_mode: bool = DEFAULTS["patch_mode"].default
    patch_overlap: float = DEFAULTS["patch_overlap"].default
    callback_url: str | None = None
    outputs: str | list[str] | None = None
    destination: str | None = None


@dataclass
class CheckedOrder:
    """An order's fields, validated against the model, its methods and the settings."""

    manifest: ModelManifest
    methods: list[str]
    queue: str
    params: dict[str, dict[str, Any]]
    target: int | None
    quality: list[str]
    outputs: list[str]
    destination: str | None


def check_order(gateway: Gateway, order: Order) -> CheckedOrder:
    """Everything of an order that does not depend on the upload; a ServiceError (4xx) for what is wrong."""
    manifest = gateway.store.get(order.model_id, order.model_version)
    methods = parse_methods(order.method, manifest)
    outputs = parse_outputs(order.outputs)
    return CheckedOrder(
        manifest=manifest, methods=methods, queue=max((get_method(m).queue for m in methods), key=QUEUE_ORDER.index),
        params=parse_params(order.params, methods), target=parse_target(order.target, manifest),
        quality=parse_quality(order.quality), outputs=outputs,
        destination=check_destination(order.destination, outputs, gateway.settings.dicomweb_destinations),
    )


async def submit(
    request: Request, gateway: Gateway, caller: Principal, order: Order, data: bytes, *,
    annotation: bytes | None = None, idempotency_key: str | None = None,
) -> str:
    """Validate ``order``, decode ``data`` and enqueue the job; its id (an earlier one for a repeated key).

    All of it, Redis calls included, is one hand-off to the thread pool: each hand-off costs a small
    request as much as its own work, and nothing here may block the event loop."""
    callback = callback_request(order.callback_url, caller, gateway.settings, str(request.base_url))
    return await run_in_threadpool(_accept, gateway, request.app.state.telemetry, caller, order, data, annotation,
                                   idempotency_key, callback)


def _accept(
    gateway: Gateway, telemetry: Telemetry, caller: Principal, order: Order, data: bytes, annotation: bytes | None,
    idempotency_key: str | None, callback: CallbackDelivery | None,
) -> str:
    settings = gateway.settings
    checked = check_order(gateway, order)
    admit(gateway, caller, checked.queue)
    manifest, methods, outputs = checked.manifest, checked.methods, checked.outputs
    limits = limits_from_settings(settings)
    decoded = ingest_upload(data, frame=order.frame, limits=limits)
    filing = _filing(data, decoded.format, outputs)
    mask = None if annotation is None else decode_annotation(annotation, shape=decoded.pixels.shape[:2], limits=limits)
    # Claimed only once the request is known to be valid, so a refused request never holds a key.
    job_id = new_job_id()
    existing = claim_idempotency(gateway, caller.name, idempotency_key, job_id)
    if existing:
        return existing
    height, width = decoded.pixels.shape[:2]
    job = ExplainJob(
        job_id=job_id, submitted_at=time.time(), model_id=manifest.id, model_version=manifest.version,
        methods=methods, params=checked.params, target=checked.target, quality=checked.quality,
        faithfulness=order.faithfulness, patch_mode=order.patch_mode, patch_overlap=order.patch_overlap,
        outputs=outputs, destination=checked.destination,
        input=InputInfo(height=height, width=width, channels=3 if decoded.pixels.ndim == 3 else 1,
                        annotation=mask is not None, details=decoded.meta),
    )
    inputs = job_inputs(job_id, decoded, manifest.input, display_max_side=settings.display_max_side,
                        keep_native=order.patch_mode, annotation=mask)
    if filing is not None:
        inputs[source_key(job_id)] = filing
    enqueue(gateway, checked.queue, EXPLAIN_ENTRY, job, owner=caller.name, inputs=inputs, idempotency=idempotency_key,
            callback=callback)
    for name in methods:
        telemetry.submitted.labels("explanation", name).inc()
    return job_id


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, before it is all read."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes", code="payload_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _filing(data: bytes, upload_format: str, outputs: list[str]) -> bytes | None:
    """The source's filing attributes, kept only when the job writes DICOM results."""
    if "dicom" not in outputs:
        return None
    if upload_format != "dicom":
        raise InvalidInput(f"outputs=dicom files its results in the source's study, but the upload is {upload_format}, "
                           "not DICOM; send the DICOM instance, or ask for outputs=png",
                           code="dicom_output_needs_dicom_input")
    return filing_attributes(data)


def parse_methods(field: str, manifest: ModelManifest) -> list[str]:
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


def parse_params(field: str | dict[str, Any] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Validate ``params`` against each method's spec. Several methods take {"method": {...}, ...}."""
    given = field if isinstance(field, dict) else (
        jsontext.loads(field, what="params", code="invalid_params") if field else {})
    if not isinstance(given, dict):
        raise InvalidInput("params must be a JSON object", code="invalid_params")
    if len(methods) == 1:
        given = {methods[0]: given}
    elif set(given) - set(methods):
        raise InvalidInput("with several methods, params maps method names to their parameters", code="invalid_params")
    return {name: get_method(name).resolve_params(given.get(name, {})) for name in methods}


def parse_quality(field: str | None) -> list[str]:
    names = [name.strip() for name in (field or "").split(",") if name.strip()]
    unknown = sorted(set(names) - set(QUALITY_METRICS))
    if unknown:
        raise InvalidInput(f"unknown quality metric(s) {', '.join(unknown)}; valid: {', '.join(QUALITY_METRICS)} "
                           "(complexity is always computed; deletion/insertion AUC with faithfulness=true)",
                           code="invalid_quality")
    return names


def parse_outputs(field: str | list[str] | None) -> list[str]:
    """``png`` (the default), ``dicom`` or both, comma-separated."""
    if not field:
        return list(DEFAULTS["outputs"].default)
    names = [n.strip() for n in field.split(",")] if isinstance(field, str) else list(field)
    names = [n for n in names if n]
    if not names or set(names) - set(OUTPUT_KINDS) or len(set(names)) != len(names):
        raise InvalidInput(f"outputs is a comma-separated list of {' and '.join(OUTPUT_KINDS)}, each once; got "
                           f"{str(field)[:100]!r}", code="invalid_outputs")
    return names


def check_destination(name: str | None, outputs: list[str], destinations: dict[str, Any]) -> str | None:
    """A destination the settings name, for a job that writes DICOM results; None when none was asked for."""
    if not name:
        return None
    if name not in destinations:
        known = ", ".join(sorted(destinations)) or "none (XAI_DICOMWEB_DESTINATIONS is empty)"
        raise InvalidInput(f"destination {name[:64]!r} is not configured; configured: {known}",
                           code="unknown_destination")
    if "dicom" not in outputs:
        raise InvalidInput("a destination receives DICOM results: add dicom to outputs", code="unknown_destination")
    return name


def parse_target(field: str | None, manifest: ModelManifest) -> int | None:
    if field is None or field == "":
        return None
    try:
        return manifest.class_index(field)
    except ValueError as error:
        raise InvalidInput(str(error), code="invalid_target") from None
