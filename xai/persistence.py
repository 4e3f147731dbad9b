"""Deleted patient data must not live on in Redis's append-only file. Torch-free.

Deleting a key (an upload after its job, a purged job's overlay) or letting it expire appends a
DEL to the AOF, but the pixels stay in the file's earlier records until the AOF is rewritten.
Whoever deletes patient data marks it here; a worker's maintenance pass (every
``abandoned_after_s``) then rewrites the AOF, and at least hourly for what expired by TTL. The
trade-off: a rewrite costs a fork and a write of the whole dataset, so pixels may stay on disk for
one maintenance interval (plus the rewrite) after their job ends, never longer.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError

log = logging.getLogger("xai.persistence")

DELETED_KEY = "xai:aof:patient-data-deleted"
REWRITTEN_KEY = "xai:aof:rewritten-recently"
REWRITE_EVERY_S = 3600  # bounds how long data removed by TTL expiry stays in the file


def mark_patient_data_deleted(redis: Redis | Pipeline) -> None:
    redis.set(DELETED_KEY, 1)


def rewrite_if_patient_data_deleted(redis: Redis) -> bool:
    """Start a background AOF rewrite when patient data was deleted since the last one, or an hour passed.

    Returns whether a rewrite was started. Nothing is started when the server keeps no AOF (a rewrite
    would create one) or when one is already running (the mark stays for the next pass).
    """
    if not _keeps_an_aof(redis):
        return False
    deleted = redis.getdel(DELETED_KEY)
    if not deleted and redis.exists(REWRITTEN_KEY):
        return False
    try:
        redis.bgrewriteaof()
    except ResponseError as error:  # a rewrite or an RDB save in progress: try again next pass
        log.info("AOF rewrite deferred: %s", error)
        mark_patient_data_deleted(redis)
        return False
    redis.set(REWRITTEN_KEY, 1, ex=REWRITE_EVERY_S)
    return True


def _keeps_an_aof(redis: Redis) -> bool:
    try:
        return redis.config_get("appendonly").get("appendonly", "yes") in ("yes", b"yes")
    except ResponseError:  # CONFIG disabled (managed Redis): assume it persists, as the embedded one does
        return True
