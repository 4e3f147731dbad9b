"""Soak: 1000 jobs from 50 clients while a worker is killed every few seconds, and the gateway and Redis once.

Real processes throughout: the embedded Redis (AOF, fsync always), a gateway served by uvicorn, and
fast workers that this test kills with SIGKILL and starts again (as ``xai serve`` would). Clients
retry refused or failed POSTs with the same Idempotency-Key, as a PACS bridge should. Every accepted
job must end finished or failed with a reason; none may be lost or computed twice.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from app.embedded import EmbeddedRedis
from models.store import ModelStore
from tests.conftest import DEMO_DIR, REPO
from tests.test_api import MODEL, mnist_digit, png

JOBS = 1000
CLIENTS = 50
KILL_EVERY_S = 5  # one of the two workers, the one up longest: each lives about 10 s (start-up takes 3-6 s)
TERMINAL = ("finished", "failed", "canceled")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """Redis, a gateway and two fast workers as processes; workers and Redis can be killed and restarted."""

    def __init__(self, tmp_path):
        self.redis = EmbeddedRedis(tmp_path / "redis").start()
        self.port = free_port()
        self.env = {"XAI_REDIS_URL": self.redis.url, "XAI_DATA_DIR": str(tmp_path / "var"), "XAI_DEVICE": "cpu",
                    "XAI_HEARTBEAT_S": "1", "XAI_ABANDONED_AFTER_S": "3", "XAI_TORCH_THREADS": "1",
                    "XAI_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin"}
        ModelStore(tmp_path / "var" / "models").register_directory(DEMO_DIR / MODEL)
        self.logs = tmp_path / "logs"  # each process's log: what a failure message quotes
        self.logs.mkdir()
        self.spawned = 0
        self.gateway = self._spawn("gateway", "--port", str(self.port))
        self.workers = [self._spawn("worker", "--queues", "fast") for _ in range(2)]
        self.kills = 0
        self.redis_restarts = 0
        self.gateway_restarts = 0

    def _spawn(self, *args: str) -> subprocess.Popen:
        self.spawned += 1
        with open(self.logs / f"{self.spawned:03d}-{args[0]}.log", "wb") as log:
            return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT)

    def explain_failures(self, job_ids: list[str]) -> str:
        """What RQ recorded and what the logs say of each job: the message of an unexplained failure."""
        redis = Redis.from_url(self.redis.url)
        lines = []
        for job_id in job_ids:
            results = Job.fetch(job_id, redis, JSONSerializer).results()
            lines.append(f"{job_id}: {len(results)} result(s)")
            lines += [f"  {r.type.name} by {r.worker_name}: {(r.exc_string or '').strip()[-1500:]}" for r in results]
            for log in sorted(self.logs.iterdir()):
                text = log.read_text(errors="replace")
                if job_id in text:
                    at = text.index(job_id)
                    lines.append(f"  {log.name}: {text[max(0, at - 200):at + 2500]}")
        return "\n".join(lines)

    def kill_worker(self) -> None:
        oldest = self.workers.pop(0)
        oldest.kill()
        oldest.wait()
        self.kills += 1
        self.workers.append(self._spawn("worker", "--queues", "fast"))

    def restart_redis(self) -> None:
        self.redis.process.kill()
        self.redis.process.wait()
        self.redis.start()
        self.redis_restarts += 1

    def restart_gateway(self) -> None:
        self.gateway.kill()
        self.gateway.wait()
        self.gateway = self._spawn("gateway", "--port", str(self.port))
        self.gateway_restarts += 1

    def ensure_workers(self) -> None:
        """A worker that exited (Redis was away when it started, or it lost Redis) comes back, as xai serve does."""
        self.workers = [w if w.poll() is None else self._spawn("worker", "--queues", "fast") for w in self.workers]

    def stop(self) -> None:
        for process in (*self.workers, self.gateway):
            process.kill()
            process.wait()
        self.redis.stop()


def submit_until_accepted(client: httpx.Client, number: int, image: bytes, deadline: float) -> str | None:
    """POST one job, retrying with the same Idempotency-Key until the gateway accepts it."""
    while time.monotonic() < deadline:
        try:
            response = client.post("/v1/explanations", data={"model_id": MODEL, "method": "saliency"},
                                   files={"file": ("digit.png", image, "image/png")},
                                   headers={"Idempotency-Key": f"soak-{number}"})
            if response.status_code == 202:
                return response.json()["job_id"]
        except httpx.HTTPError:
            pass  # the gateway or Redis is away: retry
        time.sleep(0.2)
    return None


def status_of(client: httpx.Client, job_id: str) -> str | None:
    try:
        response = client.get(f"/v1/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    if response.status_code == 404:
        return "lost"
    return response.json()["status"] if response.status_code == 200 else None


def test_a_thousand_jobs_survive_worker_kills_a_gateway_kill_and_a_redis_restart(tmp_path):
    service = Service(tmp_path)
    stop = threading.Event()

    def chaos() -> None:
        started = time.monotonic()
        while not stop.wait(KILL_EVERY_S):
            service.kill_worker()
            if not service.gateway_restarts and time.monotonic() - started > 2 * KILL_EVERY_S:
                service.restart_gateway()
            if not service.redis_restarts and time.monotonic() - started > 3 * KILL_EVERY_S:
                service.restart_redis()
            service.ensure_workers()

    images = [png(mnist_digit(3 if i % 2 else 8, i % 50)) for i in range(CLIENTS)]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=30) as client:
            _wait_until_ready(client)
            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            deadline = time.monotonic() + 600
            with ThreadPoolExecutor(CLIENTS) as pool:
                job_ids = list(pool.map(lambda n: submit_until_accepted(client, n, images[n % CLIENTS], deadline),
                                        range(JOBS)))
            ends = _wait_for_ends(client, [j for j in job_ids if j], deadline + 300)
            stop.set()
            killer.join()
            duplicated = _computed_more_than_once(Redis.from_url(service.redis.url), ends)
            failures = {job_id: client.get(f"/v1/jobs/{job_id}").json()["error"]["code"]
                        for job_id, state in ends.items() if state == "failed"}
            unexplained = [job_id for job_id, reason in failures.items() if reason != "worker_lost"]
            diagnosis = service.explain_failures(unexplained[:3] + duplicated[:2])
    finally:
        stop.set()
        service.stop()
    counts = {state: sum(s == state for s in ends.values()) for state in (*TERMINAL, "lost", None)}
    reasons = collections.Counter(failures.values())
    print(f"soak: {JOBS} submitted by {CLIENTS} clients, {sum(j is not None for j in job_ids)} accepted, "
          f"{service.kills} worker kills, {service.gateway_restarts} gateway kill, {service.redis_restarts} "
          f"Redis restart: {counts} (failed with {dict(reasons)}), "
          f"{len(duplicated)} computed twice")
    if diagnosis:
        print(diagnosis)
    assert all(job_ids), "a submission was never accepted"
    assert counts["lost"] == 0 and counts[None] == 0
    assert sum(counts[state] for state in TERMINAL) == JOBS
    assert not duplicated, diagnosis
    assert set(reasons) <= {"worker_lost"}, f"a job failed for a reason the chaos does not explain:\n{diagnosis}"


def _wait_until_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the service did not become ready")


def _wait_for_ends(client: httpx.Client, job_ids: list[str], deadline: float) -> dict[str, str | None]:
    ends: dict[str, str | None] = dict.fromkeys(job_ids)
    while time.monotonic() < deadline:
        for job_id in [j for j, state in ends.items() if state not in (*TERMINAL, "lost")]:
            ends[job_id] = status_of(client, job_id)
        if all(state in (*TERMINAL, "lost") for state in ends.values()):
            break
        time.sleep(1)
    return ends


def _computed_more_than_once(redis: Redis, ends: dict[str, str | None]) -> list[str]:
    twice = []
    for job_id in ends:
        try:
            if len(Job.fetch(job_id, connection=redis, serializer=JSONSerializer).results()) > 1:
                twice.append(job_id)
        except NoSuchJobError:
            pass
    return twice
