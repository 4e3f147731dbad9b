"""GAD speed: the classifier and its support models evaluated in one vectorised pass vs one after another.

Both paths compute the same attributions (the script prints the largest difference relative to the
largest attribution; integrated gradients differ most, where a path point sits on a ReLU's kink): the
batched one runs all models as one ``torch.vmap`` over stacked weights (``VmapStack``), the other runs
them in a loop through Captum (``LoopStack``). Timed per base method: building the stack
(done per request) plus the attributions of all models for a batch of images; the rest of a GAD job
(filtering, RC, RS) is the same for both and not timed. Printed: seconds per call for each path and
the ratio one-after-another / batched (above 1 = batched is faster), measured side by side in one run.

Usage:
    .venv/bin/python bench/bench_gad.py [--device auto|cpu|cuda] [--model builtin|<demo id>] [--images 8]
        [--supports 4] [--methods saliency,integrated_gradients,...] [--n-steps 50]
        [--internal-batch-size 64] [--repeats 3]

``--model builtin`` (the default when models/demo/ holds no model) is the project's SmallCNN at
128 x 128 (the size of the BUSI and NIH demo models) with seeded random weights. A demo model uses
its shipped GAD support models when it has them, else seeded perturbations of its own weights (the
weights' values do not change the cost). Images are seeded random: their content does not change the
cost either.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from models.loader import Classifier, load_classifier
from models.manifest import InputSpec, ModelManifest
from models.networks.small_cnn import SmallCNN
from models.artifacts.gad import read_artifact
from workers.explainers.gad import BASE_METHODS, attribute, build_stack
from workers.runtime import pick_device

DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"


def load_model(name: str, device: torch.device, supports: int) -> tuple[Classifier, list[dict], str]:
    """The classifier, the support state_dicts and a description."""
    if name == "builtin":
        torch.manual_seed(0)
        spec = InputSpec(height=128, width=128)
        manifest = ModelManifest(id="builtin", architecture="small_cnn", input=spec, class_names=["a", "b"])
        classifier = Classifier(SmallCNN(num_outputs=2), manifest).to(device).eval()
        return classifier, perturbed(classifier, supports), "SmallCNN 128 x 128, random weights"
    folder = DEMO_DIR / name
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, device)
    if "gad" in manifest.artifacts:
        states = read_artifact(folder / manifest.artifacts["gad"], map_location=device).states
        return classifier, states, f"demo model {name} with its {len(states)} shipped support models"
    description = f"demo model {name}, perturbed copies as support models"
    return classifier, perturbed(classifier, supports), description


def perturbed(classifier: nn.Module, count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            name: tensor + 0.01 * torch.randn(tensor.shape, generator=generator).to(tensor.device)
            if tensor.is_floating_point() else tensor.clone()
            for name, tensor in classifier.state_dict().items()
        }
        for _ in range(count)
    ]


def timed(function, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default=None, help="builtin or a demo id (default: the first demo model)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--supports", type=int, default=4, help="support models when none are shipped")
    parser.add_argument("--methods", default=",".join(BASE_METHODS))
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = pick_device(args.device)
    demos = sorted(path.parent.name for path in DEMO_DIR.glob("*/manifest.json"))
    name = args.model or (demos[0] if demos else "builtin")
    classifier, supports, description = load_model(name, device, args.supports)
    spec = classifier.manifest.input
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(args.images, spec.channels, spec.height, spec.width, generator=generator).to(device)
    targets = [index % 2 for index in range(args.images)]
    states = [classifier.state_dict(), *supports]
    params = {"n_steps": args.n_steps, "internal_batch_size": args.internal_batch_size}

    print(f"{description}; device {device}; {args.images} images; 1 classifier + {len(supports)} support "
          f"models; torch threads {torch.get_num_threads()}; median of {args.repeats} after one warm-up")
    header = ("base method", "one after another s", "batched s", "ratio", "max |diff| / max |attr|")
    print(f"{header[0]:22s} {header[1]:>20s} {header[2]:>10s} {header[3]:>7s} {header[4]:>24s}")
    for method in args.methods.split(","):
        def run(batched: bool, method: str = method) -> torch.Tensor:
            stack = build_stack(classifier, states, method, batched=batched)
            return attribute(stack, images, targets, method, params)

        times: dict[bool, list[float]] = {True: [], False: []}
        results = {}
        for repeat in range(args.repeats + 1):
            for batched in (repeat % 2 == 0, repeat % 2 == 1):  # alternate the order against drift
                seconds, results[batched] = timed(lambda: run(batched), device)
                if repeat > 0:
                    times[batched].append(seconds)
        loop, batch = statistics.median(times[False]), statistics.median(times[True])
        scale = results[False].abs().max().clamp(min=torch.finfo(torch.float32).tiny)
        difference = ((results[True] - results[False]).abs().max() / scale).item()
        print(f"{method:22s} {loop:20.3f} {batch:10.3f} {loop / batch:7.2f} {difference:24.2e}")


if __name__ == "__main__":
    main()
