"""Can the NIH demo classifier be made robust enough that no universal texture flips it?

The question behind the SyCE recipe of ``nih-cardiomegaly`` (scripts/train_demo_explainers.py):
its shipped generators flipped every X-ray with one set of stripes. This trains the demo recipe's
fine-tuning stage (small_cnn, PneumoniaMNIST-pretrained, 30 epochs) on three quarters of the NIH
*training* split, with L2 adversarial training of each given radius (``AdversarialTraining``, radius
ramped up over ``--warmup`` epochs) or without (radius 0), and prints for each: the AUC on the
remaining quarter of the training split (the test split is not touched), the training loss, and the
share of those validation images a 10-step L2 attack of norm 0.5, 1 and 2.5 flips (2.5 is about the
norm of the shipped generators' stripes).

Usage:
    .venv/bin/python bench/nih_robust_probe.py [--radii 0,0.1,0.25,0.5,1.0] [--warmup 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import torch

from models.loader import Normalization
from models.training import demo
from models.training.classifier import (
    AdversarialTraining,
    stratified_split,
    train_classifier,
)

ATTACK_NORMS = (0.5, 1.0, 2.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--radii", default="0,0.1,0.25,0.5,1.0")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = demo.DEFAULT_DATA_ROOT
    train, _, spec, common = demo.nih_classifier_settings(root, "cpu")
    pretrained, _ = demo.pretrain_on_pneumoniamnist(root, common)
    fit, held = stratified_split(train.labels, 0.25, 0)
    for radius in (float(r) for r in args.radii.split(",")):
        adversarial = AdversarialTraining(radius, 3, "l2", args.warmup) if radius > 0 else None
        net, evaluation = train_classifier(
            train.images[fit],
            train.labels[fit],
            class_names=["absent", "cardiomegaly"],
            epochs=30,
            batch_size=32,
            lr=2e-3,
            initial_state=pretrained.state_dict(),
            adversarial=adversarial,
            val_images=train.images[held],
            val_labels=train.labels[held],
            **common,
        )
        model = torch.nn.Sequential(Normalization(spec), net).eval()
        flips = {
            f"attack_l2_{n:g}_flips": round(AdversarialTraining(n, 10, "l2").flip_rate(model, train.images[held]), 3)
            for n in ATTACK_NORMS
        }
        row = {
            "radius": radius,
            "validation_auc": evaluation["auc"],
            "train_loss": evaluation["final_train_loss"],
        }
        print(json.dumps(row | flips), flush=True)


if __name__ == "__main__":
    main()
