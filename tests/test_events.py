"""GET /v1/jobs/{id}/events against a live gateway and a real worker process."""

from __future__ import annotations

import json

import pytest

from tests.live import live_service, read_events  # noqa: F401 - the fixture
from tests.test_api import mnist_digit, png

STAGES = {"queued", "loading_model", "preprocessing", "explaining", "scoring", "rendering", "storing", "finished"}


def _submit(client, method: str, params: dict | None = None) -> str:
    response = client.post("/v1/explanations", data={"model_id": "mnist-3v8", "method": method,
                                                     "params": json.dumps(params or {})},
                           files={"file": ("three.png", png(mnist_digit(3)), "image/png")})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_the_stream_follows_a_job_to_its_end_then_closes(live_service):
    with live_service.client() as client:
        job_id = _submit(client, "igos_pp", {"iterations": 200})
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)  # returns only once the server closed the stream
        polled = client.get(f"/v1/jobs/{job_id}").json()
    names = [name for name, _ in events]
    assert names[-1] == "status" and set(names[:-1]) == {"progress"}
    progress = [data for _, data in events[:-1]]
    assert all(set(p) == {"job_id", "status", "progress", "stage", "note"} for p in progress)
    assert progress[0]["stage"] in ("queued", "loading_model", "preprocessing")
    assert {p["stage"] for p in progress} <= STAGES and "explaining" in {p["stage"] for p in progress}
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == 1.0 and len(set(values)) > 3
    assert any("iteration" in (p["note"] or "") for p in progress)
    assert all(a != b for a, b in zip(progress, progress[1:]))  # an event only on a change
    final = events[-1][1]
    assert final["status"] == "finished" and final["result"]["metrics"]["method"]["name"] == "igos_pp"
    assert final["result"]["metrics"] == polled["result"]["metrics"]


def test_the_stream_of_an_ended_job_is_its_final_status_at_once(live_service):
    with live_service.client() as client:
        job_id = _submit(client, "saliency")
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            read_events(response)
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            again = read_events(response)
    assert [name for name, _ in again] == ["progress", "status"]
    assert again[0][1]["status"] == "finished" and again[0][1]["progress"] == 1.0


@pytest.mark.parametrize("who, job", [("bob", "mine"), ("alice", "0" * 32), ("alice", "nope")])
def test_another_keys_job_or_an_unknown_one_is_a_404_before_any_stream(live_service, who, job):
    with live_service.client() as client:
        job_id = _submit(client, "saliency") if job == "mine" else job
    with live_service.client(who) as client:
        response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_job"


def test_the_stream_needs_an_api_key(live_service):
    with live_service.client() as client:
        job_id = _submit(client, "saliency")
        response = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": ""})
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
