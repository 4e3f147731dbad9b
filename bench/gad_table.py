"""Evidence for the README: GAD's complexity (RC) and sensitivity (RS) on held-out demo images.

The shape of the paper's Tables 1 and 2, on our demo models and their shipped support models: for each
model, ``--per-class`` held-out test images of each true class, explained for the class the model
predicts, and for each base method

- ``RC<1``: images whose GAD hull is smaller than the base map's (equation 1, top 50% of pixels);
- mean RS (equation 2, change of the target's softmax probability per occluded pixel, pixels set to 0)
  of the GAD hull and of the supplementary mask (base hull minus GAD hull), and the number of images
  where the GAD hull has the larger RS;
- a control the paper argues against but does not measure: a plain intensity filter keeping the same
  number of the base map's top pixels as GAD keeps ("top-k"). If GAD only thinned the map, the control
  would match it; where GAD's RS beats the control's, the support models found pixels that matter more.

Usage:
    .venv/bin/python bench/gad_table.py [--device auto|cpu|cuda] [--per-class 32] [--models id,id]
        [--methods saliency,...] [--n-steps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from models.loader import load_classifier
from models.manifest import ModelManifest
from models.training import demo
from workers.explainers.gad import (
    BASE_METHODS,
    GAD,
    complexity_ratio,
    hull_masks,
    region_sensitivity,
    top_pixels,
)
from workers.runtime import pick_device
from xai.methods.gad import SPECS

DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
BATCH = 16


def held_out(manifest: ModelManifest, per_class: int) -> torch.Tensor:
    """The first ``per_class`` images of each true class of the test split the demo model was evaluated
    on (``models.training.demo.DEMOS``): never seen by the classifier's or GAD's training."""
    split = demo.DEMOS[manifest.id].test_split(demo.DEFAULT_DATA_ROOT)
    labels = split.labels
    chosen = torch.cat([torch.nonzero(labels == label)[:per_class, 0] for label in labels.unique()])
    return split.images[chosen]


def control_figures(
    model: torch.nn.Module, images: torch.Tensor, targets: list[int], base_map: torch.Tensor,
    kept: list[int], hull_fraction: float,
) -> tuple[list[float | None], list[float | None]]:
    """RC and RS of the intensity-filter control: the base map's top-k pixels, k = what GAD kept."""
    pixels = base_map[0].numel()
    maps = torch.stack([
        base * top_pixels(base, count / pixels) if count else torch.zeros_like(base)
        for base, count in zip(base_map, kept)
    ])
    rc = [complexity_ratio(m, b, hull_fraction)["rc"] for m, b in zip(maps, base_map)]
    rs = region_sensitivity(model, images, hull_masks(top_pixels(maps, hull_fraction)), targets)
    return rc, rs


def evaluate(model_id: str, device: torch.device, per_class: int, methods: list[str], n_steps: int) -> list:
    """One row per base method for one demo model."""
    folder = DEMO_DIR / model_id
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, device)
    explainer = GAD(classifier, artifacts=folder / manifest.artifacts["gad"])
    images = held_out(manifest, per_class)
    rows = []
    for method in methods:
        params = SPECS[0].resolve_params({"base_method": method, "n_steps": n_steps})
        started = time.perf_counter()
        figures = [figure for chunk in images.split(BATCH) for figure in explain_chunk(
            classifier, explainer, chunk.to(device), params
        )]
        rows.append(summarise(model_id, method, figures, time.perf_counter() - started))
    return rows


def explain_chunk(
    classifier: torch.nn.Module, explainer: GAD, images: torch.Tensor, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """GAD and control figures of each image, explained for its predicted class."""
    with torch.inference_mode():
        targets = classifier(images).argmax(dim=1).tolist()
    result = explainer.explain(images, targets, params)
    kept = [detail["important_pixels"]["gad"] for detail in result.details]
    base_map = result.images["base_map"][:, 0]
    hull_fraction = params["hull_top_fraction"]
    rc_top_k, rs_top_k = control_figures(classifier, images, targets, base_map, kept, hull_fraction)
    return [
        {
            "rc": detail["rc"], "rs_gad": detail["rs"]["gad"], "rs_sup": detail["rs"]["supplementary"],
            "retained": detail["retained_fraction"], "rc_top_k": rc, "rs_top_k": rs,
        }
        for detail, rc, rs in zip(result.details, rc_top_k, rs_top_k)
    ]


def summarise(model_id: str, method: str, figures: list[dict], seconds: float) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        present = [f[key] for f in figures if f[key] is not None]
        return statistics.fmean(present) if present else None

    def count(condition) -> int:
        return sum(1 for f in figures if condition(f))

    def above(key: str):
        return lambda f: f["rs_gad"] is not None and f[key] is not None and f["rs_gad"] > f[key]

    def defined(key: str):
        return lambda f: f["rs_gad"] is not None and f[key] is not None

    return {
        "model": model_id,
        "base_method": method,
        "images": len(figures),
        "rc_below_1": count(lambda f: f["rc"] is not None and f["rc"] < 1),
        "rc_below_1_top_k": count(lambda f: f["rc_top_k"] is not None and f["rc_top_k"] < 1),
        "mean_rc": mean("rc"),
        "mean_retained_fraction": mean("retained"),
        "mean_rs_gad": mean("rs_gad"),
        "mean_rs_supplementary": mean("rs_sup"),
        "mean_rs_top_k": mean("rs_top_k"),
        "rs_gad_above_supplementary": f"{count(above('rs_sup'))}/{count(defined('rs_sup'))}",
        "rs_gad_above_top_k": f"{count(above('rs_top_k'))}/{count(defined('rs_top_k'))}",
        "seconds": round(seconds, 1),
    }


def print_table(rows: list[dict]) -> None:
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3g}"

    print("| model | base method | images | RC<1 GAD | RC<1 top-k | mean RC | retained | RS GAD | RS Sup. "
          "| RS top-k | RS GAD > Sup. | RS GAD > top-k |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [
            row["model"], row["base_method"], row["images"], row["rc_below_1"], row["rc_below_1_top_k"],
            number(row["mean_rc"]), number(row["mean_retained_fraction"]), number(row["mean_rs_gad"]),
            number(row["mean_rs_supplementary"]), number(row["mean_rs_top_k"]),
            row["rs_gad_above_supplementary"], row["rs_gad_above_top_k"],
        ]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--per-class", type=int, default=32, help="held-out images per true class")
    parser.add_argument("--models", default=None, help="demo ids (default: every demo model with GAD)")
    parser.add_argument("--methods", default=",".join(BASE_METHODS))
    parser.add_argument("--n-steps", type=int, default=50, help="integrated-gradient steps")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
    paths = sorted(DEMO_DIR.glob("*/manifest.json"))
    manifests = [ModelManifest.model_validate_json(path.read_text()) for path in paths]
    with_gad = [manifest.id for manifest in manifests if "gad" in manifest.artifacts]
    models = args.models.split(",") if args.models else with_gad
    rows = []
    for model_id in models:
        rows += evaluate(model_id, device, args.per_class, args.methods.split(","), args.n_steps)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
