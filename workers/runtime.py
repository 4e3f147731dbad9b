"""What a worker process keeps between jobs: its device, resident models, and the progress channel."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from redis import Redis
from rq.job import Job

from models.loader import Classifier, load_classifier
from models.manifest import ModelManifest
from models.store import ModelStore
from xai.errors import JobCancelled
from xai.jobs import Stage, cancel_key


def pick_device(setting: str) -> torch.device:
    """``auto`` takes the first CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting!r} was asked for but CUDA is not available on this machine")
    return device


@dataclass
class LoadedModel:
    manifest: ModelManifest
    classifier: Classifier
    load_ms: float
    # Explainers built for this model, by method: artifact-backed ones (SyCE generators, GAD support
    # models) load their weights once, not per job.
    explainers: dict = field(default_factory=dict)


class ModelCache:
    """Classifiers resident on the worker's device, least recently used evicted first.

    Keyed by ``id@version``: a new registered version is a new entry, never a stale hit.
    """

    def __init__(self, store: ModelStore, device: torch.device, capacity: int):
        self.store = store
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def get(self, model_id: str, version: int | None) -> tuple[LoadedModel, bool]:
        """The loaded model and whether it was already resident."""
        manifest = self.store.get(model_id, version)
        if manifest.key in self._models:
            self._models.move_to_end(manifest.key)
            return self._models[manifest.key], True
        started = time.perf_counter()
        classifier = load_classifier(manifest, self.store.weights_path(manifest), self.device)
        loaded = LoadedModel(manifest, classifier, (time.perf_counter() - started) * 1000)
        self._models[manifest.key] = loaded
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return loaded, False


class JobProgress:
    """Writes progress, stage and a note into the RQ job's meta, and turns a cancel request into JobCancelled.

    Saves are throttled so a tight optimisation loop does not flood Redis; stage changes always save.
    """

    def __init__(self, job: Job | None, connection: Redis, min_interval_s: float = 0.5):
        self.job = job
        self.connection = connection
        self.min_interval_s = min_interval_s
        self._last_save = 0.0
        self._span = (0.0, 1.0)

    def stage(self, stage: Stage, span: tuple[float, float] | None = None) -> None:
        """Enter a stage; ``span`` maps the stage's own 0..1 progress onto a part of the job's."""
        if span is not None:
            self._span = span
        self._save(stage=stage.value, progress=self._span[0], force=True)

    def __call__(self, fraction: float, note: str | None = None) -> None:
        start, end = self._span
        self._save(progress=start + (end - start) * min(max(fraction, 0.0), 1.0), note=note)

    def _save(self, *, force: bool = False, **fields) -> None:
        if self.job is None:
            return
        # Checked on every call, so a cancel stops a long method within one of its iterations.
        if self.connection.exists(cancel_key(self.job.id)):
            raise JobCancelled(self.job.id)
        now = time.monotonic()
        if not force and now - self._last_save < self.min_interval_s:
            return
        self._last_save = now
        self.job.meta.update({k: v for k, v in fields.items() if v is not None})
        self.job.save_meta()
