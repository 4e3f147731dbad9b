"""Admission of new jobs: bounded queues, a per-key rate and headroom in Redis, checked before any upload is read.

Each refusal is a 429 or 503 with ``Retry-After`` (``xai.errors.Overloaded``), so a client backs off
and retries the same request; nothing is half-accepted.
"""

from __future__ import annotations

import time

from redis.client import Pipeline

from service.deps import Gateway, Principal
from xai.errors import Overloaded

RATE_WINDOW_S = 60
STORAGE_RETRY_S = 60
QUEUE_RETRY_S = 5
MEMORY_INFO_MAX_AGE_S = 0.5


def admit(gateway: Gateway, principal: Principal, queue: str) -> None:
    """Refuse a new job on ``queue`` for ``principal`` when the service is at one of its limits.

    Raises:
        Overloaded: ``rate_limited`` (429), ``queue_full`` (429) or ``storage_full`` (503).
    """
    settings = gateway.settings
    _check_memory(gateway, settings.redis_memory_headroom)  # first: the rate count writes
    window = int(time.time()) // RATE_WINDOW_S
    with gateway.redis.pipeline() as pipe:  # the rate count and the queue's depth in one round trip
        if settings.rate_limit_per_minute:
            _count_rate(pipe, principal.name, window)
        if settings.max_queue_depth:
            pipe.llen(gateway.queues[queue].key)
        answers = pipe.execute()
    if settings.rate_limit_per_minute:
        _check_rate(answers[0], window, settings.rate_limit_per_minute)
    if settings.max_queue_depth and answers[-1] >= settings.max_queue_depth:
        raise Overloaded(f"the {queue} queue holds {settings.max_queue_depth} waiting jobs, its limit; "
                         "retry later", code="queue_full", retry_after_s=QUEUE_RETRY_S)


def _count_rate(pipe: Pipeline, name: str, window: int) -> None:
    """A fixed one-minute window per key: one INCR, and the window's key expires with it."""
    key = f"xai:rate:{name}:{window}"
    pipe.incr(key).expire(key, RATE_WINDOW_S * 2)


def _check_rate(count: int, window: int, per_minute: int) -> None:
    if count > per_minute:
        retry = (window + 1) * RATE_WINDOW_S - int(time.time())
        raise Overloaded(f"this API key sent more than {per_minute} jobs this minute; retry in {retry} s",
                         code="rate_limited", retry_after_s=max(retry, 1))


def _check_memory(gateway: Gateway, headroom: float) -> None:
    """Refuse before Redis would (``noeviction`` answers OOM to writes past ``maxmemory``): a job refused
    here is refused whole, while a write refused by Redis could strike mid-way through accepting it."""
    memory = _memory_info(gateway, headroom)
    limit = memory.get("maxmemory", 0)
    if limit and memory["used_memory"] > limit * (1 - headroom):
        raise Overloaded(f"Redis uses {memory['used_memory'] // 2**20} of its {limit // 2**20} MiB; new jobs are "
                         "refused until finished ones expire or are deleted", code="storage_full",
                         retry_after_s=STORAGE_RETRY_S)


def _memory_info(gateway: Gateway, headroom: float) -> dict:
    """Redis's INFO memory; a reading under ``MEMORY_INFO_MAX_AGE_S`` old is reused while it was far from the
    limit (INFO is one of the costlier commands to run and parse). Near the limit every request reads it."""
    seen = gateway.memory_reading
    if seen and time.monotonic() - seen["at"] <= MEMORY_INFO_MAX_AGE_S and _far_from_limit(seen["info"], headroom):
        return seen["info"]
    info = gateway.redis.info("memory")
    gateway.memory_reading.update(at=time.monotonic(), info=info)
    return info


def _far_from_limit(memory: dict, headroom: float) -> bool:
    limit = memory.get("maxmemory", 0)
    return not limit or memory["used_memory"] < limit * (1 - 2 * headroom)
