"""The job contract between gateway and workers: typed requests and results, stages, queues, key names.

The gateway builds a request model once and enqueues ``model_dump(mode="json")`` as the RQ job's only
argument; the worker parses it back with the same model, so the defaults below are the only ones.
Pixels travel separately (``input_key``) with a TTL; result files live in a ``ResultStore``.
Nothing here identifies a patient: the one exception, the source's filing attributes an
``outputs=dicom`` job needs, travels with the pixels (``source_key``) and ends with them.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from redis import Redis
from redis.client import Pipeline

from xai.settings import OutputKind

QUEUES = ("fast", "slow", "train")
EXPLAIN_ENTRY = "workers.jobs.run_explanation"
DELIVER_ENTRY = "workers.jobs.run_delivery"
TRAIN_ENTRY = "workers.jobs.run_training"
VALIDATE_ENTRY = "workers.jobs.validate_model"

QualityMetric = Literal["infidelity", "max_sensitivity", "randomisation"]
QUALITY_METRICS: tuple[str, ...] = QualityMetric.__args__


class Stage(StrEnum):
    QUEUED = "queued"
    LOADING_MODEL = "loading_model"
    PREPROCESSING = "preprocessing"
    EXPLAINING = "explaining"
    SCORING = "scoring"
    RENDERING = "rendering"
    STORING = "storing"
    SENDING = "sending"
    TRAINING = "training"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputInfo(_Contract):
    """What the gateway learnt of the upload: format, shape and the safe DICOM attributes it keeps."""

    height: int
    width: int
    channels: Literal[1, 3]
    annotation: bool = False
    details: dict[str, Any] = Field(default_factory=dict, description="format, bit depth, safe DICOM attributes")


class ExplainJob(_Contract):
    kind: Literal["explanation"] = "explanation"
    job_id: str
    submitted_at: float
    model_id: str
    model_version: int
    methods: list[str] = Field(min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="resolved parameters per method")
    target: int | None = None
    quality: list[QualityMetric] = Field(default_factory=list)
    faithfulness: bool = Field(False, description="score each heatmap by deletion and insertion (102 model passes "
                               "at 50 steps each); a comparison of several methods is always scored")
    patch_mode: bool = False
    patch_overlap: Annotated[float, Field(ge=0.0, le=0.9)] = 0.25
    outputs: list[OutputKind] = Field(["png"], min_length=1, description="png: heatmap and overlay images; dicom: "
                                      "Secondary Capture, Parametric Map and Structured Report in the source's study")
    destination: str | None = Field(None, description="a name of XAI_DICOMWEB_DESTINATIONS the DICOM results go to")
    input: InputInfo

    def batch_key(self) -> str | None:
        """Jobs with equal keys run as one batch; None for jobs that run alone.

        Patch mode and quality metrics are per-image work, and several methods make a comparison.
        """
        if len(self.methods) != 1 or self.patch_mode or self.quality:
            return None
        method = self.methods[0]
        return json.dumps([self.model_id, self.model_version, method, self.params.get(method, {}), self.faithfulness],
                          sort_keys=True)

    @property
    def scores_faithfulness(self) -> bool:
        """Deletion and insertion for this job: asked for, or needed to rank the methods of a comparison."""
        return self.faithfulness or len(self.methods) > 1


class TrainJob(_Contract):
    kind: Literal["training"] = "training"
    job_id: str
    submitted_at: float
    method: str
    model_id: str
    model_version: int | None = None
    data: str
    masks: str | None = None  # a folder of finding masks, one per image of ``data`` (same relative paths)
    params: dict[str, Any] = Field(default_factory=dict)
    target_class: int | None = None


class ValidateJob(_Contract):
    kind: Literal["model_validation"] = "model_validation"
    job_id: str
    submitted_at: float
    model_id: str
    model_version: int


class DeliverJob(_Contract):
    """Send a finished job's DICOM results (again) to a destination: POST /v1/jobs/{id}/deliveries."""

    kind: Literal["delivery"] = "delivery"
    job_id: str
    submitted_at: float
    of_job: str
    destination: str


JobRequest = Annotated[ExplainJob | TrainJob | ValidateJob | DeliverJob, Field(discriminator="kind")]


class Delivery(_Contract):
    """Where a job's DICOM results were sent and how that went; kept in the job's meta, shown in its status."""

    destination: str
    status: Literal["sending", "delivered", "failed"]
    attempts: int = 0
    stored_sop_instance_uids: list[str] = Field(default_factory=list)
    reason: str | None = Field(None, description="why the delivery failed (no patient data)")
    updated_at: str


