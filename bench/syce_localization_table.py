"""Localisation against expert annotations, like Table 2 of the SyCE paper: IoU at the 85/90/95/98th
percentile thresholds and NCC, for SyCE, CyCE, saliency, integrated gradients and Grad-CAM.

Each method explains the classifier's own decision (the predicted class, as the service does when a
caller names no target), at the model's input size; ``workers.scoring.localization`` scores each map
against the annotation drawn at that size; the table gives means over images (NCC over the images
where it is defined).

Data, by default the held-out test splits of the developer data set:
  --dataset busi   BUSI lesion masks, busi-malignancy, every test image (benign and malignant lesions)
  --dataset nih    NIH ChestX-ray14 Cardiomegaly boxes, nih-cardiomegaly, the test images with that box
or images the project has never seen:
  --images DIR --masks DIR                 masks with the same file names (non-zero = lesion)
  --images DIR --boxes CSV [--finding F]   columns image, x, y, w, h in the image file's pixels
                                           (--box-columns renames them, e.g. x_1024,y_1024,w_1024,h_1024)

Usage:
    .venv/bin/python bench/syce_localization_table.py --dataset busi [--limit 50] [--json out.json]
    .venv/bin/python bench/syce_localization_table.py --model nih-cardiomegaly --images new/ \\
        --boxes new/boxes.csv --finding Cardiomegaly --box-columns x_1024,y_1024,w_1024,h_1024
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.loader import load_classifier, resolve_layer
from models.manifest import ModelManifest
from models.preprocess import to_model_input
from models.training.data import read_image
from workers.explainers import EXPLAINERS
from workers.explainers.cyce import CyCE
from workers.explainers.syce import SyCE
from workers.scoring import localization
from xai.imaging import DecodeLimits
from xai.methods import CATALOGUE
from xai.methods.syce import SPECS as SYCE_SPECS

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "models" / "demo"
DATA = REPO.parent / "shared" / "data"
METHODS = ("syce", "cyce", "saliency", "integrated_gradients", "grad_cam")
COLUMNS = ("iou_p85", "iou_p90", "iou_p95", "iou_p98", "ncc")
DATASETS = {
    "busi": {
        "model": "busi-malignancy",
        "images": DATA / "busi" / "images",
        "masks": DATA / "busi" / "masks",
    },
    "nih": {
        "model": "nih-cardiomegaly",
        "images": DATA / "nih_cxr14_bbox" / "images",
        "boxes": DATA / "nih_cxr14_bbox" / "bbox.csv",
        "finding": "Cardiomegaly",
        "box_columns": "x_256,y_256,w_256,h_256",
    },
}
SPECS = {**CATALOGUE, **{spec.name: spec for spec in SYCE_SPECS}}


def test_split_names(dataset: str) -> set[str]:
    folder = DATA / ("busi" if dataset == "busi" else "nih_cxr14_bbox")
    with open(folder / "labels.csv", newline="") as handle:
        return {row["image"] for row in csv.DictReader(handle) if row["split_hint"] == "test"}


def annotated_images(
    args: argparse.Namespace, manifest: ModelManifest
) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(name, 1 x C x H x W model input, H x W boolean annotation at the model size) per image."""
    size = (manifest.input.height, manifest.input.width)
    limits, keep = DecodeLimits(), test_split_names(args.dataset) if args.dataset else None
    items = []
    for name, path, annotation in _annotations(args):
        if keep is not None and name not in keep:
            continue
        pixels = read_image(path, limits)
        image = to_model_input(pixels, manifest.input)
        if isinstance(annotation, list):
            mask = draw_boxes(annotation, pixels.shape[:2], size)
        else:
            mask_pixels = torch.from_numpy(read_image(annotation, limits).astype(np.float32))
            mask_pixels = mask_pixels.mean(-1) if mask_pixels.ndim == 3 else mask_pixels
            mask = F.interpolate(mask_pixels[None, None], size=size, mode="nearest")[0, 0].numpy() > 0.5
        if mask.any():
            items.append((name, image, mask))
        if args.limit and len(items) >= args.limit:
            break
    return items


