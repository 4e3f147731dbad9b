"""A picture of what the shipped SyCE and CyCE generators do: ``docs/syce/<model>_grid.png``.

Columns: held-out test images of a demo model, the first ``--per-side`` the classifier decides as
the explained class and the first it decides otherwise (for the NIH model, decided-positive columns
are taken among the images with a Cardiomegaly box first). Rows:

1. input, with the classifier's probability of the explained class;
2. SyCE adversarial image ``G(x)`` and its probability;
3. SyCE stable image ``G(G(x))`` and its probability;
4. the SyCE heatmap ``|G(G(x)) - G(x)|``, with the expert annotation (NIH box, BUSI lesion mask)
   outlined where there is one;
5. the change ``G(x) - x`` (signed, blue darker, red brighter; each column scaled to its own largest
   change, printed): a universal texture looks the same in every column;
6. CyCE counterfactual ``G(x)`` and its probability;
7. the CyCE heatmap ``|x - G(x)|`` with the annotation.

Usage:
    .venv/bin/python bench/syce_grid.py [--models mnist-3v8,nih-cardiomegaly,busi-malignancy]
        [--per-side 3] [--out docs/syce] [--demo-dir models/demo]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch

from models.artifacts.syce import load_artifact, side_logit
from models.loader import load_classifier
from models.manifest import ModelManifest
from models.training import demo
from models.training.data import read_image
from xai.imaging import DecodeLimits

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "models" / "demo"
DATA = demo.DEFAULT_DATA_ROOT
ROWS = (
    "input",
    "SyCE adversarial",
    "SyCE stable",
    "SyCE heatmap",
    "SyCE change G(x) - x",
    "CyCE counterfactual",
    "CyCE heatmap",
)


def test_names(model_id: str) -> list[str] | None:
    """File names of the test split in the order ``demo.DEMOS[model_id].splits`` reads it (None: MNIST)."""
    folder = {"nih-cardiomegaly": "nih_cxr14_bbox", "busi-malignancy": "busi"}.get(model_id)
    if folder is None:
        return None
    with open(DATA / folder / "labels.csv", newline="") as handle:
        return [row["image"] for row in csv.DictReader(handle) if row["split_hint"] == "test"]


def annotation(model_id: str, name: str | None, size: tuple[int, int]) -> np.ndarray | None:
    """The expert annotation of one test image at the model size (None where there is none)."""
    if model_id == "busi-malignancy":
        mask = read_image(DATA / "busi" / "masks" / name, DecodeLimits()).astype(np.float32)
        mask = torch.from_numpy(mask.mean(-1) if mask.ndim == 3 else mask)[None, None]
        return torch.nn.functional.interpolate(mask, size=size, mode="nearest")[0, 0].numpy() > 0.5
    if model_id != "nih-cardiomegaly":
        return None
    mask = np.zeros(size, dtype=bool)
    with open(DATA / "nih_cxr14_bbox" / "bbox.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["image"] == name and row["finding"] == "Cardiomegaly":
                x, y, w, h = (float(row[c]) * size[0] / 256 for c in ("x_256", "y_256", "w_256", "h_256"))
                mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
    return mask if mask.any() else None


def choose(sides: torch.Tensor, names: list[str] | None, model_id: str, size, per_side: int) -> list[int]:
    """Indices: ``per_side`` decided-positive images (annotated ones first for NIH), then decided-negative."""
    positive = torch.nonzero(sides == 1)[:, 0].tolist()
    if model_id == "nih-cardiomegaly":
        positive.sort(key=lambda i: annotation(model_id, names[i], size) is None)  # stable: keeps order
    negative = torch.nonzero(sides == 0)[:, 0].tolist()
    return positive[:per_side] + negative[:per_side]


def grid(model_id: str, per_side: int, out: Path, demo_dir: Path = DEMO_DIR) -> Path:
    folder = demo_dir / model_id
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, "cpu")
    _, test = demo.DEMOS[model_id].splits(DATA, manifest.input)
    names = test_names(model_id)
    syce = load_artifact(folder / manifest.artifacts["syce"], "cpu")
    cyce = load_artifact(folder / manifest.artifacts["cyce"], "cpu")
    size = (manifest.input.height, manifest.input.width)
    with torch.inference_mode():
        sides = syce.sides(classifier(test.images))
        chosen = choose(sides, names, model_id, size, per_side)
        x, s = test.images[chosen], sides[chosen]
        adversarial = syce.translate(x, s)
        stable = syce.translate(adversarial, s)
        counterfactual = cyce.translate(x, s)
        images = [
            x,
            adversarial,
            stable,
            (stable - adversarial).abs(),
            adversarial - x,
            counterfactual,
            (x - counterfactual).abs(),
        ]
        probability = {
            row: torch.sigmoid(side_logit(classifier(images[r]), syce.target_class))
            for r, row in enumerate(ROWS)
            if r in (0, 1, 2, 5)
        }
    names_shown = [names[i] if names else f"t10k #{i}" for i in chosen]
    figure = draw(images, probability, names_shown, model_id, manifest, size)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model_id}_grid.png"
    figure.savefig(path, dpi=72)
    plt.close(figure)
    return path


def draw(images, probability, names, model_id, manifest, size):
    """The figure: one row per entry of ``ROWS``, one column per image."""
    columns = len(names)
    figure, axes = plt.subplots(len(ROWS), columns, figsize=(1.9 * columns, 2.0 * len(ROWS)))
    explained = manifest.class_names[1]
    for c in range(columns):
        mask = annotation(model_id, names[c], size) if model_id != "mnist-3v8" else None
        for r, row in enumerate(ROWS):
            axis = axes[r, c]
            picture = images[r][c, 0].numpy()
            if row.endswith("- x"):
                peak = float(np.abs(picture).max()) or 1.0
                axis.imshow(picture, cmap="seismic", vmin=-peak, vmax=peak)
                axis.set_title(f"max |change| {peak:.2f}", fontsize=7)
            elif "heatmap" in row:
                axis.imshow(picture, cmap="inferno")
                if mask is not None:
                    axis.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
            else:
                axis.imshow(picture, cmap="gray", vmin=0, vmax=1)
                axis.set_title(f"p({explained}) {float(probability[row][c]):.2f}", fontsize=7)
            axis.set_xticks([]), axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(row, fontsize=7)
        axes[0, c].set_title(
            f"{names[c][:18]}\np({explained}) {float(probability['input'][c]):.2f}", fontsize=7
        )
    figure.suptitle(f"{model_id}: held-out test images (left: decided {explained})", fontsize=9)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mnist-3v8,nih-cardiomegaly,busi-malignancy")
    parser.add_argument("--per-side", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "syce")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--demo-dir", type=Path, default=DEMO_DIR, help="folder of the demo models (e.g. a staging copy)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model_id in args.models.split(","):
        print(grid(model_id, args.per_side, args.out, args.demo_dir))


if __name__ == "__main__":
    main()
