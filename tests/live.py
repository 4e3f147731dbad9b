"""A live service for tests that need real HTTP: uvicorn on a loopback port, its own Redis, a worker process.

Used by the event-stream, browser, generated-client and CLI tests. Each module that asks for
``live_service`` gets its own Redis server (so the function-scoped ``settings`` fixture of other
tests, which flushes the shared one, cannot touch it), a model store with the demo models, two API
keys and one worker subprocess on the fast and slow queues.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from app import client_cli
from app.embedded import EmbeddedRedis
from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR, REPO
from xai.settings import Settings

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
CALLBACK_SECRETS = {"alice": "alice-callback-secret-0123456789"}
DEMO_MODELS = ("mnist-3v8", "nih-cardiomegaly")


@dataclass
class LiveService:
    url: str
    settings: Settings
    worker: subprocess.Popen

    def client(self, key: str = "alice", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[key]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_settings(redis_url: str, data_dir: Path, **overrides) -> Settings:
    keys = [{"name": name, "key": key, "scopes": ["explain", "admin"], "callback_secret": CALLBACK_SECRETS.get(name)}
            for name, key in KEYS.items()]
    return Settings(redis_url=redis_url, data_dir=data_dir, device="cpu", torch_threads=1, heartbeat_s=1,
                    abandoned_after_s=10, log_level="WARNING", api_keys=keys, port=free_port(), **overrides)


def start_worker(settings: Settings, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XAI_REDIS_URL": settings.redis_url,
           "XAI_DATA_DIR": str(settings.data_dir), "XAI_DEVICE": "cpu", "XAI_TORCH_THREADS": "1",
           "XAI_LOG_LEVEL": "WARNING", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "fast,slow"], cwd=REPO, env=env)


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test gateway did not start")
        time.sleep(0.05)
    return server, thread


@contextmanager
def running_service(folder: Path, models: tuple[str, ...] = DEMO_MODELS, worker_env: dict[str, str] | None = None,
                    **overrides) -> Iterator[LiveService]:
    """Redis, a worker process and the gateway in ``folder`` with ``models`` registered, stopped on exit.
    ``worker_env`` passes settings the worker reads from its environment (its ``overrides``' twins)."""
    redis = EmbeddedRedis(folder / "redis", appendonly=False).start()
    settings = live_settings(redis.url, folder / "var", **overrides)
    store = ModelStore(settings.model_store_dir)
    for name in models:
        store.register_directory(DEMO_DIR / name)
    worker = start_worker(settings, worker_env)
    server, thread = serve(settings)
    try:
        yield LiveService(f"http://127.0.0.1:{settings.port}", settings, worker)
    finally:
        server.should_exit = True
        thread.join(10)
        worker.terminate()
        worker.wait(10)
        redis.stop()


@pytest.fixture(scope="module")
def live_service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("live")) as service:
        yield service


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream response, read to its end, as the CLI reads them."""
    return list(client_cli.read_events(response))
