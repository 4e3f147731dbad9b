"""Train a classifier (from tensors or from a folder of labelled images) and save it as a model folder.

The network is trained behind the same ``Normalization`` the loader puts in front of it, so the
saved state_dict is exactly what ``models.loader.load_classifier`` serves. Held-out figures
(accuracy, ROC AUC) go into the manifest's ``evaluation``; ROC AUC is computed here with the rank
(Mann-Whitney) formula, since scikit-learn is not a dependency.

Example:
    >>> net, evaluation = train_classifier(images, labels, architecture="small_cnn", architecture_args={},
    ...     input_spec=spec, class_names=["benign", "malignant"], output="sigmoid", epochs=20,
    ...     batch_size=32, lr=1e-3, device="cpu", seed=0, val_images=val_images, val_labels=val_labels)
    >>> save_model_folder(Path("my-model"), manifest, net)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from models.loader import Normalization
from models.manifest import InputSpec, ModelManifest
from models.networks import build_network, default_target_layer
from models.store import MANIFEST_NAME, sha256_of
from models.training.data import away_from, class_folders, load_image_folder
from xai.errors import InvalidInput

Output = Literal["softmax", "sigmoid"]
# Called with a fraction in [0, 1] and a note; may raise xai.errors.JobCancelled (it propagates).
Progress = Callable[[float, str | None], None]


@dataclass(frozen=True)
class Augmentation:
    """Random geometric and intensity changes applied to each training batch (on its device).

    Horizontal flips are off by default: they turn a 3 into a mirrored glyph and move the heart to
    the wrong side of a chest X-ray; turn them on for images without a handedness (ultrasound).

    Attributes:
        rotation_degrees: Largest rotation either way. Default: 10.
        translate: Largest shift, as a fraction of the image size. Default: 0.06.
        scale: Range of zoom factors. Default: (0.9, 1.1).
        horizontal_flip: Mirror half of the images left-right. Default: False.
        contrast: Largest relative change of contrast around the image mean. Default: 0.15.
        brightness: Largest brightness shift (images are in [0, 1]). Default: 0.08.
    """

    rotation_degrees: float = 10.0
    translate: float = 0.06
    scale: tuple[float, float] = (0.9, 1.1)
    horizontal_flip: bool = False
    contrast: float = 0.15
    brightness: float = 0.08

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a ``B x C x H x W`` batch in [0, 1]; random draws come from ``generator`` (CPU)."""
        return self.with_regions(images, None, generator)[0]

    def with_regions(
        self, images: torch.Tensor, regions: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch and move its ``B x 1 x H x W`` region masks (0 / 1) with the same warp.

        The masks (an annotated finding, e.g. a lesion) are moved by the geometric part only and
        come back as 0 / 1 again; the random draws are those of ``__call__``.
        """
        count, channels = images.shape[0], images.shape[1]

        def uniform(low: float, high: float) -> torch.Tensor:
            return (low + (high - low) * torch.rand(count, generator=generator)).to(images.device)

        angle = uniform(-self.rotation_degrees, self.rotation_degrees) * math.pi / 180
        zoom = uniform(*self.scale)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        mirror = torch.ones(count, device=images.device)
        if self.horizontal_flip:
            mirror = torch.where(uniform(0, 1) < 0.5, -mirror, mirror)
        # affine_grid maps output to input coordinates in [-1, 1], so a shift of 2 * translate is
        # ``translate`` of the image size.
        shift_x, shift_y = (uniform(-2 * self.translate, 2 * self.translate) for _ in range(2))
        theta = torch.stack(
            [torch.stack([mirror * cos, -sin, shift_x], 1), torch.stack([mirror * sin, cos, shift_y], 1)], 1
        )
        stack = images if regions is None else torch.cat([images, regions.to(images)], 1)
        grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
        moved = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved_images = moved[:, :channels]
        mean = moved_images.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(1 - self.contrast, 1 + self.contrast).reshape(-1, 1, 1, 1)
        brightness = uniform(-self.brightness, self.brightness).reshape(-1, 1, 1, 1)
        augmented = ((moved_images - mean) * contrast + mean + brightness).clamp(0, 1)
        moved_regions = None if regions is None else (moved[:, channels:] > 0.5).to(regions.dtype)
        return augmented, moved_regions


# Cells per side of the two grids of ``AdversarialTraining.gain_field``: a broad and a finer brightness change.
GAIN_FIELD_CELLS = (4, 16)


@dataclass(frozen=True)
class AdversarialTraining:
    """Train on each batch and on its PGD attack (Madry et al. 2018), half of the loss each.

    A classifier robust within ``epsilon`` cannot be flipped by a change that small, so a SyCE
    generator cannot flip it with one small texture painted on every image. On the NIH demo task it
    cost too much accuracy to ship (``bench/nih_robust_probe.py``); the demo recipes do not use it.

    Attributes:
        epsilon: Largest change per image: its L2 norm (``norm="l2"``) or the largest change per
            pixel (``"linf"``), images in [0, 1].
        steps: Projected gradient steps of size ``2.5 * epsilon / steps`` from a random start.
        norm: "l2" (localised changes such as stripes count by their energy) or "linf".
        warmup_epochs: ``epsilon`` grows linearly to its value over these first epochs, so that a
            pretrained network that is not robust is not attacked at full radius at once (the NIH
            runs at full radius from the first epoch started at a training loss of 4.7).
        background_margin_px: None attacks the whole image. A number confines the attack to the
            pixels farther than that from the image's annotated finding (``train_classifier``'s
            ``regions``), meant to make the classifier ignore changes away from the finding, so
            that a counterfactual generator has to edit the finding to flip it. On BUSI the
            robustness spread to the lesion too (README, SyCE section); no demo recipe uses it.
        gain_field: 0 (the default) starts the attack at the batch. A positive number starts it at
            the batch plus a random smooth brightness field where the attack may change it, as an
            ultrasound machine's gain and time-gain compensation change an image: two fields on
            ``GAIN_FIELD_CELLS`` grids, interpolated bicubically, whose cell values are uniform within
            ``+- s * gain_field / 2`` for a scale ``s`` drawn uniform in [0, 1] per image and field.
            An L2 ball of ``epsilon`` 1 is far smaller than the smooth changes a SyCE generator with
            ``change_grid`` makes (4-8% of the range on average on BUSI); this is meant to make the
            classifier ignore those away from the finding. No demo recipe uses it (README, SyCE section).
    """

    epsilon: float = 1.0
    steps: int = 3
    norm: Literal["l2", "linf"] = "l2"
    warmup_epochs: int = 0
    background_margin_px: int | None = None
    gain_field: float = 0.0

    def at_epoch(self, epoch: int) -> AdversarialTraining:
        """The attack of 1-based ``epoch``: the radius of the warm-up ramp."""
        if epoch > self.warmup_epochs:
            return self
        return replace(self, epsilon=self.epsilon * epoch / (self.warmup_epochs + 1), warmup_epochs=0)

    def attack(
        self, model: nn.Module, batch: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator, allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The batch moved within ``epsilon`` to raise ``loss_of(model(.))``; no parameter gradients.

        ``allowed`` (broadcast to the batch, 0 / 1) confines the change to where it is 1.
        """
        allowed = torch.ones_like(batch) if allowed is None else allowed.expand_as(batch)
        if self.gain_field > 0:
            batch = (batch + self._gain(batch.shape, generator).to(batch.device) * allowed).clamp(0, 1)
        noise = (torch.rand(batch.shape, generator=generator) * 2 - 1).to(batch.device)
        moved = (batch + self._project(noise * self.epsilon * allowed)).clamp(0, 1)
        step = 2.5 * self.epsilon / self.steps
        for _ in range(self.steps):
            moved.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_of(model(moved)), moved)
            change = (moved.detach() + step * self._direction(grad * allowed) - batch) * allowed
            moved = (batch + self._project(change)).clamp(0, 1)
        return moved.detach()

    def flip_rate(self, model: nn.Module, images: torch.Tensor, allowed: torch.Tensor | None = None) -> float:
        """Share of ``images`` whose decision (one sigmoid logit) this attack, aimed at the other side, flips."""
        with torch.no_grad():
            decided = model(images)[:, 0] > 0
        towards_other = 1 - 2 * decided.float()
        moved = self.attack(
            model, images, lambda logits: (logits[:, 0] * towards_other).sum(), torch.Generator().manual_seed(0),
            allowed,
        )
        with torch.no_grad():
            return float(((model(moved)[:, 0] > 0) != decided).float().mean())

    def allowed_pixels(self, regions: torch.Tensor | None) -> torch.Tensor | None:
        """Where the attack may change a batch whose findings are ``regions``; None: everywhere."""
        if self.background_margin_px is None or regions is None:
            return None
        return away_from(regions.float(), self.background_margin_px)

    def _gain(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """A smooth random brightness field of ``shape`` (see ``gain_field``)."""
        field = torch.zeros(shape[0], 1, *shape[-2:])
        for cells in GAIN_FIELD_CELLS:
            scale = torch.rand((shape[0], 1, 1, 1), generator=generator) * self.gain_field / 2
            values = (torch.rand((shape[0], 1, cells, cells), generator=generator) * 2 - 1) * scale  # all channels
            field += F.interpolate(values, size=shape[-2:], mode="bicubic", align_corners=False)
        return field

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest ascent of unit norm: the sign (L-infinity) or the normalised gradient (L2)."""
        if self.norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)

    def _project(self, change: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return change.clamp(-self.epsilon, self.epsilon)
        norms = change.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        return change * (self.epsilon / norms.clamp_min(1e-12)).clamp(max=1.0)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    architecture: str,
    architecture_args: dict,
    input_spec: InputSpec,
    class_names: list[str],
    output: Output,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device | str,
    seed: int,
    val_images: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    progress: Progress | None = None,
    augment: Augmentation | None = Augmentation(),
    weight_decay: float = 1e-4,
    balance_classes: bool = True,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    adversarial: AdversarialTraining | None = None,
    regions: torch.Tensor | None = None,
    dataset: str = "",
    split: str = "",
) -> tuple[nn.Module, dict]:
    """Train a network from scratch (or from ``initial_state``) with AdamW and a one-cycle schedule.

    The validation images are never used to pick an epoch or a setting here: they are only
    measured, after the last epoch (and reported per epoch to ``progress``), so the returned
    evaluation is an honest held-out figure.

    Args:
        images: ``N x C x H x W`` float tensor in [0, 1] at ``input_spec``'s size.
        labels: ``N`` class indices into ``class_names``.
        architecture: A name ``models.networks.build_network`` knows.
        architecture_args: Its keyword arguments.
        input_spec: Size, channels and normalisation (the normalisation is trained through).
        class_names: The classes; with ``output="sigmoid"`` exactly two, the second being positive.
        output: ``"sigmoid"`` (one logit, binary cross-entropy) or ``"softmax"`` (cross-entropy).
        epochs: Passes over the training images.
        batch_size: Images per step.
        lr: Peak learning rate of the one-cycle schedule.
        device: Where to train.
        seed: Seeds weight initialisation, shuffling and augmentation.
        val_images: Held-out images measured after training. Default: None (no evaluation).
        val_labels: Their labels.
        progress: Called after each epoch with (fraction done, note). Default: None.
        augment: Random changes to each batch; None trains on the images as they are.
        weight_decay: AdamW weight decay. Default: 1e-4.
        balance_classes: Weight the loss by inverse class frequency, so a rare class is not
            ignored. Default: True.
        initial_state: A state_dict to start from (pretraining). Default: None.
        adversarial: Also train on a PGD attack of each batch (recorded in the evaluation).
            Default: None.
        regions: ``N x 1 x H x W`` masks (0 / 1) of each image's annotated finding, moved with
            the augmentation; needed by an attack confined to the background. Default: None.
        dataset: Name of the data set, recorded in the evaluation. Default: "".
        split: How the held-out images were chosen, recorded in the evaluation. Default: "".

    Returns:
        The trained network (eval mode, on ``device``) and its evaluation dict: ``accuracy``,
        ``balanced_accuracy``, ``auc`` (None without held-out images), ``n_train``, ``n_test``,
        ``dataset``, ``split``, ``epochs``, ``final_train_loss``.

    Raises:
        InvalidInput: ``invalid_training_data`` when images and labels do not match the classes.
    """
    _check_training_data(images, labels, class_names, output)
    if adversarial is not None and adversarial.background_margin_px is not None and regions is None:
        raise InvalidInput("an attack confined to the background needs each image's regions",
                           code="invalid_training_data")
    if regions is not None and regions.shape != (images.shape[0], 1, *images.shape[2:]):
        raise InvalidInput(
            f"regions must be one N x 1 x H x W mask per image, got {tuple(regions.shape)} for images "
            f"{tuple(images.shape)}", code="invalid_training_data",
        )
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    num_outputs = 1 if output == "sigmoid" else len(class_names)
    net = build_network(architecture, architecture_args, num_outputs, in_channels=input_spec.channels)
    if initial_state is not None:
        net.load_state_dict(initial_state)
    model = nn.Sequential(Normalization(input_spec), net).to(device)
    loss_function = _loss_function(labels, len(class_names), output, balance_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    held_out = None if val_images is None or val_labels is None else (val_images, val_labels)
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        loss = _train_one_epoch(
            model, images, labels, loss_function, optimizer, schedule, batch_size, augment, generator,
            None if adversarial is None else adversarial.at_epoch(epoch), regions,
        )
        if progress is not None:
            note = f"epoch {epoch}/{epochs}, train loss {loss:.4f}"
            if held_out is not None:
                figures = evaluate_classifier(net, *held_out, input_spec=input_spec, output=output)
                note += f", held-out accuracy {figures['accuracy']:.3f}, auc {_format(figures['auc'])}"
            progress(epoch / epochs, note)
    net.eval()
    evaluation: dict = {"accuracy": None, "balanced_accuracy": None, "auc": None}
    if held_out is not None:
        evaluation = evaluate_classifier(net, *held_out, input_spec=input_spec, output=output)
        del evaluation["n"]
    evaluation.update(
        n_train=len(images),
        n_test=0 if held_out is None else len(held_out[1]),
        dataset=dataset,
        split=split,
        epochs=epochs,
        final_train_loss=round(loss, 4),
    )
    if adversarial is not None:
        evaluation["adversarial_training"] = asdict(adversarial)
    return net, evaluation


def evaluate_classifier(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    input_spec: InputSpec,
    output: Output,
    batch_size: int = 256,
) -> dict:
    """Accuracy, balanced accuracy and ROC AUC of ``net`` (raw network, unnormalised input) on images.

    A sigmoid model predicts the positive class when sigmoid(z) >= 0.5; a softmax model the argmax.
    AUC is binary for two classes and the one-vs-rest macro average for more.

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc", "n"}``, floats rounded to 4 places (auc None
        when only one class is present).
    """
    probabilities = predict_probabilities(
        net, images, input_spec=input_spec, output=output, batch_size=batch_size
    )
    truth = labels.cpu().numpy()
    predicted = probabilities.argmax(axis=1)
    recalls = [float(np.mean(predicted[truth == k] == k)) for k in np.unique(truth)]
    if probabilities.shape[1] == 2:
        auc = roc_auc(probabilities[:, 1], truth)
    else:
        auc = macro_roc_auc(probabilities, truth)
    return {
        "accuracy": round(float(np.mean(predicted == truth)), 4),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "auc": None if auc is None else round(auc, 4),
        "n": len(truth),
    }


def predict_probabilities(
    net: nn.Module, images: torch.Tensor, *, input_spec: InputSpec, output: Output, batch_size: int = 256
) -> np.ndarray:
    """``N x K`` class probabilities (K = 2 for a sigmoid model: [1 - p, p]) as a float64 array."""
    device = next(net.parameters()).device
    model = nn.Sequential(Normalization(input_spec), net).to(device).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size].to(device)).double()
            if output == "sigmoid":
                positive = torch.sigmoid(logits.reshape(-1))
                chunks.append(torch.stack([1 - positive, positive], dim=1).cpu())
            else:
                chunks.append(logits.softmax(dim=1).cpu())
    return torch.cat(chunks).numpy()


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of binary ``labels`` (1 = positive) ranked by ``scores``.

    The Mann-Whitney form: the probability that a random positive scores above a random negative,
    ties counting one half (average ranks). None when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def macro_roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over the classes present in ``labels`` (None if fewer than two)."""
    areas = [roc_auc(probabilities[:, k], labels == k) for k in range(probabilities.shape[1])]
    present = [area for area in areas if area is not None]
    return float(np.mean(present)) if present else None


