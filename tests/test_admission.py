"""Bounded load: queue depth, per-key rate and Redis headroom refuse new jobs with Retry-After, whole."""

from __future__ import annotations

from fastapi.testclient import TestClient
from redis import Redis

from service.main import create_app
from tests.test_api import mnist_digit, png, store, submit  # noqa: F401 - store is a fixture


def client_with(settings, **limits) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=limits)))


def test_a_full_queue_answers_429_queue_full_and_takes_jobs_again_once_drained(settings, store):
    digit = png(mnist_digit(3))
    with client_with(settings, max_queue_depth=2) as client:
        assert [submit(client, digit).status_code for _ in range(2)] == [202, 202]
        refused = submit(client, digit)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["Retry-After"]) > 0
        Redis.from_url(settings.redis_url).delete("rq:queue:fast")  # as if a worker had taken them
        assert submit(client, digit).status_code == 202


def test_a_key_over_its_rate_gets_429_rate_limited_with_the_seconds_to_wait(settings, store):
    digit = png(mnist_digit(3))
    with client_with(settings, rate_limit_per_minute=3) as client:
        codes = [submit(client, digit).status_code for _ in range(3)]
        refused = submit(client, digit)
    assert codes == [202, 202, 202]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_near_redis_maxmemory_new_jobs_get_503_before_redis_refuses_writes(settings, store):
    redis = Redis.from_url(settings.redis_url)
    digit = png(mnist_digit(3))
    try:
        with client_with(settings) as client:  # started first: its connections count towards used memory
            used = redis.info("memory")["used_memory"]
            redis.config_set("maxmemory", str(int(used * 1.05)))  # inside the 10% headroom already
            refused = submit(client, digit)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_full"
            assert int(refused.headers["Retry-After"]) > 0
            redis.config_set("maxmemory", str(used * 4))
            assert submit(client, digit).status_code == 202
    finally:
        redis.config_set("maxmemory", "0")


def test_zero_turns_the_limits_off(settings, store):
    digit = png(mnist_digit(3))
    with client_with(settings, max_queue_depth=0, rate_limit_per_minute=0) as client:
        assert all(submit(client, digit).status_code == 202 for _ in range(5))
