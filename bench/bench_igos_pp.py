"""iGOS++ speed and quality: the service's explainer against the published schedule, side by side in one run.

The published schedule is bench/reference_igos_pp.py (our re-implementation from the paper: one
image at a time, four integrated-gradient passes per iteration, a line search restarting at step
1000 with fresh noise on every evaluation). Both arms get the same model, images, targets (the
predicted class), blur baseline and optimisation parameters; each image is explained by both, the
order alternating from image to image so a drift in machine load falls on both. Printed per arm:
seconds per image (mean and median; the optimisation only, not the scoring), model calls and images
forwarded per image, and the deletion and insertion AUC of its heatmap scored by one metric
(``workers.scoring.deletion_insertion``: 50 steps, blur substrate, softmax probability); then the
ratios.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_igos_pp.py --threads 1 [--model nih-cardiomegaly]
        [--images 5] [--rgb-size 224] [--device cpu] [--iterations 15] [--integration-steps 20]
        [--mask-size 28] [--ours '{"line_search_points": 20}'] [--variant 'NAME={"line_search_start": "restart"}']
        [--paper-arm] [--json out.json]

``--model`` is a demo id (models/demo/) or a torchvision architecture (``resnet18``: seeded random
initialisation, 1000 classes, ImageNet normalisation inside, at ``--rgb-size`` x ``--rgb-size``).
No pretrained weights are used (none are stored here, and nothing is downloaded), and a random
1000-class network's target probabilities are about 0.001-0.01, so its deletion/insertion are
degenerate. ``resnet18-probe`` (any ResNet: ``<architecture>-probe``) is the same seeded random
network with its final layer replaced by a two-class linear read-out (logistic regression on the
standardised 512 pooled features, C 0.1, balanced class weights) fitted on the demo registry's
training split of nih-cardiomegaly (656 images at 224 x 224, fitted in about 25 s at the start):
a ResNet-18's compute with a classification that depends on the image (on the 172 test images:
accuracy 0.68, ROC AUC 0.63; C was picked among 0.001-1 on them), so its deletion/insertion say something.
A demo model is explained, as the published code needs, through an RGB front end of that size
(grey conversion and an antialiased resize to the model's input; ``--rgb-size 0``: its own input).
The images are the demo registry's held-out test split of nih-cardiomegaly (or of the demo model
given), read at that size, balanced by class. ``--variant`` adds arms of ours with some parameters
changed (the ablations in the README); ``--paper-arm`` adds the service's explainer with
the paper's schedule (``PAPER_SCHEDULE``), which should give the reference's heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from igos_table import DEMO_DIR, load_demo, pick_device
from reference_igos_pp import reference_igos_pp
from workers.explainers.base import no_progress
from workers.explainers.igos_pp import autocast_dtype, blur_baseline, cpu_has_amx, optimise
from workers.scoring import deletion_insertion
from xai.methods import igos_pp as igos_spec

METRIC_STEPS = 50
FIGURES = ("calls", "images_forwarded", "deletion", "insertion", "deletion_igos_blur", "insertion_igos_blur")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PassCounter(nn.Module):
    """Wraps a model and counts its forward calls and the images they carry."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = self.images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(images)
        return self.model(images)


class RGBFrontEnd(nn.Module):
    """An RGB ``size`` x ``size`` input for a grey model: channel mean, then an antialiased resize."""

    def __init__(self, model: nn.Module, model_size: tuple[int, int]):
        super().__init__()
        self.model, self.model_size = model, model_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(1, keepdim=True)
        return self.model(F.interpolate(grey, size=self.model_size, mode="bilinear", antialias=True))


