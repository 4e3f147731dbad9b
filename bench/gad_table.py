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

``--ablation`` prints, instead, why GAD behaves like the top-k control (per model and base method,
on the same held-out images):

- distance reached: per alpha, the mean shift of the logit margin (target minus other class) from the
  classifier to the support model on these images (asked for: alpha), and the relative L2 distance
  of the support weights from the classifier's;
- agreement: per alpha, the Jaccard index between the classifier's important pixels (the importance
  rule GAD uses, top half of non-zero pixels) and the support model's, and the Spearman correlation
  of the two maps; if every support model marks what the classifier marks, the intersection is the
  classifier's important half, which is a top-k filter of the base map. As a control, the same
  figures for a copy of the classifier moved by random noise as far, tensor by tensor, as the
  support model moved (seeded): if distancing changed the maps more than any weight change of
  that size, the support's Jaccard would be the lower;
- effect of alpha: GAD with the support model of each single alpha, and with all of them: the share
  of the base map's important pixels kept, RS of the GAD hull and of the top-k control keeping the
  same number of pixels, and on how many images GAD's RS beats the control's. Had each support
  model marked an independent half, GAD would keep ``0.5 ** supports`` of the classifier's important
  pixels (the ``independent`` column).

Usage:
    .venv/bin/python bench/gad_table.py [--device auto|cpu|cuda] [--per-class 32] [--models id,id]
        [--methods saliency,...] [--n-steps 50] [--json out.json] [--ablation]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from models.artifacts.gad import read_artifact
from models.loader import load_classifier
from models.manifest import ModelManifest
from models.training import demo
from workers.explainers.gad import (
    BASE_METHODS,
    GAD,
    attribute,
    build_stack,
    complexity_ratio,
    hull_masks,
    important_pixels,
    pixel_importance,
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


# ----------------------------------------------------------------------------- ablation


def ablation(
    model_id: str, device: torch.device, per_class: int, method: str, n_steps: int
) -> dict[str, Any]:
    """Distance reached, agreement between supports and effect of alpha for one model and base method."""
    folder = DEMO_DIR / model_id
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, device)
    support = read_artifact(folder / manifest.artifacts["gad"], map_location=device)
    images = held_out(manifest, per_class).to(device)
    params = SPECS[0].resolve_params({"base_method": method, "n_steps": n_steps})
    with torch.inference_mode():
        targets = classifier(images).argmax(dim=1).tolist()
    states = [classifier.state_dict(), *support.states]
    stack = build_stack(classifier, states, method, batched=False)
    importance = maps_of(stack, images, targets, method, params)  # models x B x H x W
    important = important_pixels(importance, params["importance_threshold"])
    noise_states = [states[0], *(random_move(states[0], s, seed) for seed, s in enumerate(states[1:]))]
    noise_stack = build_stack(classifier, noise_states, method, batched=False)
    noise = maps_of(noise_stack, images, targets, method, params)
    return {
        "model": model_id,
        "base_method": method,
        "images": len(images),
        "distance": distance_reached(stack, states, images, targets, support.class_pair, support.alphas),
        "agreement": agreement(importance, important, support.alphas),
        "agreement_random_move": agreement(
            noise, important_pixels(noise, params["importance_threshold"]), support.alphas
        ),
        "alpha_subsets": alpha_subsets(classifier, images, targets, importance, important, support.alphas,
                                       params["hull_top_fraction"]),
    }


def maps_of(stack, images: torch.Tensor, targets: list[int], method: str, params: dict) -> torch.Tensor:
    """Per-pixel importance of every model of ``stack``: ``models x B x H x W``."""
    return torch.cat([
        pixel_importance(attribute(stack, chunk, targets[i : i + BATCH], method, params), params["sign"])
        for i, chunk in zip(range(0, len(images), BATCH), images.split(BATCH))
    ], dim=1)


def random_move(own: dict, moved: dict, seed: int) -> dict:
    """``own`` plus seeded Gaussian noise with, per tensor, the norm of ``moved - own``."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, value in own.items():
        if not value.is_floating_point():
            result[name] = value
            continue
        noise = torch.randn(value.shape, generator=generator).to(value.device, value.dtype)
        distance = (moved[name] - value).norm()
        result[name] = value + noise * distance / noise.norm().clamp(min=1e-12)
    return result


def distance_reached(stack, states, images, targets, pair, alphas) -> list[dict[str, float]]:
    """Per alpha: mean margin shift on ``images`` (target: alpha) and relative weight distance."""
    others = torch.tensor([pair[1] if t == pair[0] else pair[0] for t in targets])
    rows, chosen = torch.arange(len(targets)), torch.tensor(targets)
    with torch.inference_mode():
        logits = stack.per_model(images.expand(stack.n_models, *images.shape)).float().cpu()
    margins = logits[:, rows, chosen] - logits[:, rows, others]  # models x B
    own = flat_weights(states[0])
    figures = []
    for index, alpha in enumerate(alphas, start=1):
        weights = flat_weights(states[index])
        figures.append({
            "alpha": alpha,
            "mean_margin_shift": round(float((margins[index] - margins[0]).mean()), 3),
            "relative_weight_distance": round(float((weights - own).norm() / own.norm()), 5),
        })
    return figures


def flat_weights(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float().cpu() for v in state.values() if v.is_floating_point()])


def agreement(
    importance: torch.Tensor, important: torch.Tensor, alphas: list[float]
) -> list[dict[str, float]]:
    """Per alpha: mean Jaccard of important pixels and mean Spearman correlation with the classifier's map."""
    figures = []
    for index, alpha in enumerate(alphas, start=1):
        both = (important[0] & important[index]).flatten(1).sum(1).float()
        either = (important[0] | important[index]).flatten(1).sum(1).float().clamp(min=1)
        figures.append({
            "alpha": alpha,
            "jaccard_with_classifier": round(float((both / either).mean()), 3),
            "spearman_with_classifier": round(statistics.fmean(
                spearman(a, b) for a, b in zip(importance[0], importance[index])
            ), 3),
        })
    return figures


