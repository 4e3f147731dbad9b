"""Evidence for the README: deletion and insertion AUC of iGOS++ against IG, Grad-CAM and saliency.

The paper's Table 1 shape on our demo models: for each model, held-out test images, the predicted class
as target, and for every method the mean (and standard deviation) of the service's own deletion and
insertion AUC (``workers.scoring.deletion_insertion``, 50 steps, blur substrate, softmax probability:
the figure every job reports). iGOS++ runs at three mask resolutions: the Grad-CAM layer's, 28 cells
(the paper's medium) and the full input resolution, so each baseline has an iGOS++ row at its own
resolution (Grad-CAM at its layer's; IG and saliency at the input's).

Usage:
    .venv/bin/python bench/igos_table.py [--device auto|cpu|cuda] [--images 20] [--models id,id]
        [--json out.json] [--threads N]

iGOS++ is slow on a CPU (about 1 s per image per mask size for the 28 x 28 digits model, minutes for
the 128 x 128 models): run it on a GPU worker machine, or pass ``--models mnist-3v8`` on a laptop.

Deletion: lower is better. Insertion: higher is better.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import DEMO_DIR
from models.loader import load_classifier, resolve_layer
from models.manifest import ModelManifest

BASELINES = ("integrated_gradients", "grad_cam", "saliency")
STEPS = 50
AUC_KEYS = ("deletion_auc", "insertion_auc")


def demo_model_ids() -> list[str]:
    """Ids of the demo models shipped under models/demo/ (folders with a manifest.json), sorted."""
    return sorted(path.parent.name for path in DEMO_DIR.glob("*/manifest.json"))


def pick_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_demo(
    model_id: str, device: torch.device, count: int
) -> tuple[nn.Module, torch.Tensor, list[int], str]:
    """A demo classifier on ``device``, ``count`` held-out test images, their predicted classes, a note."""
    folder = DEMO_DIR / model_id
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    model = load_classifier(manifest, folder / manifest.weights_file, device)
    images = held_out_images(manifest, count).to(device)
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()
    return model, images, targets, f"{manifest.architecture}, {manifest.output} output; held-out test images"


def held_out_images(manifest: ModelManifest, count: int) -> torch.Tensor:
    """``count`` images of the test split the demo model was evaluated on, the classes in turn.

    Balanced by true class, so a rare class (malignant, the finding) is not left out of a short run.
    """
    from models.training import demo

    if manifest.id not in demo.DEMOS:
        raise SystemExit(f"{manifest.id!r} is not a demo model; known: {', '.join(demo.DEMOS)}")
    split = demo.DEMOS[manifest.id].test_split(demo.DEFAULT_DATA_ROOT)
    by_class = [torch.nonzero(split.labels == label)[:, 0] for label in split.labels.unique()]
    order = torch.stack([indices[: min(len(i) for i in by_class)] for indices in by_class], dim=1).flatten()
    return split.images[order[:count]]


def method_heatmaps(
    name: str,
    model: nn.Module,
    manifest: ModelManifest,
    images: torch.Tensor,
    targets: list[int],
    params: dict,
) -> torch.Tensor:
    """B x H x W heatmaps of one catalogue method, run as a job runs it (explainer + validated params)."""
    from workers.explainers import EXPLAINERS
    from workers.explainers.igos_pp import IgosPP
    from xai.methods import CATALOGUE
    from xai.methods.igos_pp import SPECS

    # iGOS++ straight from its modules, so the table runs whether or not the catalogue lists it yet.
    spec = SPECS[0] if name == IgosPP.name else CATALOGUE[name]
    explainer_class = IgosPP if name == IgosPP.name else EXPLAINERS[name]
    layer = resolve_layer(model, manifest.target_layer) if spec.needs_target_layer else None
    explainer = explainer_class(model, target_layer=layer, artifacts=None)
    return explainer.explain(images, targets, spec.resolve_params(params)).heatmaps


def layer_resolution(model: nn.Module, manifest: ModelManifest, image: torch.Tensor) -> int:
    """The shorter side of the Grad-CAM target layer's output, the resolution its maps really have."""
    shapes = []
    handle = resolve_layer(model, manifest.target_layer).register_forward_hook(
        lambda _module, _inputs, output: shapes.append(output.shape[-2:])
    )
    try:
        with torch.inference_mode():
            model(image)
    finally:
        handle.remove()
    return int(min(shapes[0]))


def score(
    model: nn.Module, images: torch.Tensor, heatmaps: torch.Tensor, targets: list[int]
) -> dict[str, list[float]]:
    """Per-image deletion and insertion AUC with the service's metric (the figure every job reports)."""
    from workers.scoring import deletion_insertion

    runs = [
        deletion_insertion(model, images[i : i + 1], heatmaps[i], targets[i], steps=STEPS)
        for i in range(len(images))
    ]
    return {key: [run[key] for run in runs] for key in AUC_KEYS}


def table_for_model(model_id: str, device: torch.device, count: int) -> list[dict[str, Any]]:
    model, images, targets, _ = load_demo(model_id, device, count)
    manifest = model.manifest
    height, width = images.shape[-2:]
    cam = layer_resolution(model, manifest, images[:1])
    full = min(height, width)
    runs = [
        ("igos_pp", {"mask_size": size}, f"{size} cells" + (" (input)" if size == full else ""))
        for size in sorted({cam, min(28, full), full})
    ]
    runs += [(name, {}, "input" if name != "grad_cam" else f"layer {cam}") for name in BASELINES]
    rows = []
    for name, params, resolution in runs:
        started = time.perf_counter()
        heatmaps = method_heatmaps(name, model, manifest, images, targets, params)
        seconds = (time.perf_counter() - started) / len(images)
        aucs = score(model, images, heatmaps, targets)
        row = {"model": model_id, "method": name, "resolution": resolution, "seconds_per_image": seconds}
        rows.append(row | aucs)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| model | method | resolution | deletion AUC (lower is better) | insertion AUC (higher is better) "
        "| s/image |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{statistics.mean(row[k]):.4f} ± {statistics.pstdev(row[k]):.4f}" for k in AUC_KEYS]
        print(
            f"| {row['model']} | {row['method']} | {row['resolution']} | {cells[0]} | {cells[1]} | "
            f"{row['seconds_per_image']:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=20, help="held-out images per model (default 20)")
    parser.add_argument("--models", default=None, help="comma-separated demo ids (default: every demo model)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-image AUCs here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ids = args.models.split(",") if args.models else demo_model_ids()
    if not ids:
        raise SystemExit("no demo model under models/demo/: build them first (models/training/demo.py)")
    rows = []
    for model_id in ids:
        rows += table_for_model(model_id, device, args.images)
    print(f"device {device}; {args.images} held-out images per model; target = predicted class; "
          f"metric: workers.scoring.deletion_insertion, {STEPS} steps, blur substrate, softmax probability")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
