"""What a worker process keeps between jobs (its device, resident models, result store) and the progress channel."""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.executions import Execution
from rq.job import Job

from models.loader import Classifier, load_classifier
from models.manifest import ModelManifest
from models.store import ModelStore
from xai.errors import JobCancelled
from xai.jobs import Stage, cancel_key
from xai.results import open_result_store
from xai.settings import Settings

log = logging.getLogger("xai.worker")

# What redis-py raises while the server is away (a restart, a network cut): transient, worth waiting out.
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


def set_torch_threads(setting: int) -> int:
    """Pin torch's CPU thread count for this worker process and return it.

    Several workers share the machine's cores (``xai serve`` starts three). Torch's default, one
    thread per core in every process, oversubscribes them, and its threads then spin waiting for
    each other: on a 2-core machine with a busy neighbour a 64 px SyCE job took 2.6 s with two
    threads and 0.16 s with one.
    """
    threads = setting or max(1, (os.cpu_count() or 1) // 2)
    torch.set_num_threads(threads)
    return threads


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


class GroupProgress:
    """Progress, stage and note of the jobs of one batch, written into each RQ job's meta.

    Every job of a batch is at the same point, so one call updates them all (in one Redis round
    trip). Progress never goes backwards: a stage entered later that maps onto an earlier part of
    the span is shown at the furthest point reached. A cancel request for a job marks it in
    ``canceled``; the batch goes on for the others, and stops (``JobCancelled``) once every job of it
    is canceled. Saves are throttled (``min_interval_s``), stage changes too: a fast job passes all
    its stages in milliseconds, and a round trip for each would cost it more than some of the stages
    do; a stage not yet saved goes with the next save. Cancel flags are read at most every
    ``CANCEL_CHECK_S``.
    """

    CANCEL_CHECK_S = 0.1

    def __init__(self, jobs: list[Job], connection: Redis | None, min_interval_s: float = 0.5):
        self.jobs = jobs
        self.connection = connection
        self.min_interval_s = min_interval_s
        self.canceled: set[str] = set()
        self._last_save = self._last_check = float("-inf")
        self._span = (0.0, 1.0)
        self._reached = 0.0
        self._unsaved: dict[str, str] = {}
        # A job re-run after its worker was lost keeps the progress its first run reached until this run
        # passes it, so that what a caller polls never goes backwards.
        self._floor = {job.id: float(job.meta.get("progress", 0.0)) for job in jobs}

    def stage(self, stage: Stage, span: tuple[float, float] | None = None) -> None:
        """Enter a stage; ``span`` maps the stage's own 0..1 progress onto a part of the job's."""
        if span is not None:
            self._span = span
        self._save(stage=stage.value, progress=self._span[0])

    def __call__(self, fraction: float, note: str | None = None) -> None:
        start, end = self._span
        self._save(progress=start + (end - start) * min(max(fraction, 0.0), 1.0), note=note)

    def _save(self, *, progress: float, **fields: str | None) -> None:
        if not self.jobs or self.connection is None:
            return
        now = time.monotonic()
        self._reached = max(self._reached, progress)
        self._unsaved |= {k: v for k, v in fields.items() if v is not None}
        try:
            if now - self._last_check >= min(self.CANCEL_CHECK_S, self.min_interval_s):
                self._last_check = now
                self._check_cancel()  # so a cancel stops a long method within one of its iterations
            if now - self._last_save >= self.min_interval_s:
                self._last_save = now
                self._write()
        except REDIS_UNREACHABLE:
            # Progress is not worth a job: a long method goes on through a Redis restart, and what was
            # not saved goes with the next save (a cancel flag is read at the next check).
            log.warning("progress not saved: Redis is unreachable; the job goes on")

    def _write(self) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            for job in self.jobs:
                if job.id not in self.canceled:
                    job.meta.update(self._unsaved, progress=round(max(self._floor[job.id], self._reached), 4))
                    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
            pipe.execute()
        self._unsaved = {}

    def _check_cancel(self) -> None:
        flags = self.connection.mget([cancel_key(job.id) for job in self.jobs])
        self.canceled |= {job.id for job, flag in zip(self.jobs, flags, strict=True) if flag is not None}
        if len(self.canceled) == len(self.jobs):
            raise JobCancelled(", ".join(sorted(self.canceled)))


class WorkerContext:
    """Everything a worker process keeps resident between jobs: settings, Redis, models, the result store."""

    def __init__(self, settings: Settings, connection: Redis | None):
        self.settings = settings
        self.connection = connection
        self.store = ModelStore(settings.model_store_dir)
        self.device = pick_device(settings.device)
        self.models = ModelCache(self.store, self.device, settings.model_cache_size)
        self.results = (open_result_store(settings.result_store, connection, settings.result_root)
                        if connection is not None else None)
        self.render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.worker_name = ""
        # Jobs the worker claimed to run with a leader job, by the leader's id, until its entry point takes them.
        self._claims: dict[str, tuple[list, Execution | None]] = {}

    def hand_over(self, leader_id: str, claims: list, execution: Execution | None) -> None:
        """What the worker claimed for a leader job: the peers' claims and the leader's own execution."""
        self._claims[leader_id] = (claims, execution)

    def take_claims(self, leader_id: str) -> tuple[list, Execution | None]:
        return self._claims.pop(leader_id, ([], None))