def spearman(first: torch.Tensor, second: torch.Tensor) -> float:
    """Rank correlation of two maps (ties broken by position: fine for a summary figure)."""
    ranks = [value.flatten().argsort().argsort().double() for value in (first, second)]
    centred = [rank - rank.mean() for rank in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def alpha_subsets(classifier, images, targets, importance, important, alphas, hull_fraction) -> list[dict]:
    """GAD with the support of each single alpha and with all of them, against the same-size top-k control."""
    subsets = [[index] for index in range(1, len(alphas) + 1)] + [list(range(1, len(alphas) + 1))]
    base_map, rows = importance[0], []
    for subset in subsets:
        kept = important[[0, *subset]].all(dim=0)
        counts = kept.flatten(1).sum(1).tolist()
        gad_map = base_map * kept
        control = torch.stack([
            base * top_pixels(base, count / base.numel()) if count else torch.zeros_like(base)
            for base, count in zip(base_map, counts)
        ])
        rs_gad, rs_top = (
            region_sensitivity(classifier, images, hull_masks(top_pixels(m, hull_fraction)), targets)
            for m in (gad_map, control)
        )
        pairs = [(g, t) for g, t in zip(rs_gad, rs_top) if g is not None and t is not None]
        base_counts = important[0].flatten(1).sum(1).clamp(min=1)
        rows.append({
            "alphas": [alphas[i - 1] for i in subset],
            "kept_fraction": round(float((kept.flatten(1).sum(1) / base_counts).mean()), 3),
            "independent": round(0.5 ** len(subset), 3),
            "mean_rs_gad": statistics.fmean(g for g, _ in pairs) if pairs else None,
            "mean_rs_top_k": statistics.fmean(t for _, t in pairs) if pairs else None,
            "rs_gad_above_top_k": f"{sum(g > t for g, t in pairs)}/{len(pairs)}",
        })
    return rows


def print_ablation(result: dict[str, Any]) -> None:
    name = f"{result['model']} / {result['base_method']} ({result['images']} images)"
    print(f"\n{name}\n| alpha | margin shift reached | weight distance | Jaccard with classifier | Spearman "
          "| Jaccard, random move | Spearman, random move |")
    print("|---|---|---|---|---|---|---|")
    rows = zip(result["distance"], result["agreement"], result["agreement_random_move"])
    for reached, agree, noise in rows:
        print(f"| {reached['alpha']:g} | {reached['mean_margin_shift']} | {reached['relative_weight_distance']} "
              f"| {agree['jaccard_with_classifier']} | {agree['spearman_with_classifier']} "
              f"| {noise['jaccard_with_classifier']} | {noise['spearman_with_classifier']} |")
    print("| supports | kept of base important | independent maps would keep | RS GAD | RS top-k "
          "| GAD > top-k |")
    print("|---|---|---|---|---|---|")
    for row in result["alpha_subsets"]:
        alphas = ",".join(f"{a:g}" for a in row["alphas"])
        rs_gad, rs_top = (
            f"{v:.3g}" if v is not None else "n/a" for v in (row["mean_rs_gad"], row["mean_rs_top_k"])
        )
        print(f"| {alphas} | {row['kept_fraction']} | {row['independent']} | {rs_gad} | {rs_top} "
              f"| {row['rs_gad_above_top_k']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--per-class", type=int, default=32, help="held-out images per true class")
    parser.add_argument("--models", default=None, help="demo ids (default: every demo model with GAD)")
    parser.add_argument("--methods", default=",".join(BASE_METHODS))
    parser.add_argument("--n-steps", type=int, default=50, help="integrated-gradient steps")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ablation", action="store_true", help="distance, agreement and alpha ablation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    paths = sorted(DEMO_DIR.glob("*/manifest.json"))
    manifests = [ModelManifest.model_validate_json(path.read_text()) for path in paths]
    with_gad = [manifest.id for manifest in manifests if "gad" in manifest.artifacts]
    models = args.models.split(",") if args.models else with_gad
    rows = []
    for model_id in models:
        if args.ablation:
            for method in args.methods.split(","):
                rows.append(ablation(model_id, device, args.per_class, method, args.n_steps))
                print_ablation(rows[-1])
        else:
            rows += evaluate(model_id, device, args.per_class, args.methods.split(","), args.n_steps)
    if not args.ablation:
        print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
