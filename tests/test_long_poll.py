"""GET /v1/jobs/{id}?wait=S: the answer comes when the job ends, woken by the workers' announcement."""

from __future__ import annotations

import threading
import time

import pytest

from service import endings
from tests.test_api import client, error_code, mnist_digit, png, store, submit, work  # noqa: F401 - fixtures

# Longer than any wait below: a waiter that answers "finished" before its wait is up was woken by the
# announcement, since the periodic re-check never came.
NO_RECHECK_S = 600.0
WAIT_S = 60


def _waiting_poll(client, job_id: str, wait: float) -> tuple[threading.Thread, dict]:
    """GET the job with ``wait`` on a thread; returns once the gateway is watching the job."""
    answer: dict = {}
    poll = threading.Thread(target=lambda: answer.update(client.get(f"/v1/jobs/{job_id}", params={"wait": wait})
                                                          .json()))
    poll.start()
    watched = client.app.state.endings._waiters
    deadline = time.monotonic() + 30
    while job_id not in watched and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job_id in watched, "the waiting poll never started watching the job"
    return poll, answer


def _answered(poll: threading.Thread) -> bool:
    poll.join(timeout=WAIT_S / 2)  # well before the wait is up: only an announcement answers by then
    return not poll.is_alive()


@pytest.fixture
def no_recheck(monkeypatch):
    monkeypatch.setattr(endings, "RECHECK_S", NO_RECHECK_S)


def test_a_waiting_poll_answers_when_the_job_ends(client, settings, no_recheck):
    job_ids = [submit(client, png(mnist_digit(3, index))).json()["job_id"] for index in range(3)]
    polls = [_waiting_poll(client, job_id, WAIT_S) for job_id in job_ids]
    work(settings)  # one batch: a leader closed by RQ, two peers closed by the batch's own claims
    for (poll, answer), job_id in zip(polls, job_ids, strict=True):
        assert _answered(poll), "the job ended but the waiting poll was not woken"
        assert answer["job_id"] == job_id and answer["status"] == "finished"
        assert answer["result"]["metrics"]["prediction"]["class_name"] == "three"
    assert {client.get(f"/v1/jobs/{j}").json()["result"]["timing"]["batch_size"] for j in job_ids} == {3}


def test_a_cancel_wakes_the_waiting_poll(client, no_recheck):
    job_id = submit(client, png(mnist_digit(8))).json()["job_id"]
    poll, answer = _waiting_poll(client, job_id, WAIT_S)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
    assert _answered(poll) and answer["status"] == "canceled"


def test_a_job_still_running_when_the_wait_is_up_answers_its_current_status(client):
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]  # no worker runs
    answer = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.3}).json()
    assert answer["status"] == "queued" and answer["stage"] == "queued"


def test_an_ended_job_answers_at_once_and_wait_zero_is_a_plain_poll(client, settings):
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    work(settings)
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S}).json()["status"] == "finished"
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 0}).json()["status"] == "finished"


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_a_wait_out_of_range_is_refused(client, wait):
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": wait})
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert "wait" in response.json()["error"]["message"]


def test_an_unknown_job_is_a_404_before_any_wait(client):
    response = client.get(f"/v1/jobs/{'0' * 32}", params={"wait": WAIT_S})
    assert response.status_code == 404 and error_code(response) == "unknown_job"
