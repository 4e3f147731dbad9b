"""Nothing accepted is lost: a Redis restart keeps queued jobs (AOF), and they then run to the end."""

from __future__ import annotations

from fastapi.testclient import TestClient

from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR
from tests.test_api import MODEL, mnist_digit, png, submit, work
from app.embedded import EmbeddedRedis
from xai.settings import Settings


def test_queued_job_survives_a_redis_restart(tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(redis_url=redis.url, data_dir=tmp_path / "var", device="cpu", log_level="WARNING")
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    try:
        with TestClient(create_app(settings)) as client:
            job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
        redis.stop()  # SIGTERM: Redis flushes its append-only file before exiting
        redis.start()
        work(settings)
        with TestClient(create_app(settings)) as client:
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "finished", job
            assert client.get(f"/v1/jobs/{job_id}/heatmap.npy").status_code == 200
    finally:
        redis.stop()
