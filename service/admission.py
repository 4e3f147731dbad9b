"""Admission of new jobs: bounded queues, a per-key rate and headroom in Redis, checked before any upload is read.

Each refusal is a 429 or 503 with ``Retry-After`` (``xai.errors.Overloaded``), so a client backs off
and retries the same request; nothing is half-accepted.
"""

from __future__ import annotations

import time

from redis import Redis

from service.deps import Gateway, Principal
from xai.errors import Overloaded

RATE_WINDOW_S = 60
STORAGE_RETRY_S = 60
QUEUE_RETRY_S = 5


def admit(gateway: Gateway, principal: Principal, queue: str) -> None:
    """Refuse a new job on ``queue`` for ``principal`` when the service is at one of its limits.

    Raises:
        Overloaded: ``rate_limited`` (429), ``queue_full`` (429) or ``storage_full`` (503).
    """
    settings = gateway.settings
    _check_memory(gateway.redis, settings.redis_memory_headroom)  # first: the rate check writes
    if settings.rate_limit_per_minute:
        _check_rate(gateway.redis, principal.name, settings.rate_limit_per_minute)
    if settings.max_queue_depth and gateway.queues[queue].count >= settings.max_queue_depth:
        raise Overloaded(f"the {queue} queue holds {settings.max_queue_depth} waiting jobs, its limit; "
                         "retry later", code="queue_full", retry_after_s=QUEUE_RETRY_S)


def _check_rate(redis: Redis, name: str, per_minute: int) -> None:
    """A fixed one-minute window per key: one INCR, and the window's key expires with it."""
    window = int(time.time()) // RATE_WINDOW_S
    key = f"xai:rate:{name}:{window}"
    with redis.pipeline() as pipe:
        count, _ = pipe.incr(key).expire(key, RATE_WINDOW_S * 2).execute()
    if count > per_minute:
        retry = (window + 1) * RATE_WINDOW_S - int(time.time())
        raise Overloaded(f"this API key sent more than {per_minute} jobs this minute; retry in {retry} s",
                         code="rate_limited", retry_after_s=max(retry, 1))


def _check_memory(redis: Redis, headroom: float) -> None:
    """Refuse before Redis would (``noeviction`` answers OOM to writes past ``maxmemory``): a job refused
    here is refused whole, while a write refused by Redis could strike mid-way through accepting it."""
    memory = redis.info("memory")
    limit = memory.get("maxmemory", 0)
    if limit and memory["used_memory"] > limit * (1 - headroom):
        raise Overloaded(f"Redis uses {memory['used_memory'] // 2**20} of its {limit // 2**20} MiB; new jobs are "
                         "refused until finished ones expire or are deleted", code="storage_full",
                         retry_after_s=STORAGE_RETRY_S)
