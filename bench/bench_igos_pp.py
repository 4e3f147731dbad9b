"""iGOS++ speed: the service's batched optimisation against a naive one-image-at-a-time loop, in one run.

Both run the same algorithm with the same parameters, noise and line search on the same model and
images (bench/reference_igos_pp.py is the naive loop); the heatmaps should agree up to float rounding,
which the script checks. Printed per implementation: seconds per image, forward passes (model calls),
images forwarded and backward passes, each per image, and the naive/batched ratios. Metrics (AUCs)
are not timed: only the optimisation.

Usage:
    .venv/bin/python bench/bench_igos_pp.py [--device auto|cpu|cuda] [--images 4] [--model builtin|<demo id>]
        [--mask-size 28] [--iterations 15] [--integration-steps 20] [--internal-batch-size 64]
        [--threads N] [--repeats 1]

On a CPU the three rows do the same arithmetic (the same images forwarded), so expect the time ratio
near 1 there: batching saves model calls, which is what a GPU pays for per call. On a shared CPU pass
``--threads 1`` (oversubscribed intra-op threads distort small batches) and ``--repeats 3`` (the
minimum of the repeats, run in alternating order, is reported).

``--model builtin`` (the default when models/demo/ holds no model) is a LeNet trained for a few
seconds on MNIST 3 vs 8 from ../shared/data when that folder exists (else left at its seeded random
initialisation), explained on held-out digits (else seeded random images).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from igos_table import demo_model_ids, load_demo, pick_device
from reference_igos_pp import naive_igos_pp_batch
from workers.explainers.base import no_progress
from workers.explainers.igos_pp import optimise
from xai.methods import igos_pp as igos_spec


class PassCounter(nn.Module):
    """Wraps a model and counts its forward calls, the images they carry and the backward passes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forwards = self.images = self.backwards = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        self.images += len(images)
        output = self.model(images)
        if output.requires_grad:
            output.register_hook(self._count_backward)
        return output

    def _count_backward(self, gradient: torch.Tensor) -> None:
        self.backwards += 1


def builtin_model(device: torch.device, count: int) -> tuple[nn.Module, torch.Tensor, list[int], str]:
    """A small LeNet and ``count`` digits (3 vs 8), trained briefly when the shared MNIST files exist."""
    from models.networks.lenet import LeNet
    from models.training.demo import DEFAULT_DATA_ROOT, mnist_3v8_splits

    torch.manual_seed(0)
    model = LeNet(num_outputs=2)
    if (DEFAULT_DATA_ROOT / "mnist").is_dir():
        train, test = mnist_3v8_splits(DEFAULT_DATA_ROOT)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            for batch in torch.randperm(len(train.images)).split(64):
                loss = nn.functional.cross_entropy(model(train.images[batch]), train.labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        images, note = test.images[:count], "LeNet trained 3 epochs on MNIST 3 vs 8, held-out t10k digits"
    else:
        images = torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        note = "LeNet at a seeded random initialisation, seeded random images (no ../shared/data found)"
    model = model.to(device).eval()
    images = images.to(device)
    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    return model, images, targets, note


def timed(device: torch.device, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1...")
    parser.add_argument("--images", type=int, default=4, help="images explained (default 4)")
    parser.add_argument("--model", default=None, help="'builtin' or a demo id (default: first demo model)")
    parser.add_argument("--mask-size", type=int, default=None, help="default: 28, capped at the input size")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--integration-steps", type=int, default=20)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="timings each; the fastest is kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    model_id = args.model or (demo_model_ids()[0] if demo_model_ids() else "builtin")
    if model_id == "builtin":
        model, images, targets, note = builtin_model(device, args.images)
    else:
        model, images, targets, note = load_demo(model_id, device, args.images)
    height, width = images.shape[-2:]
    mask_size = min(args.mask_size or 28, height, width)
    params = igos_spec.SPECS[0].resolve_params(
        {
            "mask_size": mask_size,
            "iterations": args.iterations,
            "integration_steps": args.integration_steps,
            "internal_batch_size": args.internal_batch_size,
        }
    )
    counter = PassCounter(model).eval()
    print(f"model: {model_id} ({note}); device: {device}; {len(images)} images of {tuple(images.shape[1:])}")
    print(
        f"params: mask {mask_size}, iterations {args.iterations}, "
        f"integration steps {args.integration_steps}, "
        f"internal batch {args.internal_batch_size}; torch threads {torch.get_num_threads()}"
    )

    # Warm-up (CUDA context, cuDNN autotuning, lazy imports) so neither side pays it in the timing.
    optimise(counter, images[:1], targets[:1], params | {"iterations": 1}, no_progress)

    runs = {
        "naive loop (reference_igos_pp)": lambda: naive_igos_pp_batch(counter, images, targets, params),
        "ours, one image per call": lambda: torch.cat(
            [_heatmap(counter, images[i : i + 1], targets[i : i + 1], params) for i in range(len(images))]
        ),
        "ours, all images in one call": lambda: _heatmap(counter, images, targets, params),
    }
    figures, heatmaps, count = {}, {}, len(images)
    for _ in range(args.repeats):
        for name, run in runs.items():
            counter.reset()
            heatmaps[name], seconds = timed(device, run)
            passes = (counter.forwards / count, counter.images / count, counter.backwards / count)
            fastest = min(seconds / count, figures.get(name, (float("inf"),))[0])
            figures[name] = (fastest, *passes)

    header = f"{'s/image':>9s} {'forwards/image':>15s} {'images fwd/image':>17s} {'backwards/image':>16s}"
    print(f"\n{'':34s} {header}")
    for name, (seconds, forwards, forwarded, backwards) in figures.items():
        print(f"{name:34s} {seconds:9.3f} {forwards:15.1f} {forwarded:17.1f} {backwards:16.1f}")
    naive, batched = figures["naive loop (reference_igos_pp)"], figures["ours, all images in one call"]
    print(
        f"\nratio naive / ours (all images in one call): time {naive[0] / batched[0]:.2f}x, "
        f"forward passes {naive[1] / batched[1]:.2f}x, backward passes {naive[3] / batched[3]:.2f}x, "
        f"images forwarded {naive[2] / batched[2]:.2f}x"
    )
    names = list(heatmaps)
    difference = max(float((heatmaps[names[0]] - heatmaps[n]).abs().max()) for n in names[1:])
    print(f"largest heatmap difference between the implementations: {difference:.2e} (same algorithm, noise)")


def _heatmap(model: nn.Module, images: torch.Tensor, targets: list[int], params: dict) -> torch.Tensor:
    return optimise(model, images, targets, params, no_progress).heatmaps()["product"].detach()


if __name__ == "__main__":
    main()
