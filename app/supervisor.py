"""Keep the processes of ``xai serve`` running: restart a child that dies, after a backoff, until it
crash-loops; report each child's state in a JSON status file.

A child that dies is restarted after a delay that doubles from ``backoff_initial_s`` up to
``backoff_max_s``; one that had run longer than ``stable_after_s`` starts again from the initial
delay, since its death is then an incident rather than a loop. After ``crash_loop_limit`` quick deaths
in a row the child is left stopped (state ``crash_loop``) and logged at ERROR with its exit codes:
restarting it for ever would hide a broken configuration behind a busy log.

A child with a ``ready`` check (Redis) is one the others need: it starts first and is waited for,
and it stops after them, so workers can hand their jobs back on the way out.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("app.supervisor")

RUNNING, BACKING_OFF, CRASH_LOOP, STOPPED = "running", "backing_off", "crash_loop", "stopped"


@dataclass
class Child:
    """What to run (``name``, ``command``, ``ready``) and what the supervisor knows of its last run."""

    name: str
    command: list[str]
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen | None = None
    state: str = STOPPED
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = 0.0
    quick_exit_codes: list[int] = field(default_factory=list)
    last_exit_code: int | None = None

    def status(self) -> dict:
        return {
            "pid": self.process.pid if self.state == RUNNING else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "quick_exit_codes": self.quick_exit_codes,
        }


@dataclass
class Policy:
    """The defaults are those of ``xai serve``; tests shorten them."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_after_s: float = 60.0
    crash_loop_limit: int = 5
    poll_s: float = 0.2
    ready_timeout_s: float = 15.0
    stop_timeout_s: float = 15.0


class Supervisor:
    """``run(stop)`` starts the children in order, supervises them until ``stop`` is set, then stops them."""

    def __init__(self, children: list[Child], status_file: Path, env: dict[str, str] | None = None,
                 policy: Policy | None = None):
        self.children = children
        self.status_file = Path(status_file)
        self.env = env
        self.policy = policy or Policy()

    def run(self, stop: threading.Event) -> None:
        try:
            self.start()
            while not stop.wait(self.policy.poll_s):
                self.check()
        finally:
            self.stop()

    def start(self) -> None:
        for child in self.children:
            self._launch(child)
            child.backoff_s = self.policy.backoff_initial_s
            if child.ready:
                self._wait_until_ready(child)
        self.write_status()

    def check(self) -> None:
        """Note the children that died and restart those whose backoff has passed."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.state == RUNNING and child.process.poll() is not None:
                self._on_exit(child, now)
                changed = True
            elif child.state == BACKING_OFF and now >= child.restart_at:
                self._launch(child)
                child.restarts += 1
                changed = True
        if changed:
            self.write_status()

    def stop(self) -> None:
        """SIGTERM the children the others need only once the others have exited."""
        needed = [c for c in self.children if c.ready]
        self._terminate([c for c in self.children if not c.ready])
        self._terminate(needed)
        self.write_status()

    def write_status(self) -> None:
        """Replace the file whole, so a reader never sees half of it."""
        status = {"pid": os.getpid(), "updated": time.time(),
                  "children": {child.name: child.status() for child in self.children}}
        temporary = self.status_file.with_name(self.status_file.name + ".tmp")
        temporary.write_text(json.dumps(status, indent=2))
        os.replace(temporary, self.status_file)

    def _launch(self, child: Child) -> None:
        # A process group of its own: Ctrl-C in the terminal reaches the supervisor alone, which then
        # stops the children in order instead of Redis going down under working workers.
        child.process = subprocess.Popen(child.command, env=self.env, stdin=subprocess.DEVNULL, process_group=0)
        child.state = RUNNING
        child.started_at = time.monotonic()

    def _wait_until_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.policy.ready_timeout_s
        while not child.ready():
            if child.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not come up (exit code {child.process.poll()})")
            time.sleep(0.05)

    def _on_exit(self, child: Child, now: float) -> None:
        child.last_exit_code = child.process.returncode
        if now - child.started_at > self.policy.stable_after_s:
            child.quick_exit_codes = []
            child.backoff_s = self.policy.backoff_initial_s
        child.quick_exit_codes.append(child.last_exit_code)
        if len(child.quick_exit_codes) >= self.policy.crash_loop_limit:
            child.state = CRASH_LOOP
            log.error("%s crash-looped: %d quick exits in a row, exit codes %s; not restarting it",
                      child.name, len(child.quick_exit_codes), child.quick_exit_codes)
            return
        child.state = BACKING_OFF
        child.restart_at = now + child.backoff_s
        log.warning("%s exited with %s; restarting it in %.1f s", child.name, child.last_exit_code, child.backoff_s)
        child.backoff_s = min(child.backoff_s * 2, self.policy.backoff_max_s)

    def _terminate(self, children: list[Child]) -> None:
        running = [c for c in children if c.state == RUNNING and c.process.poll() is None]
        for child in running:
            child.process.terminate()
        deadline = time.monotonic() + self.policy.stop_timeout_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", child.name, self.policy.stop_timeout_s)
                child.process.kill()
                child.process.wait()
        for child in children:
            if child.state != CRASH_LOOP:
                child.state = STOPPED
