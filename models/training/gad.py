"""GAD support models: copies of a classifier fine-tuned to push two classes' logits apart by alpha.

Mazini Rodrigues, Boutry and Najman, "Transforming gradient-based techniques into interpretable
methods" (GAD), Pattern Recognition Letters 2024, sections 4.1 and 4.2. For each alpha, a deep copy of
the classifier is trained as a regressor of the classifier's own logits, where for the images of one
class of the pair the other class's logit is lowered by alpha. A support model that fits its targets
separates the two classes by alpha more than the classifier does, while keeping the order of the
images within each class.

Our choices where the paper is silent are ``xai.methods.gad.DESIGN_CHOICES`` (prediction-based
class assignment, all K logits regressed, copies fine-tuned in eval mode); they are written into the
artifact's config. For a sigmoid classifier (presented as the logits ``[-z/2, z/2]``) the targets
cannot be met exactly, since the two presented logits stay opposite: the MSE optimum moves z by
exactly alpha towards the image's own class and leaves a loss floor of alpha**2 / 4, so the summary
reports the achieved ``margin_shift`` (target: alpha) next to the loss.

Layout of ``out_dir``: ``checkpoint.pt`` (rewritten after every epoch, so a second call resumes) and,
when done, ``artifact/`` with one ``support_alpha_<alpha>.pt`` state_dict per alpha and ``config.json``.

Example:
    >>> summary = train(classifier, images, Path("runs/gad"), {"epochs": 3}, progress, "cpu")
    >>> summary["margin_shift"]
    {'2': 1.93, '4': 3.88, '6': 5.79, '8': 7.71}
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.artifacts.gad import alpha_key, write_artifact
from models.guard import predict_logits
from xai.errors import InvalidInput
from xai.methods.gad import TRAINING_SPECS, parse_alphas, parse_class_pair

ARTIFACT_DIR = "artifact"
CHECKPOINT_FILE = "checkpoint.pt"

Progress = Callable[[float, str | None], None]


@dataclass(frozen=True)
class TrainingSettings:
    alphas: list[float]
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int


def settings_from_params(params: dict[str, Any]) -> TrainingSettings:
    """Validate ``params`` against the ``gad`` training spec, fill defaults and parse the alphas.

    Raises:
        InvalidInput: ``invalid_params`` for an unknown name or a value out of range.
    """
    resolved = TRAINING_SPECS[0].resolve_params(params)
    return TrainingSettings(
        alphas=parse_alphas(resolved["alphas"]),
        epochs=resolved["epochs"],
        learning_rate=resolved["learning_rate"],
        batch_size=resolved["batch_size"],
        seed=resolved["seed"],
    )


def resolve_class_pair(class_names: list[str], class_pair: tuple[int, int] | None) -> tuple[int, int]:
    """The class pair to distance: the given one, or (0, 1) for a two-class model.

    Raises:
        InvalidInput: ``class_pair_required`` for a model with more than two classes and no pair;
            ``invalid_class_pair`` for indices out of range or equal.
    """
    if class_pair is None:
        if len(class_names) != 2:
            raise InvalidInput(
                f"this model has {len(class_names)} classes; name the two GAD should distance with "
                f"class_pair, e.g. '{class_names[0]},{class_names[1]}'",
                code="class_pair_required",
            )
        return 0, 1
    first, second = (int(index) for index in class_pair)
    if first == second or not all(0 <= index < len(class_names) for index in (first, second)):
        raise InvalidInput(
            f"class_pair {class_pair} must be two different indices in 0..{len(class_names) - 1}",
            code="invalid_class_pair",
        )
    return first, second


def assign_to_pair(logits: torch.Tensor, class_pair: tuple[int, int]) -> torch.Tensor:
    """Which class of the pair each image belongs to, by the classifier's arg-max: 0, 1, or -1 for neither."""
    predicted = logits.argmax(dim=1)
    side = torch.full_like(predicted, -1)
    side[predicted == class_pair[0]] = 0
    side[predicted == class_pair[1]] = 1
    return side


def distanced_targets(
    logits: torch.Tensor, side: torch.Tensor, class_pair: tuple[int, int], alpha: float
) -> torch.Tensor:
    """The regression targets: the logits with the other pair class's logit lowered by ``alpha``.

    Args:
        logits: ``N x K`` classifier logits.
        side: ``N`` values from ``assign_to_pair`` (0 or 1; rows with -1 are left unchanged).
        class_pair: The two class indices.
        alpha: The distance to add between the two classes.
    """
    targets = logits.clone()
    first, second = class_pair
    targets[side == 0, second] -= alpha
    targets[side == 1, first] -= alpha
    return targets


