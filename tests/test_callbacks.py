"""Callbacks: a job's end POSTed, signed, to a real local HTTP listener; retried; refused where not allowed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.test_api import mnist_digit, png, store, submit, work  # noqa: F401
from xai.callbacks import SIGNATURE_HEADER, signature, verify

SECRET = "pacs-callback-secret-0123456789"
PACS = {"Authorization": "Bearer pacs-secret-0123456789"}
DASH = {"Authorization": "Bearer dash-secret-0123456789"}


class Listener:
    """A real HTTP server on a loopback port that records every POST and answers from a script of codes."""

    def __init__(self, answers: list[int]):
        self.answers = answers  # status per delivery; the last one repeats
        self.received: list[tuple[dict, bytes]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 -- the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                listener.received.append((dict(self.headers), body))
                code = listener.answers[min(len(listener.received), len(listener.answers)) - 1]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/xai/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keyed(settings, store):  # noqa: F811 -- the demo model store fixture
    return type(settings).model_validate(settings.model_dump() | {
        "api_keys": [{"name": "pacs", "key": "pacs-secret-0123456789", "scopes": ["explain"], "callback_secret": SECRET},
                     {"name": "dash", "key": "dash-secret-0123456789", "scopes": ["explain"]}],
        "callback_hosts": ["127.0.0.1"], "callback_backoff_s": 0.2, "callback_attempts": 3,
    })


def until_delivery_ends(client, job_id: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=PACS).json()
        if job["callback"]["state"] != "pending":
            return job
        time.sleep(0.1)
    raise AssertionError(f"the callback of {job_id} is still pending: {job['callback']}")


def test_a_finished_job_is_posted_once_signed_with_its_public_status(keyed):
    listener = Listener([200])
    try:
        with TestClient(create_app(keyed)) as client:
            job_id = submit(client, png(mnist_digit(3)), headers=PACS, callback_url=listener.url).json()["job_id"]
            assert client.get(f"/v1/jobs/{job_id}", headers=PACS).json()["callback"] == {
                "url": listener.url, "state": "pending", "attempts": 0, "last_status_code": None, "last_error": None,
                "delivered_at": None}
            work(keyed)
            job = until_delivery_ends(client, job_id)
    finally:
        listener.close()
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 1
    assert job["callback"]["last_status_code"] == 200 and job["callback"]["delivered_at"]
    [(headers, body)] = listener.received
    assert headers["Content-Type"] == "application/json"
    assert verify(SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify(SECRET, headers[SIGNATURE_HEADER], body.replace(b"finished", b"failed__"))
    assert not verify("another-secret-0123456789", headers[SIGNATURE_HEADER], body)
    sent = json.loads(body)
    assert sent["job_id"] == job_id and sent["status"] == "finished"
    assert sent["result"]["metrics"] == job["result"]["metrics"]  # the public status, not internals
    assert set(sent) == set(job) and "owner" not in body.decode()
    assert all("sig=" in url for url in sent["result"]["files"].values())  # links a receiver can fetch


def test_a_replayed_signature_is_refused_once_it_is_old():
    body = b'{"job_id": "x"}'
    old = signature(SECRET, int(time.time()) - 3600, body)
    assert not verify(SECRET, old, body)
    assert verify(SECRET, old, body, now=time.time() - 3600)
    assert not verify(SECRET, "v1=abc", body) and not verify(SECRET, "t=soon,v1=abc", body)


def test_a_refused_delivery_is_retried_with_backoff_then_recorded(keyed):
    listener = Listener([503, 500, 204])
    try:
        with TestClient(create_app(keyed)) as client:
            job_id = submit(client, png(mnist_digit(8)), headers=PACS, callback_url=listener.url).json()["job_id"]
            work(keyed)
            job = until_delivery_ends(client, job_id)
    finally:
        listener.close()
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 3
    assert job["callback"]["last_status_code"] == 204
    bodies = [json.loads(body) for _, body in listener.received]
    assert [b["job_id"] for b in bodies] == [job_id] * 3


def test_a_callback_that_never_succeeds_is_given_up_and_says_why(keyed):
    listener = Listener([500])
    try:
        with TestClient(create_app(keyed)) as client:
            job_id = submit(client, png(mnist_digit(3)), headers=PACS, callback_url=listener.url).json()["job_id"]
            work(keyed)
            job = until_delivery_ends(client, job_id)
            time.sleep(1.0)  # no attempt past the limit
    finally:
        listener.close()
    assert job["callback"] | {"delivered_at": None} == {
        "url": listener.url, "state": "failed", "attempts": 3, "last_status_code": 500, "last_error": None,
        "delivered_at": None}
    assert len(listener.received) == 3


def test_an_unreachable_listener_is_recorded_as_an_error(keyed):
    listener = Listener([200])
    url = listener.url
    listener.close()  # nothing listens on that port any more
    with TestClient(create_app(keyed)) as client:
        job_id = submit(client, png(mnist_digit(3)), headers=PACS, callback_url=url).json()["job_id"]
        client.delete(f"/v1/jobs/{job_id}", headers=PACS)  # a canceled job is reported too
        job = until_delivery_ends(client, job_id)
    assert job["status"] == "canceled"
    assert job["callback"]["state"] == "failed" and job["callback"]["last_status_code"] is None
    assert job["callback"]["last_error"].startswith("ConnectError")


def test_a_canceled_job_is_delivered_with_its_end(keyed):
    listener = Listener([200])
    try:
        with TestClient(create_app(keyed)) as client:
            job_id = submit(client, png(mnist_digit(3)), headers=PACS, callback_url=listener.url).json()["job_id"]
            client.delete(f"/v1/jobs/{job_id}", headers=PACS)
            until_delivery_ends(client, job_id)
    finally:
        listener.close()
    [(_, body)] = listener.received
    sent = json.loads(body)
    assert sent["status"] == "canceled" and sent["error"]["code"] == "canceled"


@pytest.mark.parametrize(("url", "headers", "code"), [
    ("ftp://127.0.0.1/x", PACS, "invalid_callback_url"),
    ("/relative/path", PACS, "invalid_callback_url"),
    ("http://user:pw@127.0.0.1/x", PACS, "invalid_callback_url"),
    ("http://127.0.0.1:99999/x", PACS, "invalid_callback_url"),
    ("http://example.org/x", PACS, "callback_not_allowed"),  # not in XAI_CALLBACK_HOSTS
    ("http://127.0.0.1.example.org/x", PACS, "callback_not_allowed"),
    ("http://127.0.0.1/x", DASH, "callback_not_allowed"),  # the key has no callback_secret
])
def test_callback_urls_it_may_not_use_are_refused(keyed, url, headers, code):
    with TestClient(create_app(keyed)) as client:
        refused = submit(client, png(mnist_digit(3)), headers=headers, callback_url=url)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == code
        assert "XAI_CALLBACK_HOSTS" in refused.json()["error"]["message"] or code == "invalid_callback_url" \
            or "callback_secret" in refused.json()["error"]["message"]


def test_a_purged_job_leaves_the_outbox(keyed):
    from redis import Redis

    from xai.jobs import CALLBACK_OUTBOX

    with TestClient(create_app(keyed)) as client:
        job_id = submit(client, png(mnist_digit(3)), headers=PACS,
                        callback_url="http://127.0.0.1:9/never").json()["job_id"]
        client.delete(f"/v1/jobs/{job_id}", headers=PACS)
        client.delete(f"/v1/jobs/{job_id}", headers=PACS)
        assert client.get(f"/v1/jobs/{job_id}", headers=PACS).status_code == 404
        assert Redis.from_url(keyed.redis_url).zscore(CALLBACK_OUTBOX, job_id) is None
