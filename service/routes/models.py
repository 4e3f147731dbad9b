"""The model registry over HTTP: list, describe, register (admin) and train explainer artifacts (admin)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import ValidationError

from models.manifest import ModelManifest
from service.admission import admit
from service.deps import AdminCaller, ExplainCaller, GatewayDep
from service.jobs import enqueue, new_job_id, status_url
from service.schemas import Accepted, ModelInfo, ModelList, RegisteredModel, TrainingRequest, error_responses
from xai import jsontext
from xai.errors import Conflict, InvalidInput, PayloadTooLarge
from xai.jobs import TRAIN_ENTRY, VALIDATE_ENTRY, TrainJob, ValidateJob
from xai.methods import MethodSpec, get_trainable

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(manifest: ModelManifest, versions: list[int]) -> ModelInfo:
    return ModelInfo(**dict(manifest), versions=versions, methods=manifest.available_methods())


@router.get("", responses=error_responses(401, 403, 500))
def list_models(gateway: GatewayDep, _: ExplainCaller) -> ModelList:
    """Registered models, each at its latest version, with the methods available for it now."""
    store = gateway.store
    return ModelList(models=[describe(m, store.versions(m.id)) for m in store.list_models()])


@router.get("/{model_id}", responses=error_responses(401, 403, 404, 422, 500))
def get_model(model_id: str, gateway: GatewayDep, _: ExplainCaller, version: int | None = None) -> ModelInfo:
    """One model, at ``version`` or its latest."""
    manifest = gateway.store.get(model_id, version)
    return describe(manifest, gateway.store.versions(model_id))


@router.post("", status_code=201, responses=error_responses(401, 403, 413, 422, 429, 500, 503))
def register_model(
    request: Request,
    gateway: GatewayDep,
    caller: AdminCaller,
    manifest: Annotated[str, Form(description="The model manifest as JSON (see README)")],
    weights: Annotated[UploadFile, File(description="A state_dict (.pt) or a TorchScript file")],
) -> RegisteredModel:
    """Register a new version of a classifier; a worker then builds and runs it once to mark it ready."""
    admit(gateway, caller, "fast")
    parsed = _parse_manifest(manifest)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / parsed.weights_file
        _save_upload(weights, path, gateway.settings.max_model_bytes)
        stored = gateway.store.register(parsed.model_copy(update={"status": "pending"}), path)
    validation = ValidateJob(job_id=new_job_id(), submitted_at=time.time(), model_id=stored.id,
                             model_version=stored.version)
    job = enqueue(gateway, "fast", VALIDATE_ENTRY, validation, owner=caller.name)
    info = describe(stored, gateway.store.versions(stored.id))
    accepted = Accepted(job_id=job.id, status_url=status_url(str(request.base_url), job.id))
    return RegisteredModel(**dict(info), validation_job=accepted)


def _parse_manifest(text: str) -> ModelManifest:
    data = jsontext.loads(text, what="the manifest", code="invalid_manifest")
    if not isinstance(data, dict):
        raise InvalidInput("the manifest must be a JSON object", code="invalid_manifest")
    # What the store decides is never taken from the caller.
    for field in ("version", "weights_sha256", "artifacts", "status", "status_reason"):
        data.pop(field, None)
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise InvalidInput(f"the manifest is invalid: {problems}", code="invalid_manifest") from None


def _save_upload(upload: UploadFile, path: Path, limit: int) -> None:
    written = 0
    with open(path, "wb") as out:
        while chunk := upload.file.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge(f"the weights file is larger than the limit of {limit} bytes",
                                      code="payload_too_large")
            out.write(chunk)
    if written == 0:
        raise InvalidInput("the weights file is empty", code="empty_file")


@router.post("/{model_id}/train/{method}", status_code=202,
             responses=error_responses(401, 403, 404, 409, 422, 429, 500, 503))
def train_artifacts(
    model_id: str, method: str, request: Request, gateway: GatewayDep, caller: AdminCaller, body: TrainingRequest,
) -> Accepted:
    """Train a method's per-model artifacts (e.g. SyCE generators) on a folder under the training data root."""
    spec = get_trainable(method)
    admit(gateway, caller, "train")
    manifest = gateway.store.get(model_id, body.version)
    if manifest.status != "ready":
        raise Conflict(f"model {manifest.key} is {manifest.status}, not ready", code="model_not_ready")
    params = spec.resolve_params(body.params)
    data = _training_folder(gateway.settings.training_root, body.data, "data")
    masks = _masks_folder(gateway.settings.training_root, body.masks, spec, params)
    training = TrainJob(job_id=new_job_id(), submitted_at=time.time(), method=method, model_id=manifest.id,
                        model_version=manifest.version, data=str(data), masks=masks, params=params,
                        target_class=body.target_class)
    job = enqueue(gateway, "train", TRAIN_ENTRY, training, owner=caller.name)
    return Accepted(job_id=job.id, status_url=status_url(str(request.base_url), job.id))


def _training_folder(root: Path, relative: str, field: str) -> Path:
    folder = (root / relative).resolve()
    if not folder.is_relative_to(root.resolve()) or not folder.is_dir():
        raise InvalidInput(f"'{field}' must name an existing folder under the training data root {root}",
                           code="invalid_training_data")
    return folder


def _masks_folder(root: Path, relative: str | None, spec: MethodSpec, params: dict) -> str | None:
    """The masks folder, checked: only for a method that takes masks, and present when its params need them."""
    if relative is not None and not spec.takes_masks:
        raise InvalidInput(f"method {spec.name!r} trains without masks; leave 'masks' out", code="invalid_params")
    if relative is None and params.get("weight_outside_finding", 0) > 0:
        raise InvalidInput("weight_outside_finding needs 'masks': a folder with a mask of each training image's "
                           "finding", code="invalid_params")
    return None if relative is None else str(_training_folder(root, relative, "masks"))

