"""Waiting for a job to end without polling: GET /v1/jobs/{id}?wait=S and the event stream's last event.

Workers publish a job's id on ``JOB_ENDED_CHANNEL`` when they close it (``xai.jobs.announce_end``). One
thread per gateway process listens and wakes the requests waiting for that id, so a client learns of
the end within a Redis round trip instead of at its next poll, and a waiting client costs the gateway
nothing meanwhile. A message can be missed (Redis restarting, a job that RQ's abandoned-job cleanup
fails, a cancel), so a waiter also looks again every ``RECHECK_S``: the message makes the common case
immediate, the re-check keeps every case correct.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from redis import Redis
from redis.exceptions import RedisError

from xai.jobs import JOB_ENDED_CHANNEL

log = logging.getLogger("xai.gateway")

RECHECK_S = 1.0
_RECONNECT_S = 0.5
T = TypeVar("T")


class Watch:
    """One request's interest in one job's end, woken from the listener thread on the request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.woken = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the job's end is announced meanwhile (or was since the last pause)."""
        try:
            await asyncio.wait_for(self.woken.wait(), seconds)
        except TimeoutError:
            pass
        self.woken.clear()


class JobEndings:
    """The gateway's listener for job ends; ``start()`` it once, ``wait_until_ended`` from any request."""

    def __init__(self, redis: Redis):
        self._redis = redis
        self._waiters: dict[str, set[Watch]] = defaultdict(set)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="job-endings", daemon=True)

    def start(self) -> JobEndings:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    async def wait_until_ended(self, job_id: str, timeout_s: float, look: Callable[[], Awaitable[tuple[T, bool]]]) -> T:
        """What ``look()`` returns (a value, and whether the job has ended) once the job has ended or
        ``timeout_s`` has passed, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with self.watching(job_id) as watch:
            while True:
                value, ended = await look()  # after registering: an end announced from here on wakes us
                left = deadline - loop.time()
                if ended or left <= 0:
                    return value
                await watch.pause(min(RECHECK_S, left))

    @contextmanager
    def watching(self, job_id: str) -> Iterator[Watch]:
        """A ``Watch`` on ``job_id`` for as long as the block runs: its ``pause`` ends early when the job ends."""
        watch = Watch(asyncio.get_running_loop())
        with self._lock:
            self._waiters[job_id].add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._waiters[job_id].discard(watch)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        with self._lock:
            entries = list(self._waiters.get(job_id, ()))
        for watch in entries:
            watch.loop.call_soon_threadsafe(watch.woken.set)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(JOB_ENDED_CHANNEL)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message and message["type"] == "message":
                            self._wake(message["data"].decode())
            except RedisError:  # Redis restarting: waiters fall back on their re-check meanwhile
                log.warning("job-end notifications paused: Redis unreachable; retrying")
                self._stop.wait(_RECONNECT_S)
