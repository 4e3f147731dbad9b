"""Uploaded pixels do not survive their job in Redis's append-only file; the data folder is the service's alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.embedded import EmbeddedRedis
from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR
from tests.test_api import MODEL, mnist_digit, png, submit, work
from xai.jobs import display_key
from xai.persistence import mark_patient_data_deleted, rewrite_if_patient_data_deleted


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own, so that its AOF holds only this test's writes."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def files_hold(folder: Path, marker: bytes) -> bool:
    return any(marker in path.read_bytes() for path in folder.rglob("*") if path.is_file() and path.suffix != ".sock")


def wait_for_rewrite(redis: Redis) -> None:
    deadline = time.monotonic() + 20
    while redis.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # appendfsync everysec


def test_an_uploaded_image_is_gone_from_the_aof_once_its_job_ended_and_a_worker_ran_maintenance(
    settings, own_redis
):
    settings = settings.model_copy(update={"redis_url": own_redis.url})
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    redis = Redis.from_url(own_redis.url)
    with TestClient(create_app(settings)) as client:
        job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
        marker = redis.get(display_key(job_id))[-48:]  # the uploaded pixels, as stored
        time.sleep(1.2)
        assert files_hold(own_redis.folder, marker)  # the check can fail: the pixels are on disk now
        work(settings)  # runs the job, deletes its inputs and marks them deleted
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "finished"
    work(settings)  # a worker's first loop runs its maintenance pass, which rewrites the AOF
    wait_for_rewrite(redis)
    assert redis.get(display_key(job_id)) is None
    assert not files_hold(own_redis.folder, marker)


def test_a_rewrite_runs_only_after_a_deletion_or_an_hour(own_redis):
    redis = Redis.from_url(own_redis.url)
    assert rewrite_if_patient_data_deleted(redis)  # never rewritten: the hourly pass is due
    wait_for_rewrite(redis)
    assert not rewrite_if_patient_data_deleted(redis)
    mark_patient_data_deleted(redis)
    assert rewrite_if_patient_data_deleted(redis)


def test_no_aof_is_created_where_the_server_keeps_none(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    try:
        redis = Redis.from_url(server.url)
        mark_patient_data_deleted(redis)
        assert not rewrite_if_patient_data_deleted(redis)
        time.sleep(0.5)
        assert not list(server.folder.glob("*.aof"))
    finally:
        server.stop()