class Timings(_Contract):
    """Where a job's time went, in milliseconds; batched stages report this job's share."""

    queue_ms: float
    load_ms: float
    explain_ms: float
    score_ms: float
    render_ms: float
    store_ms: float
    batch_size: int
    model_resident: bool

    @property
    def total_ms(self) -> float:
        """From submission to stored result: the sum of the stages."""
        return self.queue_ms + self.load_ms + self.explain_ms + self.score_ms + self.render_ms + self.store_ms


class ExplainResult(_Contract):
    """A finished explanation: the metric JSON and the names of its result files."""

    metrics: dict[str, Any]
    files: list[str]
    timing: Timings


# A job stores each heatmap once, at the resolution its explainer made it, as float16; the gateway
# serves it as float32 NPY at that resolution (heatmap_model.npy) or enlarged to the input's (heatmap.npy).
RAW_HEATMAP = "heatmap.f16"
DERIVED_HEATMAPS = ("heatmap.npy", "heatmap_model.npy")
# An outputs=png job also stores the input's display copy (uint8, at most the display cap; a large colour
# one as input.png); the gateway renders input.png and each heatmap's PNGs from it on the first download
# of any of them, stores those and drops the copy (input.png holds the same pixels, losslessly).
DISPLAY_COPY = "display.u8"
INPUT_PNG = "input.png"
RENDERED_PER_HEATMAP = ("heatmap.png", "overlay.png")


def public_files(stored: list[str] | dict[str, bytes]) -> list[str]:
    """The file names a caller sees for the names a job stored: each raw heatmap becomes its NPY forms and,
    with a display copy, its PNGs; the display copy becomes input.png."""
    renders = DISPLAY_COPY in stored or INPUT_PNG in stored
    names = []
    for name in stored:
        prefix, _, base = name.rpartition("/")
        if base == RAW_HEATMAP:
            derived = DERIVED_HEATMAPS + (RENDERED_PER_HEATMAP if renders else ())
            names += [f"{prefix}/{file}" if prefix else file for file in derived]
        elif name == DISPLAY_COPY:
            names.append(INPUT_PNG)
        else:
            names.append(name)
    return sorted(set(names))


class ErrorBody(_Contract):
    code: str
    message: str


_JOB_REQUEST = TypeAdapter(JobRequest)


def parse_request(payload: dict[str, Any]) -> ExplainJob | TrainJob | ValidateJob | DeliverJob:
    """The typed request of a job from its RQ argument (pydantic's ValidationError if it is none)."""
    return _JOB_REQUEST.validate_python(payload)


def input_key(job_id: str) -> str:
    """The image at the model's input size (what the classifier sees), zlib-compressed float32."""
    return f"xai:input:{job_id}"


def display_key(job_id: str) -> str:
    """The image at display size (at most ``display_max_side`` on the long side), for the overlay."""
    return f"xai:display:{job_id}"


def native_key(job_id: str) -> str:
    """The image at its own resolution, kept only for patch mode, which explains it tile by tile."""
    return f"xai:native:{job_id}"


def annotation_key(job_id: str) -> str:
    return f"xai:annotation:{job_id}"


def source_key(job_id: str) -> str:
    """The source DICOM's filing attributes (patient, study, references), kept only for outputs=dicom jobs."""
    return f"xai:source:{job_id}"


def input_keys(job_id: str) -> tuple[str, ...]:
    """Every key of a job's uploaded data, deleted together when the job ends."""
    return input_key(job_id), display_key(job_id), native_key(job_id), annotation_key(job_id), source_key(job_id)


def cancel_key(job_id: str) -> str:
    return f"xai:cancel:{job_id}"


def idempotency_key(owner: str, key: str) -> str:
    return f"xai:idempotency:{owner}:{key}"


CALLBACK_OUTBOX = "xai:callbacks:due"  # sorted set: job id -> when its callback is next looked at (unix s)


def owner_jobs_key(owner: str) -> str:
    """Sorted set of an API key's job ids, scored by submission time (ms), for GET /v1/jobs."""
    return f"xai:jobs-of:{owner}"


def observed_key(job_id: str) -> str:
    """Set the first time a poll sees the job ended, so its end is counted once in telemetry."""
    return f"xai:observed:{job_id}"


# Pub/sub channel: a job's id, published when it ends, wakes the gateway requests waiting for it
# (service.endings). Fire and forget: a waiter re-checks the status anyway, so a lost message only delays it.
JOB_ENDED_CHANNEL = "xai:job-ended"


def announce_end(connection: Redis | Pipeline, job_id: str) -> None:
    """Tell waiting gateways that ``job_id`` ended (on ``connection``, or queued on a pipeline)."""
    connection.publish(JOB_ENDED_CHANNEL, job_id)