def pair_margin(logits: torch.Tensor, side: torch.Tensor, class_pair: tuple[int, int]) -> torch.Tensor:
    """Own-class logit minus other-class logit of each image of the pair (rows with side -1 give NaN)."""
    own = torch.where(side == 0, logits[:, class_pair[0]], logits[:, class_pair[1]])
    other = torch.where(side == 0, logits[:, class_pair[1]], logits[:, class_pair[0]])
    return torch.where(side >= 0, own - other, torch.nan)


def train(
    classifier: nn.Module,
    images: torch.Tensor,
    out_dir: Path,
    params: dict[str, Any],
    progress: Progress,
    device: torch.device | str,
    *,
    class_pair: tuple[int, int] | None = None,
    target_class: int | None = None,
) -> dict[str, Any]:
    """Train one GAD support model per alpha and write the artifact folder ``out_dir / "artifact"``.

    The classifier is never modified: support models are deep copies. A checkpoint is written after
    every epoch; calling again with the same images and settings resumes from it (more epochs extend
    a finished run), different settings start over.

    Args:
        classifier: A ``models.loader.Classifier`` (images in [0, 1] -> ``B x K`` logits; ``.manifest``).
        images: ``N x C x H x W`` training images in [0, 1] at the model's input size (any device).
        out_dir: Folder for the checkpoint and the artifact (created if missing).
        params: Training parameters of ``xai.methods.gad.TRAINING_SPECS`` (missing ones get defaults).
        progress: ``progress(fraction, note)`` after each epoch; may raise ``JobCancelled``, which
            propagates after the checkpoint of that epoch is saved.
        device: Where the support models train.
        class_pair: The two class indices to distance; default: ``params["class_pair"]``, else the
            two classes of a binary model.
        target_class: The class the caller means to explain (the shared training entry point passes
            it for one-vs-rest methods); GAD distances a pair, so it only checks the class is in it.

    Returns:
        A JSON-safe summary: settings, images used per class, final loss and achieved margin shift per
        alpha, seconds, whether it resumed, and the artifact path.

    Raises:
        InvalidInput: bad params or class pair; ``target_not_in_class_pair`` for a ``target_class``
            outside the pair; ``class_not_predicted`` when the classifier assigns no image to one of
            the two classes.
    """
    started = time.perf_counter()
    settings = settings_from_params(params)
    class_names = list(classifier.manifest.class_names)
    if class_pair is None:
        class_pair = parse_class_pair(params.get("class_pair", ""), class_names)
    pair = resolve_class_pair(class_names, class_pair)
    if target_class is not None and target_class not in pair:
        raise InvalidInput(
            f"target class {target_class} is not one of the classes GAD distances ({pair[0]}, {pair[1]}); "
            "set class_pair to a pair that contains it",
            code="target_not_in_class_pair",
        )
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    images, logits, side, counts = _images_of_pair(classifier, images, pair, settings.batch_size)
    supports = [_support_copy(classifier, device) for _ in settings.alphas]
    optimizers = [torch.optim.Adam(model.parameters(), lr=settings.learning_rate) for model in supports]
    fingerprint = _fingerprint(settings, pair, images, classifier)
    start_epoch, history = _resume(
        out_dir / CHECKPOINT_FILE, fingerprint, settings.epochs, supports, optimizers, device
    )
    targets = [distanced_targets(logits, side, pair, alpha) for alpha in settings.alphas]

    for epoch in range(start_epoch, settings.epochs):
        losses = {}
        for index, (alpha, model, optimizer) in enumerate(zip(settings.alphas, supports, optimizers)):
            generator = _epoch_generator(settings.seed, epoch, index)
            losses[alpha_key(alpha)] = _train_epoch(
                model, optimizer, images, targets[index], settings, generator, device
            )
        history.append(losses)
        _save_checkpoint(out_dir / CHECKPOINT_FILE, fingerprint, epoch + 1, supports, optimizers, history)
        note = ", ".join(f"alpha {key}: loss {loss:.4g}" for key, loss in losses.items())
        progress((epoch + 1) / settings.epochs, f"epoch {epoch + 1}/{settings.epochs}: {note}")

    shifts = _margin_shifts(supports, images, logits, side, pair, settings)
    summary = {
        "alphas": settings.alphas,
        "class_pair": list(pair),
        "class_names": [class_names[index] for index in pair],
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "optimizer": "Adam",
        "loss": "MSE over all logits",
        "images_used": {class_names[pair[0]]: counts[0], class_names[pair[1]]: counts[1]},
        "images_not_in_pair": counts[2],
        "final_loss": history[-1] if history else {},
        "margin_shift": shifts,
        "resumed_from_epoch": start_epoch,
        "seconds": round(time.perf_counter() - started, 1),
    }
    artifact = write_artifact(
        out_dir / ARTIFACT_DIR, supports, settings.alphas, pair, classifier.manifest, summary
    )
    return {**summary, "artifact": str(artifact)}


