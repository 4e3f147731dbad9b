"""Can the BUSI classifier be flipped by changing only the lesion? The ceiling for a lesion counterfactual.

For every BUSI test image, an Adam optimisation (``--steps``, learning rate 0.02) of a change confined to
the lesion mask grown by ``--margin`` px (pixel-wise, or smooth on ``--cells`` x ``--cells`` cells,
bicubic) pushes the classifier's decision to the other side, with nothing to keep the change small but
the image's [0, 1] range. It prints the share of images it flips, by decided side, and the mean change.
What it cannot flip no generator whose change stays there can (up to what gradient descent finds).

With ``--generators``, it measures instead where the shipped SyCE and CyCE generators put their change:
the share of each test image's ``|G(x) - x|`` (SyCE: the adversarial pass) that lies within ``--margin``
px of its lesion, averaged over the images, by decided side, beside the share of the image that region is.

Usage:
    .venv/bin/python bench/busi_lesion_reach.py [--margin 4] [--cells 0] [--steps 300] [--threads 2]
        [--demo-dir models/demo]
    .venv/bin/python bench/busi_lesion_reach.py --generators [--margin 16] [--demo-dir models/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from models import DEMO_DIR
from models.artifacts.syce import load_artifact
from models.loader import load_classifier
from models.manifest import ModelManifest
from models.training import demo
from models.training.data import away_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--margin", type=int, default=4)
    parser.add_argument("--cells", type=int, default=0, help="0: pixel-wise change")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR)
    parser.add_argument("--generators", action="store_true",
                        help="measure the shipped generators' change near the lesion instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.demo_dir / "busi-malignancy"
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    classifier = load_classifier(manifest, folder / manifest.weights_file, "cpu").requires_grad_(False)
    test = demo.busi_test_split(demo.DEFAULT_DATA_ROOT)
    near = 1 - away_from(test.regions, args.margin)
    if args.generators:
        generators_near_lesion(classifier, folder, manifest, test.images, near, args.margin)
    else:
        reach(classifier, test.images, near, args)


def generators_near_lesion(classifier, folder: Path, manifest: ModelManifest, images: torch.Tensor,
                           near: torch.Tensor, margin: int) -> None:
    print(f"busi-malignancy, {len(images)} test images; the region within {margin} px of the lesion covers "
          f"{near.mean():.1%} of the image on average. Share of |G(x) - x| in it (mean over images):")
    for variant in ("syce", "cyce"):
        generators = load_artifact(folder / manifest.artifacts[variant], "cpu")
        with torch.inference_mode():
            sides = generators.sides(classifier(images))
            change = (generators.translate(images, sides) - images).abs()
        share = (change * near).sum(dim=(1, 2, 3)) / change.sum(dim=(1, 2, 3)).clamp_min(1e-12)
        print(f"{variant}: {share.mean():.1%} (decided benign {share[sides == 0].mean():.1%}, decided malignant "
              f"{share[sides == 1].mean():.1%}); mean |change| {change.mean():.4f}")


def reach(classifier, images: torch.Tensor, near: torch.Tensor, args: argparse.Namespace) -> None:

    def log_odds(batch: torch.Tensor) -> torch.Tensor:
        logits = classifier(batch)
        return logits[:, 1] - logits[:, 0]

    def changed(free: torch.Tensor) -> torch.Tensor:
        change = F.interpolate(free, size=images.shape[-2:], mode="bicubic") if args.cells else free
        return (images + change * near).clamp(0, 1)

    with torch.no_grad():
        side = (log_odds(images) > 0).float()
    size = args.cells or images.shape[-1]
    free = torch.zeros(len(images), 1, size, size, requires_grad=True)
    optimiser = torch.optim.Adam([free], lr=0.02)
    for _ in range(args.steps):
        # Clamped at 0.01 so that flipped images stop pulling and the rest get the steps.
        loss = F.binary_cross_entropy_with_logits(log_odds(changed(free)), 1 - side, reduction="none")
        optimiser.zero_grad()
        loss.clamp_min(0.01).mean().backward()
        optimiser.step()
    with torch.no_grad():
        edited = changed(free)
        flipped = ((log_odds(edited) > 0).float() != side).float()
    kind = f"smooth on {args.cells} x {args.cells} cells" if args.cells else "pixel-wise"
    print(f"busi-malignancy, {len(images)} test images, change {kind} within {args.margin} px of the lesion "
          f"(on average {near.mean():.1%} of the image), {args.steps} steps:")
    print(f"flipped {flipped.mean():.1%} (decided benign {flipped[side == 0].mean():.1%} of "
          f"{int((side == 0).sum())}, decided malignant {flipped[side == 1].mean():.1%} of {int((side == 1).sum())}); "
          f"mean |change| {(edited - images).abs().mean():.4f}")


if __name__ == "__main__":
    main()
