"""``xai train ...``: train a classifier, rebuild a demo model, or train explainer artifacts locally."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models import DEMO_DIR, SHARED_DATA
from xai.methods import get_trainable
from xai.settings import Settings


def add_train_commands(commands) -> None:
    train = commands.add_parser("train", help="train a classifier or explainer artifacts")
    kinds = train.add_subparsers(dest="kind", required=True)

    classifier = kinds.add_parser("classifier", help="train a classifier on a folder with one sub-folder per class")
    classifier.add_argument("--data", type=Path, required=True, help="FOLDER/<class name>/*.png|jpg|tif|dcm")
    classifier.add_argument("--out", type=Path, required=True, help="model folder to write (register it after)")
    classifier.add_argument("--id", required=True, help="model id, a lower-case slug")
    classifier.add_argument("--architecture", default="small_cnn")
    classifier.add_argument("--size", type=int, default=128, help="input height and width")
    classifier.add_argument("--channels", type=int, default=1, choices=(1, 3))
    classifier.add_argument("--epochs", type=int, default=20)
    classifier.add_argument("--val-fraction", type=float, default=0.2)
    classifier.add_argument("--device", default="auto")
    classifier.set_defaults(run=_train_classifier)

    demo = kinds.add_parser("demo", help="rebuild a shipped demo model from ../shared/data")
    demo.add_argument("--name", required=True, help="mnist-3v8, nih-cardiomegaly or busi-malignancy")
    demo.add_argument("--data-root", type=Path, default=SHARED_DATA)
    demo.add_argument("--out", type=Path, default=None, help="default: models/demo/<name>")
    demo.set_defaults(run=_train_demo)

    for method in ("syce", "cyce", "gad"):
        artifact = kinds.add_parser(method, help=f"train {method} artifacts for a registered model, here, now")
        artifact.add_argument("--model", required=True, help="registered model id")
        artifact.add_argument("--version", type=int, default=None)
        artifact.add_argument("--data", type=Path, required=True, help="folder of images (searched recursively)")
        if get_trainable(method).takes_masks:
            artifact.add_argument("--masks", type=Path, default=None,
                                  help="folder with a mask of each image's finding, under the same relative paths")
        artifact.add_argument("--params", default="{}", help="JSON object of training parameters")
        artifact.add_argument("--target-class", type=int, default=None, help="one-vs-rest class of a multi-class model")
        artifact.add_argument("--device", default=None)
        artifact.set_defaults(run=_train_artifacts, method=method)


def _train_classifier(args: argparse.Namespace, settings: Settings) -> int:
    from models.training.classifier import train_from_folder
    from workers.runtime import pick_device

    folder = train_from_folder(
        args.data, args.out, model_id=args.id, architecture=args.architecture, size=args.size,
        channels=args.channels, epochs=args.epochs, val_fraction=args.val_fraction, device=pick_device(args.device),
    )
    print(f"wrote {folder}; register it with: xai register {folder}")
    return 0


def _train_demo(args: argparse.Namespace, settings: Settings) -> int:
    from models.training.demo import build_demo
    out = args.out or DEMO_DIR / args.name
    build_demo(args.name, args.data_root, out)
    print(f"wrote {out}")
    return 0


def _train_artifacts(args: argparse.Namespace, settings: Settings) -> int:
    """Run the same training the train queue runs, in this process, printing progress."""
    from workers.runtime import WorkerContext
    from workers.training import train_artifacts
    from xai.jobs import TrainJob

    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    context = WorkerContext(settings, connection=None)
    request = TrainJob(job_id="local", submitted_at=time.time(), method=args.method, model_id=args.model,
                       model_version=args.version, data=str(args.data.resolve()),
                       masks=str(args.masks.resolve()) if getattr(args, "masks", None) else None,
                       params=json.loads(args.params),
                       target_class=args.target_class)
    result = train_artifacts(context, request, _PrintedProgress())
    print(json.dumps(result, indent=2))
    return 0


class _PrintedProgress:
    """The GroupProgress interface for a terminal: stages and notes printed as they come."""

    def stage(self, stage, span=None) -> None:
        print(f"[{stage.value}]", flush=True)

    def __call__(self, fraction: float, note: str | None = None) -> None:
        print(f"  {fraction:6.1%} {note or ''}", flush=True)
