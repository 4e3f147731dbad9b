"""Peak memory of the gateway's ingest and of a worker's job, for a small and for the largest allowed upload.

Each measurement runs in a fresh process (peak RSS from getrusage, minus the process's RSS before the
work), so one does not inherit another's allocations. The upload is a real NIH chest X-ray enlarged
to N x N and sent as PNG; the job is one method on nih-cardiomegaly, run through the worker's own
pipeline against a Redis started here.

Usage:
    .venv/bin/python bench/bench_memory.py [--sizes 1024 6000] [--method saliency] [--patch-mode]

Prints, per size, the gateway's and the worker's peak above baseline in MiB and the ratio of the
largest size to the smallest: with inputs reduced at the gateway the worker's figure should not
grow with the upload (it does in patch mode, which keeps the upload at its own resolution).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "nih-cardiomegaly"


def upload_png(side: int) -> bytes:
    from PIL import Image

    image = Image.open(REPO / "examples" / "00000211_019.png").convert("L").resize((side, side), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def measure_gateway(png_path: str, redis_url: str, job_id: str, patch_mode: bool) -> dict:
    """Decode, validate and store one upload as the gateway does; returns the peak above baseline."""
    from models.store import ModelStore
    from service.ingest import ingest_upload, job_inputs, limits_from_settings
    from xai.settings import Settings

    settings = Settings(redis_url=redis_url, data_dir=Path(png_path).parent / "var")
    store = ModelStore(settings.model_store_dir)
    manifest = store.get(MODEL)
    data = Path(png_path).read_bytes()
    from redis import Redis

    connection = Redis.from_url(redis_url)
    before = _rss_mib()
    decoded = ingest_upload(data, limits=limits_from_settings(settings))
    inputs = job_inputs(job_id, decoded, manifest.input, display_max_side=settings.display_max_side,
                        keep_native=patch_mode)
    for key, blob in inputs.items():
        connection.set(key, blob)
    height, width = decoded.pixels.shape[:2]
    return {"peak_mib": _peak_mib() - before, "height": height, "width": width, "meta": decoded.meta}


def measure_worker(redis_url: str, data_dir: str, job_json: str) -> dict:
    """Run one stored job through the worker pipeline; returns the peak above the loaded-model baseline."""
    from redis import Redis

    from workers.pipeline import explain_batch
    from workers.runtime import GroupProgress, WorkerContext, set_torch_threads
    from xai.jobs import ExplainJob
    from xai.settings import Settings

    set_torch_threads(1)
    settings = Settings(redis_url=redis_url, data_dir=Path(data_dir), device="cpu")
    context = WorkerContext(settings, Redis.from_url(redis_url))
    job = ExplainJob.model_validate_json(job_json)
    context.models.get(job.model_id, job.model_version)  # resident, as in a running worker
    before = _rss_mib()
    ends = explain_batch(context, [job], GroupProgress([], None))
    outcome = ends[job.job_id]
    return {"peak_mib": _peak_mib() - before, "ok": not isinstance(outcome, dict), "outcome": str(outcome)[:200]}


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")  # the process's peak resident set so far


def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (reported in kB), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _in_fresh_process(function: str, *args: str) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(REPO)!r}); from bench.bench_memory import {function}; " \
           f"print(json.dumps({function}(*sys.argv[1:])))"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{function} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 6000])
    parser.add_argument("--method", default="saliency")
    parser.add_argument("--patch-mode", action="store_true")
    args = parser.parse_args()

    import time

    from app.embedded import EmbeddedRedis
    from models import DEMO_DIR
    from models.store import ModelStore
    from xai.jobs import ExplainJob, InputInfo
    from xai.methods import get_method

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        redis = EmbeddedRedis(scratch_path / "redis", appendonly=False).start()
        try:
            store = ModelStore(scratch_path / "var" / "models")
            manifest = store.register_directory(DEMO_DIR / MODEL)
            for side in args.sizes:
                png_path = scratch_path / f"upload_{side}.png"
                png_path.write_bytes(upload_png(side))
                job_id = f"{side:032d}"
                gateway = _in_fresh_process("measure_gateway", str(png_path), redis.url, job_id,
                                            "1" if args.patch_mode else "")
                job = ExplainJob(job_id=job_id, submitted_at=time.time(), model_id=MODEL,
                                 model_version=manifest.version, methods=[args.method], params={args.method: get_method(args.method).resolve_params({})},
                                 patch_mode=args.patch_mode,
                                 input=InputInfo(height=gateway["height"], width=gateway["width"], channels=1))
                worker = _in_fresh_process("measure_worker", redis.url, str(scratch_path / "var"),
                                           job.model_dump_json())
                rows.append((side, png_path.stat().st_size, gateway["peak_mib"], worker["peak_mib"], worker["ok"]))
        finally:
            redis.stop()
    print(f"{args.method} on {MODEL}, patch_mode={args.patch_mode}; peak RSS above each process's baseline")
    print("| upload | PNG bytes | gateway ingest MiB | worker job MiB | job ok |")
    print("|---|---|---|---|---|")
    for side, size, gateway_mib, worker_mib, ok in rows:
        print(f"| {side} x {side} | {size:,} | {gateway_mib:.0f} | {worker_mib:.0f} | {ok} |")
    first, last = rows[0], rows[-1]
    print(f"ratio {last[0]} / {first[0]}: gateway {last[2] / max(first[2], 1):.1f}x, "
          f"worker {last[3] / max(first[3], 1):.2f}x")


if __name__ == "__main__":
    main()
