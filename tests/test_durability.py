"""Nothing accepted is lost: a Redis restart keeps queued jobs (AOF), and they then run to the end; a job
running through the restart finishes too."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.embedded import EmbeddedRedis
from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR
from tests.test_api import MODEL, mnist_digit, png, submit, work
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


def test_a_job_running_while_redis_restarts_finishes_once(tmp_path):
    """Redis stopped and started mid-job: the worker's progress saves and cancel checks fail for a moment, and
    the job goes on (or its batch runs again once Redis answers) instead of failing ``explanation_failed``."""
    import time

    from rq.job import Job
    from rq.serializers import JSONSerializer

    from tests.test_api import _ended, _wait_for
    from tests.test_pipeline import _slow_worker

    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(redis_url=redis.url, data_dir=tmp_path / "var", device="cpu", log_level="WARNING")
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    worker = _slow_worker(settings)
    try:
        with TestClient(create_app(settings)) as client:
            job_id = submit(client, png(mnist_digit(3)), method="igos_pp", params='{"iterations": 200}').json()["job_id"]
            _wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.15, 120)  # mid-explanation
            redis.stop()
            time.sleep(1.5)  # several of the worker's progress saves and cancel checks fall in here
            redis.start()
            job = _wait_for(lambda: _ended(client, job_id), 300)
            results = Job.fetch(job_id, connection=Redis.from_url(settings.redis_url), serializer=JSONSerializer).results()
        assert job["status"] == "finished", job
        assert len(results) == 1
    finally:
        worker.kill()
        worker.wait()
        redis.stop()


def test_a_batch_stage_that_meets_a_redis_restart_runs_again_once_redis_answers(tmp_path):
    import threading
    import time
    from types import SimpleNamespace

    from workers.jobs import _through_redis_outages

    redis = EmbeddedRedis(tmp_path / "redis").start()
    connection = Redis.from_url(redis.url)
    connection.set("xai:input:x", b"pixels")
    calls = []

    def read_input() -> bytes:
        calls.append(time.monotonic())
        return connection.get("xai:input:x")

    try:
        redis.stop()
        threading.Timer(1.0, redis.start).start()
        ctx = SimpleNamespace(settings=Settings(abandoned_after_s=30))
        assert _through_redis_outages(ctx, read_input) == b"pixels"  # kept by the append-only file
        assert len(calls) > 1 and calls[-1] - calls[0] >= 0.9
        redis.stop()  # longer than the lease: the error reaches the caller (RQ takes the jobs back meanwhile)
        with pytest.raises(RedisConnectionError):
            _through_redis_outages(SimpleNamespace(settings=Settings(abandoned_after_s=1)), read_input)
    finally:
        redis.stop()


def test_a_gateway_killed_while_clients_submit_loses_and_duplicates_nothing(tmp_path):
    """kill -9 of the gateway with jobs being submitted: clients retry with their Idempotency-Key against the
    restarted gateway, and every job ends finished, once, under the one id its key was given."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from redis import Redis

    from tests.test_soak import (
        Service,
        _computed_more_than_once,
        _wait_for_ends,
        _wait_until_ready,
        submit_until_accepted,
    )

    jobs, clients = 40, 8
    service = Service(tmp_path)
    images = [png(mnist_digit(3 if i % 2 else 8, i)) for i in range(clients)]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=30) as client:
            _wait_until_ready(client)
            redis = Redis.from_url(service.redis.url)
            killer = threading.Thread(target=lambda: (_wait_for_keys(redis, 10), service.restart_gateway()))
            killer.start()
            deadline = time.monotonic() + 180
            with ThreadPoolExecutor(clients) as pool:
                job_ids = list(pool.map(lambda n: submit_until_accepted(client, n, images[n % clients], deadline),
                                        range(jobs)))
            killer.join()
            ends = _wait_for_ends(client, [j for j in job_ids if j], deadline + 120)
            keyed = {redis.get(key).decode() for key in redis.scan_iter("xai:idempotency:*")}
            duplicated = _computed_more_than_once(redis, ends)
    finally:
        service.stop()
    assert service.gateway_restarts == 1 and all(job_ids)
    assert len(set(job_ids)) == jobs and keyed == set(job_ids)  # one job per key, the one its client was told
    assert set(ends.values()) == {"finished"} and not duplicated


def _wait_for_keys(redis, count: int) -> None:
    """Until ``count`` submissions have claimed their idempotency keys: the gateway is mid-stream."""
    import time

    deadline = time.monotonic() + 60
    while sum(1 for _ in redis.scan_iter("xai:idempotency:*")) < count and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("outage_at", ["prepare_job_execution", "handle_job_success"])
def test_a_batch_whose_bookkeeping_meets_a_redis_outage_is_taken_back_and_finished_once(
    tmp_path, monkeypatch, outage_at
):
    """Redis unreachable for one of RQ's own calls around a batch (before its leader runs, or as its success
    is recorded): no job of the batch is failed for it; RQ's abandoned-job cleanup re-queues what is open
    and the next worker finishes it, so each job ends finished with one result."""
    import time

    from rq.job import Job
    from rq.serializers import JSONSerializer

    from workers import main
    from workers.main import ExplainWorker

    class OutageOnce(ExplainWorker):
        outages = 1

        def _outage(self) -> None:
            if OutageOnce.outages:
                OutageOnce.outages -= 1
                raise RedisConnectionError("Connection refused: Redis is restarting")

        def prepare_job_execution(self, job, *args, **kwargs):
            if outage_at == "prepare_job_execution":
                self._outage()
            return super().prepare_job_execution(job, *args, **kwargs)

        def handle_job_success(self, job, queue, started_job_registry):
            if outage_at == "handle_job_success":
                self._outage()
            return super().handle_job_success(job, queue, started_job_registry)

    redis = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(redis_url=redis.url, data_dir=tmp_path / "var", device="cpu", log_level="WARNING",
                        heartbeat_s=1, abandoned_after_s=1, batch_max=2)
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    try:
        with TestClient(create_app(settings)) as client:
            job_ids = [submit(client, png(mnist_digit(3, i))).json()["job_id"] for i in range(2)]
            with monkeypatch.context() as patch:
                patch.setattr(main, "ExplainWorker", OutageOnce)  # the worker run_worker builds
                work(settings, queues=("fast",))
            assert OutageOnce.outages == 0
            assert [client.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids].count("failed") == 0
            time.sleep(1.5)  # past the lease: a poll runs RQ's cleanup, which re-queues what was left open
            for job_id in job_ids:
                client.get(f"/v1/jobs/{job_id}")
            work(settings, queues=("fast",))
            ended = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
            results = [Job.fetch(j, connection=Redis.from_url(redis.url), serializer=JSONSerializer).results()
                       for j in job_ids]
        assert [job["status"] for job in ended] == ["finished", "finished"], ended
        assert [len(r) for r in results] == [1, 1]
    finally:
        redis.stop()