def draw_boxes(boxes: list[list[float]], image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Boxes (x, y, w, h in the image file's pixels) filled into a mask at the model input size."""
    mask = np.zeros(size, dtype=bool)
    scale_y, scale_x = size[0] / image_shape[0], size[1] / image_shape[1]
    for x, y, w, h in boxes:
        rows = slice(int(y * scale_y), int(np.ceil((y + h) * scale_y)))
        mask[rows, int(x * scale_x) : int(np.ceil((x + w) * scale_x))] = True
    return mask


def _annotations(args: argparse.Namespace):
    """(name, image path, mask path or list of boxes) for every annotated image, sorted by name."""
    images = Path(args.images)
    if args.masks:
        for mask in sorted(Path(args.masks).iterdir()):
            if (images / mask.name).exists():
                yield mask.name, images / mask.name, mask
        return
    x, y, w, h = args.box_columns.split(",")
    boxes: dict[str, list] = {}
    with open(args.boxes, newline="") as handle:
        for row in csv.DictReader(handle):
            if args.finding is None or row.get("finding") == args.finding:
                boxes.setdefault(row["image"], []).append([float(row[c]) for c in (x, y, w, h)])
    for name in sorted(boxes):
        yield name, images / name, boxes[name]


def build_explainers(classifier, manifest: ModelManifest, model_dir: Path) -> dict:
    explainers = {}
    for method in METHODS:
        if method in ("syce", "cyce"):
            relative = manifest.artifacts.get(method)
            if relative is None:
                print(f"skipping {method}: {manifest.id} has no {method} artifact")
                continue
            explainers[method] = (SyCE if method == "syce" else CyCE)(
                classifier, artifacts=model_dir / relative
            )
        elif method == "grad_cam":
            explainers[method] = EXPLAINERS[method](classifier, target_layer=resolve_layer(classifier))
        else:
            explainers[method] = EXPLAINERS[method](classifier)
    return explainers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=None)
    parser.add_argument("--model", default=None, help="demo model id (default: the dataset's)")
    parser.add_argument("--images", default=None)
    parser.add_argument("--masks", default=None)
    parser.add_argument("--boxes", default=None)
    parser.add_argument("--finding", default=None, help="only boxes whose 'finding' column has this value")
    parser.add_argument("--box-columns", default="x,y,w,h")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help="folder of the demo models")
    args = parser.parse_args()
    if args.dataset:  # the dataset's settings, except those given on the command line
        for key, value in DATASETS[args.dataset].items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, str(value))
    if not args.model or not args.images or not (args.masks or args.boxes):
        parser.error("give --dataset, or --model and --images with --masks or --boxes")
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = args.demo_dir / args.model
    manifest = ModelManifest.model_validate_json((model_dir / "manifest.json").read_text())
    classifier = load_classifier(manifest, model_dir / manifest.weights_file, args.device)
    explainers = build_explainers(classifier, manifest, model_dir)
    items = annotated_images(args, manifest)
    rows = {method: {c: [] for c in COLUMNS} for method in explainers}
    seconds = dict.fromkeys(explainers, 0.0)
    for _, image, mask in items:
        image = image.to(args.device)
        with torch.no_grad():
            target = int(classifier(image).argmax(1))
        for method, explainer in explainers.items():
            started = time.perf_counter()
            heatmap = explainer.explain(image, [target], SPECS[method].resolve_params({})).heatmaps[0]
            seconds[method] += time.perf_counter() - started
            figures = localization(heatmap.cpu().numpy(), mask)
            for column in COLUMNS:
                if figures[column] is not None:
                    rows[method][column].append(figures[column])

    table = {
        method: {
            **{c: round(float(np.mean(v)), 3) if v else None for c, v in values.items()},
            "seconds_per_image": round(seconds[method] / max(len(items), 1), 4),
        }
        for method, values in rows.items()
    }
    mask_fraction = float(np.mean([mask.mean() for _, _, mask in items])) if items else 0.0
    print(
        f"\n{args.model}: {len(items)} annotated images from {args.images} "
        f"(annotation covers {mask_fraction:.1%} of the image on average)\n"
    )
    print("| method | " + " | ".join(COLUMNS) + " | s/image |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for method, figures in table.items():
        cells = [f"{figures[c]:.3f}" if figures[c] is not None else "n/a" for c in COLUMNS]
        print(f"| {method} | " + " | ".join(cells) + f" | {figures['seconds_per_image']} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "images": len(items),
                    "source": args.images,
                    "mask_fraction": mask_fraction,
                    "table": table,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