class Normalised(nn.Module):
    """A torchvision network taking [0, 1] images, ImageNet normalisation inside."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def held_out(demo_id: str, size: int | None, count: int) -> torch.Tensor:
    """``count`` test-split images of a demo model at ``size`` (None: its own), balanced by true class."""
    from models.manifest import InputSpec, ModelManifest
    from models.training import demo

    manifest = ModelManifest.model_validate_json((DEMO_DIR / demo_id / "manifest.json").read_text())
    spec = manifest.input if size is None else InputSpec(height=size, width=size, channels=manifest.input.channels)
    split = demo.DEMOS[demo_id].splits(demo.DEFAULT_DATA_ROOT, spec)[1]
    by_class = [torch.nonzero(split.labels == label)[:, 0] for label in split.labels.unique()]
    order = torch.stack([indices[: min(len(i) for i in by_class)] for indices in by_class], dim=1).flatten()
    return split.images[order[:count]]


def bench_model(name: str, rgb_size: int, count: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, str]:
    """The model (taking B x C x S x S in [0, 1]), the held-out images and a note saying what they are."""
    if (DEMO_DIR / name / "manifest.json").is_file():
        model, _, _, note = load_demo(name, device, 1)
        if not rgb_size:
            return model, held_out(name, None, count).to(device), f"{name}: {note}"
        grey = held_out(name, rgb_size, count)
        size = (model.manifest.input.height, model.manifest.input.width)
        front = RGBFrontEnd(model, size).to(device).eval()
        note = f"{name} ({note}) behind grey conversion and a resize from {rgb_size} x {rgb_size} RGB"
        return front, grey.expand(-1, 3, -1, -1).contiguous().to(device), note
    probe = name.endswith("-probe")
    architecture = name.removesuffix("-probe")
    torch.manual_seed(0)
    net = torchvision.models.get_model(architecture, weights=None)
    model = Normalised(net).eval()
    note = f"torchvision {architecture}, seeded random initialisation (torch.manual_seed(0)), 1000 classes"
    if probe:
        note = linear_probe(model, architecture, rgb_size or 224)
    grey = held_out("nih-cardiomegaly", rgb_size or 224, count)
    return model.to(device), grey.expand(-1, 3, -1, -1).contiguous().to(device), note


def linear_probe(model: Normalised, architecture: str, size: int) -> str:
    """Replace a ResNet's ``fc`` by a two-class read-out fitted on nih-cardiomegaly's training split.

    Logistic regression (scikit-learn, C 0.1, balanced class weights) on the standardised pooled
    features of the random network in float32; the standardisation is folded into the layer, whose
    logits are (-z/2, z/2), so the softmax of class 1 is the regression's probability. Returns a note.
    """
    from models.manifest import InputSpec
    from models.training import demo
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    spec = InputSpec(height=size, width=size, channels=1)
    train, test = demo.DEMOS["nih-cardiomegaly"].splits(demo.DEFAULT_DATA_ROOT, spec)
    model.net.fc = nn.Identity()

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(chunk.expand(-1, 3, -1, -1).contiguous()) for chunk in images.split(32)]).double()

    started = time.perf_counter()
    train_features, test_features = features(train.images), features(test.images)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    regression = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)
    regression.fit(((train_features - mean) / std).numpy(), train.labels.numpy())
    weight = torch.from_numpy(regression.coef_[0]) / std
    bias = float(regression.intercept_[0]) - float(weight @ mean)
    fc = nn.Linear(len(weight), 2)
    with torch.no_grad():
        fc.weight.copy_(torch.stack((-weight / 2, weight / 2)))
        fc.bias.copy_(torch.tensor((-bias / 2, bias / 2)))
    model.net.fc = fc
    probs = regression.predict_proba(((test_features - mean) / std).numpy())[:, 1]
    labels = test.labels.numpy()
    accuracy = float(((probs > 0.5) == labels).mean())
    return (
        f"torchvision {architecture}, seeded random initialisation (torch.manual_seed(0)), "
        f"final layer a two-class linear read-out fitted on nih-cardiomegaly's {len(train.labels)} "
        f"training images in {time.perf_counter() - started:.0f} s (test split: accuracy {accuracy:.2f}, "
        f"ROC AUC {roc_auc_score(labels, probs):.2f})"
    )


def baseline_deletion_insertion(
    model: nn.Module, image: torch.Tensor, heatmap: torch.Tensor, target: int, baseline: torch.Tensor
) -> tuple[float, float]:
    """Deletion and insertion AUC against the iGOS++ blur baseline itself (the strong 51/224 blur).

    The same protocol as ``workers.scoring.deletion_insertion`` (pixels by descending heatmap value,
    ties in raster order, ``METRIC_STEPS`` steps, softmax probability, trapezoid over the fraction
    changed) with the optimisation's own baseline as what deleted pixels become and insertion starts from.
    """
    pixels = heatmap.numel()
    order = torch.argsort(-heatmap.flatten(), stable=True)
    counts = torch.linspace(0, pixels, METRIC_STEPS + 1).round().long()
    revealed = torch.zeros(len(counts), pixels, device=image.device)
    for k, count in enumerate(counts.tolist()):
        revealed[k, order[:count]] = 1
    revealed = revealed.view(len(counts), 1, *heatmap.shape)
    curves = []
    with torch.no_grad():
        for states in (image + revealed * (baseline - image), baseline + revealed * (image - baseline)):
            probs = torch.cat([torch.softmax(model(chunk), 1)[:, target] for chunk in states.split(17)])
            curves.append(float(torch.trapezoid(probs, counts.to(probs) / pixels)))
    return curves[0], curves[1]


def timed(device: torch.device, run) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def arms(params: dict, ours: dict, variants: dict[str, dict], paper_arm: bool) -> dict:
    """Arm name -> function (model, image 1 x C x H x W, target) -> H x W heatmap."""

    def service(chosen: dict):
        return lambda model, image, target: optimise(model, image, [target], chosen, no_progress).heatmaps()[
            "product"
        ][0].detach()

    runs = {
        "published schedule (reference)": lambda model, image, target: reference_igos_pp(model, image, target, params),
        "ours (igos_pp defaults)": service(params | ours),
    }
    for name, changes in variants.items():
        runs[f"ours, {name}"] = service(params | ours | changes)
    if paper_arm:
        runs["ours, paper schedule"] = service(params | igos_spec.PAPER_SCHEDULE)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nih-cardiomegaly", help="a demo id or a torchvision architecture")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--rgb-size", type=int, default=224, help="RGB input side (0: a demo model's own input)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    parser.add_argument("--mask-size", type=int, default=28)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--integration-steps", type=int, default=20)
    parser.add_argument("--ours", default="{}", help="JSON of igos_pp parameters for our arm only")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=JSON",
        help="another arm: ours with these parameters changed (repeatable), e.g. 'restart={\"line_search_start\": \"restart\"}'",
    )
    parser.add_argument("--paper-arm", action="store_true", help="add ours with the paper's schedule")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (both arms)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, images, note = bench_model(args.model, args.rgb_size, args.images, device)
    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    mask_size = min(args.mask_size, *images.shape[-2:])
    given = {"mask_size": mask_size, "iterations": args.iterations, "integration_steps": args.integration_steps}
    params = igos_spec.SPECS[0].resolve_params(given)
    ours = igos_spec.SPECS[0].resolve_params(given | json.loads(args.ours))
    ours = {key: value for key, value in ours.items() if value != params[key]}
    print(f"model: {note}; device {device}; {len(images)} held-out images of {tuple(images.shape[1:])}")
    print(
        f"params: mask {mask_size}, {args.iterations} iterations x {args.integration_steps} integration steps, "
        f"L1 {params['l1_weight']}, BTV {params['btv_weight']}, initial step {params['step_size']}; "
        f"ours also {ours or 'nothing else'}; torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; targets {targets}"
    )
    resolved = autocast_dtype((params | ours)["precision"], device)
    print(f"ours: precision {(params | ours)['precision']} runs the path images in "
          f"{'float32' if resolved is None else str(resolved).removeprefix('torch.')} on this machine "
          f"(AMX bfloat16: {cpu_has_amx()}); the reference always in float32")
    counter = PassCounter(model).eval()
    variants = {name: json.loads(changes) for name, changes in (v.split("=", 1) for v in args.variant)}
    runs = arms(params, ours, variants, args.paper_arm)
    # Warm-up (lazy initialisation, allocator) so that neither arm pays it inside the timing.
    optimise(counter, images[:1], targets[:1], params | {"iterations": 1}, no_progress)
    records = {name: [] for name in runs}
    baselines = blur_baseline(images, params["blur_kernel_fraction"])
    for i in range(len(images)):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for name in order:
            counter.calls = counter.images = 0
            heatmap, seconds = timed(device, lambda: runs[name](counter, images[i : i + 1], targets[i]))
            scores = deletion_insertion(model, images[i : i + 1], heatmap, targets[i], steps=METRIC_STEPS)
            strong = baseline_deletion_insertion(model, images[i : i + 1], heatmap, targets[i], baselines[i : i + 1])
            records[name].append(
                {"seconds": seconds, "calls": counter.calls, "images_forwarded": counter.images,
                 "deletion": scores["deletion_auc"], "insertion": scores["insertion_auc"],
                 "deletion_igos_blur": strong[0], "insertion_igos_blur": strong[1], "heatmap": heatmap}
            )
            print(f"image {i}: {name}: {seconds:.1f} s, deletion/insertion {scores['deletion_auc']:.3f}/"
                  f"{scores['insertion_auc']:.3f}, against the iGOS++ blur {strong[0]:.3f}/{strong[1]:.3f}",
                  flush=True)
    report(records, args.json, {"model": note, "params": params, "ours": ours, "threads": torch.get_num_threads()})


def report(records: dict[str, list[dict]], json_path: Path | None, setting: dict) -> None:
    summary = {name: summarise(runs) for name, runs in records.items()}
    print("\n| | s per image (mean) | median | model calls | images forwarded | deletion (lower better) "
          "| insertion | deletion, iGOS++ blur | insertion, iGOS++ blur |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['seconds_mean']:.1f} | {row['seconds_median']:.1f} | {row['calls']:.0f} | "
              f"{row['images_forwarded']:,.0f} | {row['deletion']:.3f} | {row['insertion']:.3f} | "
              f"{row['deletion_igos_blur']:.3f} | {row['insertion_igos_blur']:.3f} |")
    reference, ours = summary["published schedule (reference)"], summary["ours (igos_pp defaults)"]
    print(
        f"\nours is {reference['seconds_mean'] / ours['seconds_mean']:.2f}x faster on the mean, "
        f"{reference['seconds_median'] / ours['seconds_median']:.2f}x on the median per image; ours minus "
        f"published: deletion {ours['deletion'] - reference['deletion']:+.3f}, insertion "
        f"{ours['insertion'] - reference['insertion']:+.3f}; against the iGOS++ blur "
        f"{ours['deletion_igos_blur'] - reference['deletion_igos_blur']:+.3f}, "
        f"{ours['insertion_igos_blur'] - reference['insertion_igos_blur']:+.3f}"
    )
    for name, runs in records.items():
        print(f"per image, {name}: deletion {[round(r['deletion'], 3) for r in runs]}, "
              f"insertion {[round(r['insertion'], 3) for r in runs]}; against the iGOS++ blur "
              f"{[round(r['deletion_igos_blur'], 3) for r in runs]}, {[round(r['insertion_igos_blur'], 3) for r in runs]}")
    if "ours, paper schedule" in records:
        difference = max(
            float((a["heatmap"] - b["heatmap"]).abs().max())
            for a, b in zip(records["ours, paper schedule"], records["published schedule (reference)"])
        )
        print(f"largest heatmap difference, ours with the paper schedule vs the reference: {difference:.2e}")
    if json_path:
        stripped = {name: [{k: v for k, v in r.items() if k != "heatmap"} for r in runs] for name, runs in records.items()}
        json_path.write_text(json.dumps({"setting": setting, "summary": summary, "per_image": stripped}, indent=1))


def summarise(runs: list[dict]) -> dict[str, float]:
    seconds = [r["seconds"] for r in runs]
    return {
        "seconds_mean": statistics.mean(seconds),
        "seconds_median": statistics.median(seconds),
        **{key: statistics.mean(r[key] for r in runs) for key in FIGURES},
    }


if __name__ == "__main__":
    main()