def _images_of_pair(
    classifier: nn.Module, images: torch.Tensor, pair: tuple[int, int], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """The images the classifier assigns to the pair, their logits and sides (0/1), and the counts
    ``[first class, second class, neither]``.

    Raises:
        InvalidInput: ``class_not_predicted`` when no image is assigned to one of the two classes.
    """
    logits = predict_logits(classifier, images, batch_size)
    side = assign_to_pair(logits, pair)
    counts = [int((side == value).sum()) for value in (0, 1, -1)]
    missing = " or ".join(
        repr(classifier.manifest.class_names[index]) for index, count in zip(pair, counts) if count == 0
    )
    if missing:
        raise InvalidInput(
            f"the classifier predicts none of the {len(images)} training images as {missing}; GAD distances "
            "the two classes as the classifier sees them, so add images it assigns to that class",
            code="class_not_predicted",
        )
    used = side >= 0
    return images[used.to(images.device)].cpu(), logits[used], side[used], counts


def _support_copy(classifier: nn.Module, device: torch.device) -> nn.Module:
    """A trainable deep copy in eval mode: batch-norm statistics and dropout stay as the classifier's."""
    support = copy.deepcopy(classifier).to(device).eval()
    for parameter in support.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    return support


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: TrainingSettings,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass in a seeded random order; returns the mean MSE over the epoch's images."""
    order = torch.randperm(len(images), generator=generator)
    total = 0.0
    for batch in order.split(settings.batch_size):
        loss = F.mse_loss(model(images[batch].to(device)), targets[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(order)


def _epoch_generator(seed: int, epoch: int, model_index: int) -> torch.Generator:
    # One generator per (epoch, model): a resumed run draws the same batch order as an uninterrupted one.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + model_index)


def _margin_shifts(
    supports: list[nn.Module],
    images: torch.Tensor,
    logits: torch.Tensor,
    side: torch.Tensor,
    pair: tuple[int, int],
    settings: TrainingSettings,
) -> dict[str, float]:
    """Mean increase of own-minus-other logit over the classifier, per alpha (the target is alpha)."""
    before = pair_margin(logits, side, pair)
    shifts = {}
    for alpha, model in zip(settings.alphas, supports):
        after = pair_margin(predict_logits(model, images, settings.batch_size), side, pair)
        shifts[alpha_key(alpha)] = round(float((after - before).mean()), 4)
    return shifts


def _fingerprint(
    settings: TrainingSettings, pair: tuple[int, int], images: torch.Tensor, classifier: nn.Module
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (epochs may grow): the settings, the images and
    the classifier's weights (support models fine-tuned from other weights must not be continued)."""
    digest = hashlib.sha256()
    for name, tensor in classifier.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "alphas": settings.alphas,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "class_pair": list(pair),
        "images": list(images.shape),
        "image_sum": round(float(images.double().sum()), 3),
        "classifier_sha256": digest.hexdigest(),
    }


def _resume(
    path: Path,
    fingerprint: dict[str, Any],
    epochs: int,
    supports: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    device: torch.device,
) -> tuple[int, list[dict[str, float]]]:
    """Load a matching checkpoint into the models and optimizers; returns (epochs done, loss history).

    A checkpoint for other settings, or with more epochs done than now asked for, is ignored.
    """
    if not path.exists():
        return 0, []
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if checkpoint.get("fingerprint") != fingerprint or checkpoint["epochs_done"] > epochs:
        return 0, []
    for model, optimizer, model_state, optimizer_state in zip(
        supports, optimizers, checkpoint["models"], checkpoint["optimizers"]
    ):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    return int(checkpoint["epochs_done"]), list(checkpoint["history"])


def _save_checkpoint(
    path: Path,
    fingerprint: dict[str, Any],
    epochs_done: int,
    supports: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    history: list[dict[str, float]],
) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(
        {
            "fingerprint": fingerprint,
            "epochs_done": epochs_done,
            "models": [model.state_dict() for model in supports],
            "optimizers": [optimizer.state_dict() for optimizer in optimizers],
            "history": history,
        },
        temporary,
    )
    os.replace(temporary, path)  # a job killed mid-write leaves the previous checkpoint intact
