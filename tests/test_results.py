"""Result stores (Redis, filesystem) behave alike; DELETE of an ended job erases everything of it."""

from __future__ import annotations

import io
import stat
import time

import numpy as np
import pytest
from redis import Redis

from tests.test_api import client, mnist_digit, png, store, submit, work  # noqa: F401 - fixtures and helpers
from xai.errors import NotFound
from xai.results import FileResultStore, InputKey, RedisResultStore


@pytest.fixture(params=["redis", "filesystem"])
def result_store(request, settings, tmp_path):
    if request.param == "redis":
        return RedisResultStore(Redis.from_url(settings.redis_url))
    return FileResultStore(tmp_path / "results", Redis.from_url(settings.redis_url))


def test_a_store_gives_back_what_was_put_lists_it_discards_and_purges_it(result_store):
    result_store.put({"job1": {"heatmap.png": b"png", "grad_cam/overlay.png": b"o"}, "job2": {"a.png": b"a"}}, 60)
    assert result_store.get("job1", "grad_cam/overlay.png") == b"o"
    assert result_store.names("job1") == ["grad_cam/overlay.png", "heatmap.png"]
    with pytest.raises(NotFound) as missing:
        result_store.get("job1", "nope.png")
    assert missing.value.code == "unknown_file" and "heatmap.png" in missing.value.message
    result_store.discard("job1", "heatmap.png")
    result_store.discard("job1", "never-stored.png")
    assert result_store.names("job1") == ["grad_cam/overlay.png"]
    with pytest.raises(NotFound):
        result_store.get("job1", "heatmap.png")
    result_store.purge("job1")
    assert result_store.names("job1") == [] and result_store.names("job2") == ["a.png"]


def test_a_file_put_as_an_input_key_holds_that_input_and_outlives_it(result_store, settings):
    redis = Redis.from_url(settings.redis_url)
    redis.set("xai:display:job3", b"display copy", ex=60)
    result_store.put({"job3": {"display.u8": InputKey("xai:display:job3"), "heatmap.f16": b"h"}}, 60)
    redis.delete("xai:display:job3")  # the job's inputs go when it ends; its results stay
    assert result_store.get("job3", "display.u8") == b"display copy"
    assert result_store.names("job3") == ["display.u8", "heatmap.f16"]
    with pytest.raises(NotFound) as gone:
        result_store.put({"job4": {"display.u8": InputKey("xai:display:job4")}}, 60)
    assert gone.value.code == "input_expired"


def test_files_expire_with_their_ttl(result_store):
    result_store.put({"job": {"a.png": b"a"}}, 1)
    time.sleep(1.1)
    assert result_store.names("job") == []


def test_the_filesystem_store_is_private_and_takes_no_path_as_an_id(tmp_path, settings):
    files = FileResultStore(tmp_path / "results", Redis.from_url(settings.redis_url))
    files.put({"job": {"a.png": b"a"}}, 60)
    assert stat.S_IMODE((tmp_path / "results" / "job").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "results" / "job" / "a.png").stat().st_mode) == 0o600
    with pytest.raises(NotFound):
        files.get("../results", "a.png")
    with pytest.raises(ValueError):
        files.put({"job": {"../escape.png": b"x"}}, 60)


def test_deleting_a_finished_job_erases_its_record_files_inputs_and_idempotency_entry(client, settings):
    redis = Redis.from_url(settings.redis_url)
    before = set(redis.keys("*"))
    job_id = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "once"}).json()["job_id"]
    work(settings)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "finished"
    assert np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content)).shape == (28, 28)
    assert any(job_id.encode() in key for key in redis.keys("*"))
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/overlay.png").status_code == 404
    left = {key for key in set(redis.keys("*")) - before if job_id.encode() in key or b"idempotency" in key}
    assert not left, left
    again = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "once"}).json()["job_id"]
    assert again != job_id  # the key was released with the job


def test_deleting_a_queued_job_cancels_it(client, settings):
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    canceled = client.delete(f"/v1/jobs/{job_id}")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
