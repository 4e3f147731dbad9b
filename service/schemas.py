"""The API's response bodies as typed models: the routes answer them, the OpenAPI schema shows them, the CLI
reads them. Torch-free. Metrics keep their method-specific figures as extra fields (each method adds its own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from models.manifest import ModelManifest
from xai.jobs import Delivery, Timings

JobState = Literal["queued", "started", "finished", "failed", "canceled"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Body):
    code: str = Field(description="A stable error code from the README's table")
    message: str = Field(description="What went wrong and what to do about it")


class ErrorResponse(_Body):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class Health(_Body):
    status: Literal["ok"]


class QueueReadiness(_Body):
    waiting: int
    workers: int = Field(description="workers heard from within XAI_WORKER_TTL_S")


class Readiness(_Body):
    status: Literal["ready", "not_ready"]
    redis: str
    queues: dict[str, QueueReadiness] = Field(default_factory=dict)
    reason: str | None = None


class Accepted(_Body):
    job_id: str
    status_url: str


class RequestSummary(_Body):
    """What was asked: which fields are set depends on the job's kind."""

    model_id: str | None = None
    model_version: int | None = None
    methods: list[str] | None = Field(None, description="explanation: the methods, several for a comparison")
    target: int | None = Field(None, description="explanation: the class asked for; null = the predicted class")
    faithfulness: bool | None = Field(None, description="explanation: whether deletion and insertion were asked for")
    method: str | None = Field(None, description="training: the method whose artifacts are trained")


class ExplanationMetrics(BaseModel):
    """A finished explanation's metrics (README, "Metrics JSON"); method-specific blocks are extra fields."""

    model_config = ConfigDict(extra="allow")

    prediction: dict[str, Any] = Field(description="class, class_name, score, probabilities")
    target: dict[str, Any] = Field(description="class, class_name, chosen_by")
    model: dict[str, Any] = Field(description="id, version, sha256")
    input: dict[str, Any] = Field(description="height, width, channels, annotation, details")
    method: dict[str, Any] | None = Field(None, description="one method: name and the parameters it ran with")
    faithfulness: dict[str, Any] | None = Field(None, description="deletion_auc, insertion_auc, settings")
    complexity: dict[str, Any] | None = Field(None, description="area_fraction, settings")
    localization: dict[str, Any] | None = Field(None, description="with an annotation: iou_p85..iou_p98, ncc")
    methods: dict[str, dict[str, Any]] | None = Field(None, description="a comparison: each method's block")
    comparison: list[dict[str, Any]] | None = Field(None, description="a comparison: one row per method")
    dicom: dict[str, Any] | None = Field(None, description="outputs=dicom: the new series' UIDs, and notes on any "
                                         "object the source did not allow (no Parametric Map without geometry)")


class JobResult(_Body):
    metrics: ExplanationMetrics | dict[str, Any] = Field(
        description="an explanation's metrics, or a training or validation job's summary")
    timing: Timings | None = Field(None, description="explanations: where the job's time went (ms)")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> signed URL (loads without a key)")


class CallbackState(_Body):
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    delivered_at: str | None


class JobStatus(_Body):
    job_id: str
    kind: Literal["explanation", "training", "model_validation", "delivery"]
    status: JobState
    progress: float = Field(ge=0, le=1, description="never goes backwards")
    stage: str
    note: str | None
    error: ErrorDetail | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    request: RequestSummary
    result: JobResult | None
    callback: CallbackState | None = Field(None, description="only for a job submitted with callback_url")
    delivery: Delivery | None = Field(None, description="only for a job whose DICOM results went to a destination: "
                                      "the latest sending")


class JobList(_Body):
    jobs: list[JobStatus]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


class MethodParam(_Body):
    name: str
    type: Literal["int", "float", "bool", "str"]
    default: Any
    description: str
    range: list[float | None] | None = None
    choices: list[str] | None = None


class MethodInfo(_Body):
    name: str
    title: str
    queue: Literal["fast", "slow", "train"]
    description: str
    needs_artifacts: bool
    needs_target_layer: bool
    params: list[MethodParam]
    params_schema: dict[str, Any] = Field(description="the params object as JSON Schema")
    references: list[str]


class MethodList(_Body):
    methods: list[MethodInfo]


class ModelInfo(ModelManifest):
    """A registered model version as the API shows it."""

    weights_file: SkipJsonSchema[str] = Field("weights.pt", exclude=True)
    versions: list[int]
    methods: list[str] = Field(description="methods available for it now")


class ModelList(_Body):
    models: list[ModelInfo]


class RegisteredModel(ModelInfo):
    validation_job: Accepted


_STATUS_WORDS = {400: "Malformed request", 401: "No or an invalid API key", 403: "Scope or signature refused",
                 404: "Not found", 405: "Method not allowed", 409: "Conflicts with the model's state",
                 413: "Too large", 415: "Unsupported file format", 422: "A field is invalid",
                 429: "Rate or queue limit; see Retry-After", 500: "Internal error",
                 503: "Redis unreachable or full; see Retry-After"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the given error statuses, all with the real error body."""
    return {status: {"model": ErrorResponse, "description": _STATUS_WORDS[status]} for status in statuses}


class TrainingRequest(_Body):
    """The body of POST /v1/models/{id}/train/{method}."""

    data: str = Field(min_length=1, max_length=1000, description="a folder under XAI_TRAINING_DATA_DIR",
                      examples=["busi/images"])
    masks: str | None = Field(None, min_length=1, max_length=1000,
                              description="a folder under XAI_TRAINING_DATA_DIR holding a mask of each training "
                              "image's annotated finding under the image's own relative path (SyCE and CyCE "
                              "weight_outside_finding)", examples=["busi/masks"])
    params: dict[str, Any] = Field(default_factory=dict, description="the method's training parameters")
    version: int | None = Field(None, ge=1, description="the model version; default the newest")
    target_class: int | None = Field(None, ge=0, description="the class the artifacts explain; default all")