def fit_normalization(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``N x C x H x W`` images, rounded to 4 places."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def save_model_folder(out_dir: Path, manifest: ModelManifest, net: nn.Module) -> ModelManifest:
    """Write ``manifest.json`` and the state_dict (``manifest.weights_file``) into ``out_dir``.

    The folder is what ``ModelStore.register_directory`` takes. ``weights_sha256`` is filled in.

    Returns:
        The manifest as written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in net.state_dict().items()}
    weights = out_dir / manifest.weights_file
    torch.save(state, weights)
    written = manifest.model_copy(update={"weights_sha256": sha256_of(weights)})
    (out_dir / MANIFEST_NAME).write_text(written.model_dump_json(indent=2) + "\n")
    return written


def train_from_folder(
    data_dir: Path,
    out_dir: Path,
    *,
    model_id: str,
    architecture: str = "small_cnn",
    architecture_args: dict | None = None,
    size: int = 128,
    channels: Literal[1, 3] = 1,
    epochs: int = 20,
    val_fraction: float = 0.2,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    seed: int = 0,
    augment: Augmentation | None = Augmentation(),
    progress: Progress | None = None,
) -> ModelManifest:
    """Train a classifier on a folder with one sub-folder of images per class and write a model folder.

    Classes are the sub-folder names, sorted; two classes give a sigmoid model (the second name is
    the positive class), more a softmax one. A stratified random ``val_fraction`` of the images
    (not grouped by patient: split by patient yourself when a patient has several images) is held
    out and measured after training; the figures go into the manifest's ``evaluation``.

    Args:
        data_dir: ``data_dir/<class name>/**/<image>`` (PNG, JPEG, TIFF or DICOM).
        out_dir: Where ``manifest.json`` and ``weights.pt`` are written.
        model_id: The manifest id.
        architecture: Default: ``"small_cnn"``.
        architecture_args: Default: the architecture's defaults.
        size: Images are stretched to ``size x size``. Default: 128.
        channels: 1 (grey) or 3 (RGB). Default: 1.
        epochs, batch_size, lr, device, seed, augment, progress: As ``train_classifier``.
        val_fraction: Held-out share of each class. Default: 0.2.

    Returns:
        The written manifest.

    Raises:
        InvalidInput: ``too_few_classes`` for fewer than two class folders, ``unlabelled_images``
            when some images are not inside a class folder.
    """
    data_dir = Path(data_dir)
    class_names = class_folders(data_dir)
    if len(class_names) < 2:
        raise InvalidInput(
            f"{data_dir} needs one sub-folder of images per class (at least two); found {class_names}",
            code="too_few_classes",
        )
    plain_spec = InputSpec(height=size, width=size, channels=channels)
    images, labels, paths = load_image_folder(data_dir, plain_spec, class_names)
    if labels is None:
        raise InvalidInput(
            f"every image under {data_dir} must be inside one of the class folders {class_names}",
            code="unlabelled_images",
        )
    train_index, val_index = stratified_split(labels, val_fraction, seed)
    mean, std = fit_normalization(images[train_index])
    spec = InputSpec(height=size, width=size, channels=channels, mean=mean, std=std)
    output: Output = "sigmoid" if len(class_names) == 2 else "softmax"
    net, evaluation = train_classifier(
        images[train_index],
        labels[train_index],
        architecture=architecture,
        architecture_args=architecture_args or {},
        input_spec=spec,
        class_names=class_names,
        output=output,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        seed=seed,
        val_images=images[val_index] if len(val_index) else None,
        val_labels=labels[val_index] if len(val_index) else None,
        progress=progress,
        augment=augment,
        dataset=data_dir.name,
        split=f"stratified random {val_fraction:.0%} of the images held out (seed {seed}), "
        "not grouped by patient",
    )
    manifest = ModelManifest(
        id=model_id,
        description=f"{' vs '.join(class_names)} classifier trained by `xai train classifier` on "
        f"{len(paths)} images of {data_dir.name}",
        architecture=architecture,
        architecture_args=architecture_args or {},
        input=spec,
        output=output,
        class_names=class_names,
        target_layer=default_target_layer(net),
        evaluation=evaluation,
    )
    return save_model_folder(out_dir, manifest, net)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held out) holding out ``round(fraction * n_k)`` random images of each class k."""
    generator = torch.Generator().manual_seed(seed)
    train, held_out = [], []
    for k in torch.unique(labels):
        members = torch.nonzero(labels == k).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = round(fraction * len(members))
        held_out.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(held_out).sort().values


def _train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_function: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    augment: Augmentation | None,
    generator: torch.Generator,
    adversarial: AdversarialTraining | None = None,
    regions: torch.Tensor | None = None,
) -> float:
    device = next(model.parameters()).device
    order = torch.randperm(len(images), generator=generator)
    total, seen = 0.0, 0
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        if len(index) < 2:  # batch norm cannot normalise a batch of one image
            continue
        batch, target = images[index].to(device), labels[index].to(device)
        region = None if regions is None else regions[index].to(device)
        if augment is not None:
            batch, region = augment.with_regions(batch, region, generator)

        def loss_of(logits: torch.Tensor, target: torch.Tensor = target) -> torch.Tensor:
            if isinstance(loss_function, nn.BCEWithLogitsLoss):
                return loss_function(logits.reshape(-1), target.float())
            return loss_function(logits, target)

        loss = loss_of(model(batch))
        if adversarial is not None:
            attacked = adversarial.attack(model, batch, loss_of, generator, adversarial.allowed_pixels(region))
            loss = (loss + loss_of(model(attacked))) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item() * len(index)
        seen += len(index)
    return total / seen


def _loss_function(labels: torch.Tensor, num_classes: int, output: Output, balance: bool) -> nn.Module:
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    if output == "sigmoid":
        return nn.BCEWithLogitsLoss(pos_weight=(counts[0] / counts[1]).reshape(1) if balance else None)
    return nn.CrossEntropyLoss(weight=counts.sum() / (num_classes * counts) if balance else None)


def _check_training_data(
    images: torch.Tensor, labels: torch.Tensor, class_names: list[str], output: Output
) -> None:
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or len(images) < 2:
        raise InvalidInput(
            f"expected N >= 2 images N x C x H x W and N labels, got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}",
            code="invalid_training_data",
        )
    if int(labels.min()) < 0 or int(labels.max()) >= len(class_names):
        raise InvalidInput(
            f"labels must be class indices 0..{len(class_names) - 1} ({', '.join(class_names)})",
            code="invalid_training_data",
        )
    if output == "sigmoid" and len(class_names) != 2:
        raise InvalidInput("a sigmoid model has exactly two classes", code="invalid_training_data")


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
