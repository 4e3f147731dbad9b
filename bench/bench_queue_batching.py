"""Fast-queue throughput through the real service: waiting jobs batched into one pass vs one by one.

Submits N identical-method requests (N = 1, 8, 32) through the gateway to a real Redis, then times
one burst worker draining the queue with XAI_BATCH_MAX = N (batched) and = 1 (one by one), on the
same model, method and images, and prints the ratio measured in this run. Run by hand:

    .venv/bin/python bench/bench_queue_batching.py --model mnist-3v8 --method syce --device cpu
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.store import ModelStore  # noqa: E402
from models.training.demo import DEMOS  # noqa: E402
from service.main import create_app  # noqa: E402
from workers.main import run_worker  # noqa: E402
from app.embedded import EmbeddedRedis  # noqa: E402
from xai.settings import Settings  # noqa: E402


def held_out_pngs(model_id: str, count: int) -> list[bytes]:
    test = DEMOS[model_id].test_split(REPO.parent / "shared" / "data")
    images = []
    for index in range(count):
        array = (test.images[index % len(test.images)].permute(1, 2, 0).squeeze(-1).numpy() * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def drain_seconds(settings: Settings, model_id: str, method: str, pngs: list[bytes]) -> float:
    with TestClient(create_app(settings)) as client:
        for data in pngs:
            response = client.post("/v1/explanations", data={"model_id": model_id, "method": method},
                                   files={"file": ("x.png", data)})
            assert response.status_code == 202, response.text
    started = time.perf_counter()
    run_worker(settings, ["fast", "slow"], burst=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist-3v8")
    parser.add_argument("--method", default="syce")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--counts", default="1,8,32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        redis = EmbeddedRedis(Path(scratch) / "redis", appendonly=False).start()
        try:
            base = Settings(redis_url=redis.url, data_dir=Path(scratch), device=args.device, log_level="WARNING")
            ModelStore(base.model_store_dir).register_directory(REPO / "models" / "demo" / args.model)
            drain_seconds(base.model_copy(update={"batch_max": 1}), args.model, args.method,
                          held_out_pngs(args.model, 2))  # warm-up: imports, first model load
            print(f"{args.model} / {args.method} on {args.device}, {args.threads} thread(s)")
            print("requests  one-by-one s  batched s  speed-up")
            for count in (int(c) for c in args.counts.split(",")):
                pngs = held_out_pngs(args.model, count)
                single = drain_seconds(base.model_copy(update={"batch_max": 1}), args.model, args.method, pngs)
                batched = drain_seconds(base.model_copy(update={"batch_max": count}), args.model, args.method, pngs)
                print(f"{count:8d}  {single:12.3f}  {batched:9.3f}  {single / batched:7.2f}x")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
