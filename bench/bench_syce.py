"""SyCE speed and counterfactual quality, measured on the held-out test split of a demo model:

0. (``--parts quality``) per variant (SyCE, CyCE): flip rate (the adversarial image of each image
   flips its decision), stable rate (SyCE: G(G(x)) keeps it) and transfer rate (the change
   ``G(a) - a`` of one image added to another image of the same decision flips that one; a high
   transfer rate means the generator paints a universal adversarial texture, not a counterfactual
   of the image; ``models.training.syce.transfer_rate``).
   With ``--through-png`` every image the generators return and every image the classifier is asked
   about is first rounded to 8 bits, as the API's ``adversarial.png`` carries it and as a caller
   sends an edited image back: do the figures hold for what a caller downloads?
1. latency per image of SyCE against integrated gradients (50 steps, the catalogue's defaults) on the
   same model and the same input, as a ratio;
2. throughput of SyCE explaining n images as one batch (what the fast worker does with n queued
   requests that share a model) against n one-image calls, for n = 1, 8 and 32, as a ratio.

Explainers are built once before timing (the worker keeps them); the time to build one (reading the
artifact) is printed too. Each figure is the median of ``--repeats`` runs after one warm-up run, the
two sides of each ratio timed alternately so that a change in machine load affects both.

Usage:
    .venv/bin/python bench/bench_syce.py [--model busi-malignancy] [--parts quality,speed] [--device cpu]
        [--repeats 9] [--threads N] [--donors 32] [--demo-dir models/demo] [--through-png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models.artifacts.syce import load_artifact
from models.loader import load_classifier
from models.manifest import ModelManifest
from models.training import demo
from models.training.syce import evaluate_pair, transfer_rate
from workers.explainers.integrated_gradients import IntegratedGradients
from workers.explainers.syce import SyCE
from xai.methods import CATALOGUE
from xai.methods.syce import SPECS

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "models" / "demo"
BATCHES = (1, 8, 32)


def paired_median_seconds(
    first: Callable[[], object], second: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of two runs, timed alternately so that a change in machine load hits both."""
    first(), second()  # warm-up: allocator, kernels, caches
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, bucket in zip((first, second), times):
            _synchronize(device)
            started = time.perf_counter()
            run()
            _synchronize(device)
            bucket.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_png(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG keeps of images in [0, 1]."""
    return (images.clamp(0, 1) * 255).round() / 255


class ClassifiedAsPng(torch.nn.Module):
    """The classifier asked about each image as an 8-bit PNG of it (a caller's upload) would show it."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(as_png(images))


class GeneratedAsPng:
    """A generator pair whose images are rounded to 8 bits, as ``adversarial.png`` and ``stable.png`` are."""

    def __init__(self, pair):
        self.pair = pair

    def __getattr__(self, name: str):
        return getattr(self.pair, name)

    def translate(self, images: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        return as_png(self.pair.translate(images, sides))


def quality(
    classifier: torch.nn.Module,
    folder: Path,
    manifest: ModelManifest,
    images: torch.Tensor,
    device: torch.device,
    donors: int,
    through_png: bool = False,
) -> dict:
    """Flip, stable and transfer rate of each shipped variant on ``images``."""
    report = {}
    if through_png:
        classifier = ClassifiedAsPng(classifier)
    for variant in ("syce", "cyce"):
        if variant not in manifest.artifacts:
            continue
        pair = load_artifact(folder / manifest.artifacts[variant], device)
        if through_png:
            pair = GeneratedAsPng(pair)
        own = evaluate_pair(classifier, pair, images, device)
        report[variant] = {**own, **transfer_rate(classifier, pair, images, device, donors)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="busi-malignancy", choices=sorted(demo.DEMOS))
    parser.add_argument("--parts", default="quality,speed", help="quality, speed or both, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--donors", type=int, default=32, help="images per side whose change is transferred")
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help="folder of the demo models")
    parser.add_argument("--through-png", action="store_true", help="quality of the images as 8-bit PNGs carry them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = args.demo_dir / args.model
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, device)
    _, test = demo.DEMOS[args.model].splits(demo.DEFAULT_DATA_ROOT, manifest.input)
    parts = args.parts.split(",")
    if "quality" in parts:
        figures = quality(classifier, folder, manifest, test.images, device, args.donors, args.through_png)
        print(json.dumps({"model": args.model, "split": "test", "through_png": args.through_png, "quality": figures},
                         indent=2), flush=True)
    if "speed" in parts:
        print(json.dumps(speed(classifier, folder, manifest, test.images, device, args.repeats), indent=2))


def speed(
    classifier: torch.nn.Module,
    folder: Path,
    manifest: ModelManifest,
    test_images: torch.Tensor,
    device: torch.device,
    repeats: int,
) -> dict:
    """Part 1 and 2 of the module docstring."""
    images = test_images[: max(BATCHES)].to(device)
    with torch.no_grad():
        targets = classifier(images).argmax(1).tolist()

    started = time.perf_counter()
    syce = SyCE(classifier, artifacts=folder / manifest.artifacts["syce"])
    build_ms = (time.perf_counter() - started) * 1000
    integrated = IntegratedGradients(classifier)
    syce_params = SPECS[0].resolve_params({})
    ig_params = CATALOGUE["integrated_gradients"].resolve_params({"n_steps": 50})

    one = images[:1]
    syce_s, ig_s = paired_median_seconds(
        lambda: syce.explain(one, targets[:1], syce_params),
        lambda: integrated.explain(one, targets[:1], ig_params),
        repeats,
        device,
    )
    report = {
        "model": manifest.id,
        "input": list(images.shape[1:]),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "syce_explainer_build_ms": round(build_ms, 1),
        "latency_ms": {"syce": round(syce_s * 1000, 2), "integrated_gradients_50": round(ig_s * 1000, 2)},
        "ig_over_syce": round(ig_s / syce_s, 1),
        "batching": [],
    }
    for n in BATCHES:
        batched, one_by_one = paired_median_seconds(
            lambda n=n: syce.explain(images[:n], targets[:n], syce_params),
            lambda n=n: [syce.explain(images[i : i + 1], targets[i : i + 1], syce_params) for i in range(n)],
            repeats,
            device,
        )
        report["batching"].append(
            {
                "requests": n,
                "batched_images_per_s": round(n / batched, 1),
                "one_by_one_images_per_s": round(n / one_by_one, 1),
                "speedup": round(one_by_one / batched, 2),
            }
        )
    return report


if __name__ == "__main__":
    main()
