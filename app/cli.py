"""The ``xai`` command: run the service (embedded or as separate parts), register models, train.

    xai serve [--port N]                      embedded Redis + one worker per queue + gateway, supervised
    xai gateway [--host H] [--port N]         the gateway alone, against XAI_REDIS_URL
    xai worker --queues fast,slow [--device cuda:0]
    xai register FOLDER                       register a model folder (manifest.json + weights)
    xai train classifier|demo|syce|cyce|gad   see `xai train --help`
    xai explain FILE|FOLDER... --model ID --method M[,M2] [--params JSON] [--server URL] [--key-file F] [--out DIR]
    xai jobs | models | methods [--json]      list, from a running service
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from app import logs
from app.embedded import PRIVATE_UMASK, make_private_folder
from app.memory import keep_freed_memory
from models import DEMO_DIR
from xai.jobs import QUEUES
from xai.settings import Settings

PILLOW_BLOCKS_KEPT = 8  # of Pillow's 16 MiB image blocks, kept by the gateway for reuse (at most 128 MiB)
log = logging.getLogger("app.cli")


def main(argv: list[str] | None = None) -> int:
    # First, so the AOF, model store, results and logs this process and its children write are 0600/0700.
    os.umask(PRIVATE_UMASK)
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    # A client command's output is for a person at a terminal: only warnings and errors are logged there.
    logs.configure("WARNING" if getattr(args, "client", False) else settings.log_level, args.command)
    return args.run(args, settings) or 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="embedded mode: Redis, workers and gateway in one command")
    serve.add_argument("--host", default=None, help="bind address (default XAI_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="gateway port (default XAI_PORT, 8000)")
    serve.set_defaults(run=_serve)

    gateway = commands.add_parser("gateway", help="run the gateway against XAI_REDIS_URL")
    gateway.add_argument("--host", default=None)
    gateway.add_argument("--port", type=int, default=None)
    gateway.set_defaults(run=_gateway)

    worker = commands.add_parser("worker", help="run a worker against XAI_REDIS_URL")
    worker.add_argument("--queues", default="fast,slow", help="comma-separated: fast, slow, train")
    worker.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default XAI_DEVICE)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(run=_worker)

    register = commands.add_parser("register", help="register a model folder into the model store")
    register.add_argument("folder", type=Path)
    register.set_defaults(run=_register)

    from app.client_cli import add_client_commands
    from app.training_cli import add_train_commands

    add_train_commands(commands)
    add_client_commands(commands)
    return parser


def _serve(args, settings: Settings) -> int:
    """Start everything locally and keep it running (see app/supervisor.py); Ctrl-C stops it all."""
    from app.embedded import EmbeddedRedis
    from app.supervisor import Child, Supervisor
    from models.store import ModelStore

    settings = _with_bind(settings, args)
    from service.main import check_exposure

    check_exposure(settings)
    make_private_folder(settings.data_dir)
    children = []
    if not settings.redis_url:
        redis = EmbeddedRedis(settings.data_dir / "redis", maxmemory_mb=settings.redis_maxmemory_mb,
                              appendfsync=settings.redis_appendfsync)
        children.append(Child("redis", redis.command(), ready=redis.answers))
        settings = settings.model_copy(update={"redis_url": redis.url})
    store = ModelStore(settings.model_store_dir)
    for folder in sorted(DEMO_DIR.glob("*/manifest.json")):
        manifest = store.register_directory(folder.parent)
        log.info("demo model %s ready", manifest.key)
    env = os.environ | {
        "XAI_REDIS_URL": settings.redis_url,
        "XAI_DATA_DIR": str(settings.data_dir.resolve()),
        "XAI_MODEL_DIR": str(settings.model_store_dir.resolve()),
        "XAI_HOST": settings.host,
        "XAI_PORT": str(settings.port),
    }
    commands = {f"worker-{q}": ["worker", "--queues", q] for q in QUEUES} | {"gateway": ["gateway"]}
    children += [Child(name, [sys.executable, "-m", "app.cli", *cmd]) for name, cmd in commands.items()]
    status_file = settings.data_dir / "supervisor.json"
    log.info("serving on http://%s:%s (Ctrl-C to stop); status in %s", settings.host, settings.port, status_file)
    Supervisor(children, status_file, env).run(_stop_on_signals())
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop.set())
    return stop


def _with_bind(settings: Settings, args) -> Settings:
    update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return settings.model_copy(update=update)


def _gateway(args, settings: Settings) -> int:
    import uvicorn
    from PIL import Image
    from threadpoolctl import threadpool_limits

    from service.main import create_app

    settings = _with_bind(settings, args)
    _require_redis(settings)
    # Each request is one thread's work; BLAS's own threads (the shrink to the model's size is two matrix
    # products) would only wake, spin and compete with the workers on the same cores.
    threadpool_limits(1, user_api="blas")
    # Pillow's block allocator keeps no freed block by default, so every large upload's image buffers are
    # fresh memory, faulted in and zeroed (a 3000 px float image: about 20 ms); reuse up to 8 of 16 MB.
    Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)
    keep_freed_memory()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


def _worker(args, settings: Settings) -> int:
    from workers.main import run_worker

    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    keep_freed_memory()
    _require_redis(settings)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - set(QUEUES)
    if unknown:
        raise SystemExit(f"unknown queue(s) {', '.join(sorted(unknown))}; queues: {', '.join(QUEUES)}")
    run_worker(settings, queues, burst=args.burst)
    return 0


def _register(args, settings: Settings) -> int:
    from models.store import ModelStore

    manifest = ModelStore(settings.model_store_dir).register_directory(args.folder)
    print(f"registered {manifest.key} (sha256 {manifest.weights_sha256[:12]}...)")
    return 0


def _require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("set XAI_REDIS_URL (e.g. redis://localhost:6379/0), or use `xai serve` for embedded mode")


if __name__ == "__main__":
    sys.exit(main())
