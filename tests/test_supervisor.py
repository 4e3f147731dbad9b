"""The supervisor of ``xai serve`` with real processes: restart after a backoff, the crash-loop limit and
its report, Redis restarted with its AOF; and the permissions of what the service writes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import OutOfMemoryError

from app.embedded import PRIVATE_UMASK, EmbeddedRedis, make_private_folder
from app.supervisor import Child, Policy, Supervisor
from tests.conftest import DEMO_DIR, REPO

FAST = Policy(backoff_initial_s=0.3, backoff_max_s=1.0, poll_s=0.05, stop_timeout_s=5)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class Running:
    """A supervisor run in a thread for the length of a ``with`` block; ``status()`` reads its file."""

    def __init__(self, children: list[Child], folder: Path, policy: Policy = FAST):
        self.status_file = folder / "supervisor.json"
        self.supervisor = Supervisor(children, self.status_file, dict(os.environ), policy)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.supervisor.run, args=(self.stop,))

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def status(self, name: str) -> dict:
        try:
            return json.loads(self.status_file.read_text())["children"][name]
        except FileNotFoundError:
            return {}

    def wait_for(self, name: str, condition, timeout_s: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(name)
            if status and condition(status):
                return status
            time.sleep(0.02)
        raise AssertionError(f"{name} never reached the condition; last status {self.status(name)}")


def test_a_child_killed_with_sigkill_is_restarted_after_a_backoff(tmp_path):
    with Running([Child("sleeper", python("import time; time.sleep(60)"))], tmp_path) as run:
        first = run.wait_for("sleeper", lambda s: s["state"] == "running")
        os.kill(first["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        backing_off = run.wait_for("sleeper", lambda s: s["state"] == "backing_off")
        again = run.wait_for("sleeper", lambda s: s["state"] == "running" and s["pid"] != first["pid"])
        assert time.monotonic() - killed_at >= FAST.backoff_initial_s
    assert backing_off["last_exit_code"] == -signal.SIGKILL
    assert again["restarts"] == 1
    assert run.status("sleeper")["state"] == "stopped"


def test_a_child_that_exits_at_once_crash_loops_and_is_reported_while_its_sibling_runs(tmp_path, caplog):
    children = [Child("broken", python("import sys; sys.exit(3)")), Child("healthy", python("import time; time.sleep(60)"))]
    policy = Policy(backoff_initial_s=0.05, backoff_max_s=0.2, crash_loop_limit=4, poll_s=0.02, stop_timeout_s=5)
    with caplog.at_level(logging.ERROR, logger="app.supervisor"), Running(children, tmp_path, policy) as run:
        started = time.monotonic()
        broken = run.wait_for("broken", lambda s: s["state"] == "crash_loop")
        # three backoffs before the fourth quick exit: 0.05 + 0.1 + 0.2 s
        assert time.monotonic() - started >= 0.35
        time.sleep(0.3)
        assert run.status("broken") == broken, "a crash-looped child is not restarted"
        assert run.status("healthy")["state"] == "running"
    assert broken["restarts"] == 3 and broken["quick_exit_codes"] == [3, 3, 3, 3] and broken["pid"] is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["broken crash-looped: 4 quick exits in a row, exit codes [3, 3, 3, 3]; not restarting it"]


def test_a_child_that_ran_long_enough_restarts_from_the_initial_backoff_and_never_crash_loops(tmp_path):
    policy = Policy(backoff_initial_s=0.05, stable_after_s=0.3, crash_loop_limit=2, poll_s=0.02, stop_timeout_s=5)
    dies_late = Child("dies-late", python("import sys, time; time.sleep(0.4); sys.exit(1)"))
    with Running([dies_late], tmp_path, policy) as run:
        status = run.wait_for("dies-late", lambda s: s["restarts"] >= 3)
    assert status["state"] != "crash_loop" and status["quick_exit_codes"] == [1]
    assert dies_late.backoff_s == policy.backoff_initial_s * 2, "doubled once after each death, then reset"


def test_redis_killed_under_the_supervisor_comes_back_on_its_socket_with_its_aof(tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis")
    with Running([Child("redis", redis.command(), ready=redis.answers)], tmp_path) as run:
        first = run.wait_for("redis", lambda s: s["state"] == "running")
        client = Redis.from_url(redis.url)
        client.set("accepted-job", "still here")
        time.sleep(1.2)  # appendfsync everysec: past one second the write is on disk
        os.kill(first["pid"], signal.SIGKILL)
        run.wait_for("redis", lambda s: s["state"] == "running" and s["pid"] != first["pid"])
        deadline = time.monotonic() + 10
        while not redis.answers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("accepted-job") == b"still here"
        assert run.status("redis")["restarts"] == 1
    assert not redis.answers(), "stopping the supervisor stops Redis"


def assert_private(folder: Path) -> None:
    """Every folder under ``folder`` (itself included) is 0700 and every file 0600."""
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in folder.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.is_file():
            assert mode == 0o600, path


def test_the_model_store_keeps_registered_models_private_whatever_the_source_modes(tmp_path):
    from models.store import ModelStore

    assert stat.S_IMODE((DEMO_DIR / "nih-cardiomegaly" / "manifest.json").stat().st_mode) & 0o044  # readable
    previous = os.umask(PRIVATE_UMASK)
    try:
        store_dir = make_private_folder(tmp_path / "models")
        manifest = ModelStore(store_dir).register_directory(DEMO_DIR / "nih-cardiomegaly")
    finally:
        os.umask(previous)
    assert manifest.artifacts and any((store_dir / "nih-cardiomegaly").rglob("artifacts/*/*"))
    assert_private(store_dir)


def test_the_embedded_redis_narrows_its_folder_and_writes_its_files_0600(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    redis = EmbeddedRedis(folder).start()
    try:
        Redis.from_url(redis.url).set("key", "value")
        time.sleep(1.2)
    finally:
        redis.stop()
    assert {"appendonly.aof", "redis.log"} <= {p.name for p in folder.iterdir()}
    assert_private(folder)


def test_the_embedded_redis_refuses_writes_at_its_memory_limit_instead_of_evicting(tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis", maxmemory_mb=2).start()
    try:
        client = Redis.from_url(redis.url)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("queued-job", "kept")
        with pytest.raises(OutOfMemoryError):
            for i in range(100):
                client.set(f"filler-{i}", b"x" * 100_000)
        assert client.get("queued-job") == b"kept"
    finally:
        redis.stop()


def test_a_service_process_writes_its_model_store_0600_under_0700(tmp_path):
    # Without artifacts: the store copies those with their source's modes (shutil.copytree), which
    # the 0700 data folder then covers.
    model = tmp_path / "model"
    model.mkdir()
    manifest = json.loads((DEMO_DIR / "mnist-3v8" / "manifest.json").read_text())
    manifest.pop("artifacts")
    (model / "manifest.json").write_text(json.dumps(manifest))
    shutil.copyfile(DEMO_DIR / "mnist-3v8" / manifest["weights_file"], model / manifest["weights_file"])
    data = tmp_path / "var"
    env = os.environ | {"XAI_DATA_DIR": str(data), "XAI_LOG_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "app.cli", "register", str(model)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    assert (data / "models" / "mnist-3v8" / "1" / manifest["weights_file"]).is_file()
    assert_private(data)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_xai_serve_restarts_a_killed_worker_and_stops_everything_on_sigterm(tmp_path):
    data, port = tmp_path / "var", free_port()
    env = os.environ | {"XAI_DATA_DIR": str(data), "XAI_PORT": str(port), "XAI_LOG_LEVEL": "WARNING",
                        "XAI_TORCH_THREADS": "1"}
    env.pop("XAI_REDIS_URL", None)
    serve = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env)
    try:
        children = _wait_for_serving(data / "supervisor.json", port)
        os.kill(children["worker-fast"]["pid"], signal.SIGKILL)
        children = _wait_for_serving(data / "supervisor.json", port, lambda c: c["worker-fast"]["restarts"] == 1)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        serve.kill()
    final = json.loads((data / "supervisor.json").read_text())["children"]
    assert {c["state"] for c in final.values()} == {"stopped"}
    for child in children.values():
        with pytest.raises(ProcessLookupError):
            os.kill(child["pid"], 0)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert_private(data / "redis")


def _wait_for_serving(status_file: Path, port: int, condition=lambda children: True, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            children = json.loads(status_file.read_text())["children"]
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            if all(c["state"] == "running" for c in children.values()) and condition(children):
                return children
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("xai serve did not come up with every child running")
