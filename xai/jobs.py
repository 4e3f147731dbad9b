"""What the gateway and the workers agree on about a job: Redis key names, stages, queue names.

A job's request is a small JSON dict (the RQ job argument); pixels travel separately under
``input_key`` with a TTL, and result files under ``result_key``. Nothing here identifies a patient.
"""

from __future__ import annotations

from enum import Enum

QUEUES = ("fast", "slow", "train")
EXPLAIN_ENTRY = "workers.jobs.run_explanation"
TRAIN_ENTRY = "workers.jobs.run_training"
VALIDATE_ENTRY = "workers.jobs.validate_model"


class Stage(str, Enum):
    QUEUED = "queued"
    LOADING_MODEL = "loading_model"
    PREPROCESSING = "preprocessing"
    EXPLAINING = "explaining"
    SCORING = "scoring"
    RENDERING = "rendering"
    STORING = "storing"
    TRAINING = "training"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"


def input_key(job_id: str) -> str:
    return f"xai:input:{job_id}"


def annotation_key(job_id: str) -> str:
    return f"xai:annotation:{job_id}"


def result_key(job_id: str, name: str) -> str:
    return f"xai:result:{job_id}:{name}"


def result_index_key(job_id: str) -> str:
    """A Redis set of the result file names of a job."""
    return f"xai:result:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"xai:cancel:{job_id}"


def idempotency_key(owner: str, key: str) -> str:
    return f"xai:idempotency:{owner}:{key}"
