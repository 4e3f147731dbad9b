"""Where finished jobs' files live: one small interface, a Redis and a filesystem implementation. Torch-free.

The worker writes a job's files once (``put``); the gateway reads them (``get``, ``names``), adds the
PNGs it renders on first download in place of the display copy (``put``, ``discard``) and erases them
on DELETE (``purge``). A file the job's input already holds in Redis (the display copy) is put as an
``InputKey``: the Redis store copies it inside Redis, so its bytes never travel to the worker and back.
Redis suits the embedded default and small deployments (files expire with the job's TTL); a shared
volume suits larger ones, where keeping images in Redis's memory would crowd out the queue. An object
store is a third class with the same five methods.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis import Redis

from xai.errors import ErrorCode, NotFound

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE_NAME = re.compile(r"([a-z0-9_+-]{1,64}/)?[a-z0-9_.+-]{1,64}")


@dataclass(frozen=True)
class InputKey:
    """A result file whose bytes are those Redis holds under ``key`` (an input of the job, still there)."""

    key: str


File = bytes | InputKey


class ResultStore(Protocol):
    def put(self, files_by_job: dict[str, dict[str, File]], ttl_s: int) -> None:
        """Store each job's files (name -> bytes or ``InputKey``), to expire after ``ttl_s`` seconds.

        Raises:
            NotFound: ``input_expired`` when an ``InputKey`` names a key Redis no longer holds.
        """

    def get(self, job_id: str, name: str) -> bytes:
        """One file; NotFound (``unknown_file``) naming the job's files when there is no such file."""

    def names(self, job_id: str) -> list[str]:
        """The names of a job's stored files, sorted."""

    def discard(self, job_id: str, name: str) -> None:
        """Erase one file of a job (nothing happens if there is no such file)."""

    def purge(self, job_id: str) -> None:
        """Erase every file of a job (nothing happens if it has none)."""


def missing_file(job_id: str, name: str, known: list[str]) -> NotFound:
    listed = f"; files: {', '.join(known)}" if known else ""
    return NotFound(f"job {job_id!r} has no file {name!r}{listed}", code="unknown_file")


class RedisResultStore:
    """Files under ``xai:result:<job>:<name>``, listed in the set ``xai:result:<job>``."""

    def __init__(self, redis: Redis):
        self.redis = redis

    @staticmethod
    def _index(job_id: str) -> str:
        return f"xai:result:{job_id}"

    @staticmethod
    def _file(job_id: str, name: str) -> str:
        return f"xai:result:{job_id}:{name}"

    def put(self, files_by_job: dict[str, dict[str, File]], ttl_s: int) -> None:
        copies = []  # where each COPY's answer will be
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id, files in files_by_job.items():
                for name, blob in files.items():
                    if isinstance(blob, InputKey):
                        copies.append(len(pipe))
                        pipe.copy(blob.key, self._file(job_id, name), replace=True)
                        pipe.expire(self._file(job_id, name), ttl_s)
                    else:
                        pipe.set(self._file(job_id, name), blob, ex=ttl_s)
                if files:
                    pipe.sadd(self._index(job_id), *files)
                    pipe.expire(self._index(job_id), ttl_s)
            answers = pipe.execute()
        if not all(answers[position] for position in copies):
            raise NotFound(code=ErrorCode.INPUT_EXPIRED)

    def get(self, job_id: str, name: str) -> bytes:
        blob = self.redis.get(self._file(job_id, name))
        if blob is None:
            raise missing_file(job_id, name, self.names(job_id))
        return blob

    def names(self, job_id: str) -> list[str]:
        return sorted(n.decode() for n in self.redis.smembers(self._index(job_id)))

    def discard(self, job_id: str, name: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self._index(job_id), name)
            pipe.delete(self._file(job_id, name))
            pipe.execute()

    def purge(self, job_id: str) -> None:
        names = self.names(job_id)
        self.redis.delete(self._index(job_id), *(self._file(job_id, n) for n in names))


class FileResultStore:
    """Files under ``<root>/<job>/<name>``, readable only by the service's user; expired folders are swept."""

    _EXPIRY = ".expires"
    _SWEEP_EVERY_S = 60.0

    def __init__(self, root: Path, redis: Redis):
        self.root = root
        self.redis = redis  # where an InputKey's bytes are read from
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._last_sweep = 0.0

    def _folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):  # ids become paths here: nothing but the id alphabet
            raise NotFound(f"no job {job_id!r}", code="unknown_job")
        return self.root / job_id

    def put(self, files_by_job: dict[str, dict[str, File]], ttl_s: int) -> None:
        for job_id, files in files_by_job.items():
            folder = self._folder(job_id)
            folder.mkdir(mode=0o700, exist_ok=True)
            (folder / self._EXPIRY).write_text(str(time.time() + ttl_s))  # first, so a sweep never takes it
            for name, blob in files.items():
                if not FILE_NAME.fullmatch(name):
                    raise ValueError(f"not a result file name: {name!r}")
                if isinstance(blob, InputKey):
                    blob = self.redis.get(blob.key)
                    if blob is None:
                        raise NotFound(code=ErrorCode.INPUT_EXPIRED)
                path = folder / name
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "wb") as out:
                    out.write(blob)
        self._sweep()

    def get(self, job_id: str, name: str) -> bytes:
        folder = self._folder(job_id)
        if FILE_NAME.fullmatch(name) and not self._expired(folder) and (folder / name).is_file():
            return (folder / name).read_bytes()
        raise missing_file(job_id, name, self.names(job_id))

    def names(self, job_id: str) -> list[str]:
        folder = self._folder(job_id)
        if not folder.is_dir() or self._expired(folder):
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != self._EXPIRY)

    def discard(self, job_id: str, name: str) -> None:
        if FILE_NAME.fullmatch(name):
            (self._folder(job_id) / name).unlink(missing_ok=True)

    def purge(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    def _expired(self, folder: Path) -> bool:
        try:
            return float((folder / self._EXPIRY).read_text()) < time.time()
        except (OSError, ValueError):
            return True

    def _sweep(self) -> None:
        """Remove expired job folders, at most once a minute (a scan of the root)."""
        if time.monotonic() - self._last_sweep < self._SWEEP_EVERY_S:
            return
        self._last_sweep = time.monotonic()
        for folder in self.root.iterdir():
            if folder.is_dir() and self._expired(folder):
                shutil.rmtree(folder, ignore_errors=True)


def open_result_store(kind: str, redis: Redis, root: Path) -> ResultStore:
    """The store ``XAI_RESULT_STORE`` names: ``redis`` (default) or ``filesystem`` under ``root``."""
    return FileResultStore(root, redis) if kind == "filesystem" else RedisResultStore(redis)
