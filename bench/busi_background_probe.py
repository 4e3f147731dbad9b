"""Can the BUSI demo classifier be made to ignore changes away from the lesion?

The question behind issue 14's BUSI counterfactuals: SyCE generators for ``busi-malignancy`` flip it
with dots, streaks and a band on the skin line, away from the lesion, because the classifier reacts
to such changes anywhere. This trains the demo recipe (small_cnn, 40 epochs, flips) on three quarters
of the BUSI *training* split, with an L2 attack confined to the pixels farther than ``--margin`` px
from the lesion mask (``AdversarialTraining(background_margin_px=...)``, radius ramped up over
``--warmup`` epochs; with ``--gain-field A`` starting from a random smooth brightness change of up to
about ``A`` there, ``AdversarialTraining(gain_field=...)``) or without it (radius 0), and prints for
each, on the remaining quarter (the test split is not touched): AUC, accuracy, the Grad-CAM NCC with
the lesion masks, and the share of images a 20-step L2 attack of norm 1 and 3 flips when confined to
the background (``out``) or to the lesion and its margin (``in``). A classifier a generator must edit the lesion to flip has a low
``out`` and a high ``in``.

Usage:
    .venv/bin/python bench/busi_background_probe.py [--radii 0,1.0] [--margin 4] [--warmup 5] [--gain-field 0.3]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from models.loader import Normalization
from models.manifest import InputSpec
from models.networks import default_target_layer
from models.training import demo
from models.training.classifier import (
    AdversarialTraining,
    Augmentation,
    fit_normalization,
    stratified_split,
    train_classifier,
)
from workers.scoring import localization

ATTACK_NORMS = (1.0, 3.0)


def grad_cam_ncc(model: torch.nn.Module, images: torch.Tensor, regions: torch.Tensor) -> float:
    """Mean NCC (``workers.scoring.localization``) of Grad-CAM, for the decided class, with the lesion masks;
    maps that are constant (no NCC) are left out, as in bench/syce_localization_table.py."""
    with torch.no_grad():
        decided = (model(images)[:, 0] > 0).long()
    layer = dict(model.named_modules())["1." + default_target_layer(model[1])]
    maps = GradCAM(model=model, target_layers=[layer])(
        input_tensor=images, targets=[BinaryClassifierOutputTarget(int(d)) for d in decided]
    )
    scores = [localization(heat, mask)["ncc"] for heat, mask in zip(maps, regions[:, 0].numpy())]
    return round(float(np.mean([score for score in scores if score is not None])), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--radii", default="0,1.0")
    parser.add_argument("--margin", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gain-field", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = demo.busi_split(demo.DEFAULT_DATA_ROOT, InputSpec(height=demo.BUSI_SIZE, width=demo.BUSI_SIZE), "train")
    fit, held = stratified_split(train.labels, 0.25, 0)
    mean, std = fit_normalization(train.images[fit])
    spec = InputSpec(height=demo.BUSI_SIZE, width=demo.BUSI_SIZE, channels=1, mean=mean, std=std)
    images, regions = train.images[held], train.regions[held]
    for radius in (float(r) for r in args.radii.split(",")):
        adversarial = AdversarialTraining(radius, 3, "l2", args.warmup, args.margin, args.gain_field) \
            if radius > 0 else None
        net, evaluation = train_classifier(
            train.images[fit], train.labels[fit], architecture="small_cnn", architecture_args={},
            input_spec=spec, class_names=["benign", "malignant"], output="sigmoid", epochs=40, batch_size=32,
            lr=3e-3, device="cpu", seed=0, val_images=images, val_labels=train.labels[held],
            augment=Augmentation(horizontal_flip=True), adversarial=adversarial, regions=train.regions[fit],
        )
        model = torch.nn.Sequential(Normalization(spec), net).eval()
        outside = AdversarialTraining(background_margin_px=args.margin).allowed_pixels(regions)
        flips = {
            f"attack_{where}_l2_{norm:g}_flips": round(
                AdversarialTraining(norm, 20, "l2").flip_rate(model, images, allowed), 3
            )
            for where, allowed in (("out", outside), ("in", 1 - outside)) for norm in ATTACK_NORMS
        }
        row = {
            "radius": radius, "validation_auc": evaluation["auc"], "validation_accuracy": evaluation["accuracy"],
            "grad_cam_ncc": grad_cam_ncc(model, images, regions),
        }
        print(json.dumps(row | flips), flush=True)


if __name__ == "__main__":
    main()
