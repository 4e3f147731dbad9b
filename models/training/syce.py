"""Train the SyCE or CyCE generators of a classifier, and read back the artifact they produce.

The method (Charachon et al. 2021, suppl. 0.E; reference code ``martinCharachon/cGANsExplainer``,
``src/optimization/optimization_syce.py`` and ``optimization_cyce.py``):

* Images are split by the classifier's own decision, not by ground truth: side 1 = predicted as
  the target class, side 0 = predicted as anything else (one class against the rest for multi-class
  models; for a binary model the target class is 1 and side 0 is class 0).
* Generator ``G[s]`` maps images of side ``s`` to the other side; discriminator ``D[s]`` tells real
  images of side ``s`` from images generated into it.
* Per step, for a batch of each side (side 0 first), one Adam step of both generators on
  adversarial classification ``BCE(other side, f(G[s](x)))``, the GAN term on ``D[1-s](G[s](x))``,
  cycle reconstruction ``||x - G[1-s](G[s](x))||`` (MSE + MAE) and its classification as side ``s``;
  SyCE adds symmetry reconstruction ``||x - G[s](G[s](x))||`` and its classification as side ``s``.
  Ours, off by default (``weight_specificity``): another image of the batch plus this image's
  change ``G[s](x) - x`` classified as side ``s`` (``transferred``). Ours too, off by default
  (``weight_smoothness``): the roughness (``roughness``: mean absolute difference from its own
  3 x 3 box blur) of the change ``G[s](x) - x`` plus, for SyCE, that of the stable pass
  ``G[s](G[s](x)) - G[s](x)`` (the SyCE heatmap), against changes that flip a fragile classifier
  with a checkerboard or stripe texture instead of a smooth edit. And ours, off by default
  (``warp_grid``): generators that move the image's content by a smooth displacement field instead
  of adding a change (``models.networks.unet.smooth_field`` and ``resample``), which cannot paint a texture at all. With
  them, ours and off by default (``weight_fold``): ``fold_penalty`` of the field of every generator
  pass, so a fine field (many cells) moves tissue as a smooth, invertible deformation instead of
  folding it into waves; and ``weight_displacement``: the mean length of that field in pixels
  (``displacement_length``), so the generator moves as little of the image as it can, which keeps
  it from shifting whole tissue layers and the skin line when a local edit would do. And ours, off
  by default (``change_grid``): additive generators whose change is smooth on a grid of cells
  (``smooth_field`` again), which can brighten or darken a region but not paint dots or stripes;
  and ``weight_proximity``: the mean absolute change ``|G[s](x) - x|``, so the generator changes no
  more of the image than flips it. And ours, off by default, for training images with annotated
  findings (``train(regions=...)``; ``weight_outside_finding``): the mean change farther than
  ``finding_margin_px`` from the image's finding, of the adversarial pass and, for SyCE, of the
  stable pass (the heatmap), so the generators learn to edit the finding and its surroundings and
  leave the rest of the image alone. Nothing about the finding is given at request time: the
  generator has learned where to look.
  Then one Adam step of each discriminator on real vs generated images with a gradient penalty.
* Adam with learning rates 1e-4 (generators) and 2e-4 (discriminators), as the paper states.

Where we differ from the reference code, on purpose: the discriminators see the generated images
of the generator step (detached) instead of generating them again after the update (CycleGAN
practice, one generator pass fewer per step); the learning rate is constant (no plateau schedule);
the generators add their output to their input (``UNetGenerator.residual_output``); every epoch
ends with a checkpoint, so a restarted job resumes where it stopped, and the generators of the
last epoch are the artifact (the reference keeps the epoch of lowest validation loss).

Example:
    >>> params = {"variant": "syce", "epochs": 20}
    >>> summary = train(classifier, images, Path("runs/mnist"), params, progress, "cpu")
    >>> pair = models.artifacts.syce.load_artifact(Path("runs/mnist/artifact"), "cpu")
    >>> counterfactuals = pair.translate(images, pair.sides(classifier(images)))
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.artifacts.syce import (
    FORMAT_VERSION,
    GeneratorPair,
    decision_sides,
    load_artifact,
    resolve_target_class,
    side_logit,
    write_artifact,
)
from models.guard import model_left_as_found, predict_logits
from models.networks.discriminator import Discriminator, discriminator_widths_for_size
from models.networks.unet import UNetGenerator, jacobian_determinant, resample, widths_for_size
from models.training.data import away_from
from xai.errors import InvalidInput
from xai.methods.syce import resolve_preset, training_spec

Progress = Callable[[float, str | None], None]

CHECKPOINT_NAME = "checkpoint.pt"
ARTIFACT_DIR = "artifact"
PREDICTION_BATCH = 256
PROGRESS_INTERVAL_S = 1.0
# A checkpoint made with different values of these cannot be continued: the networks or the data
# split would differ. ``epochs`` may change (train longer by calling again with more epochs).
# Terms on a warp generator's displacement field (an additive generator has none).
WARP_TERMS = ("weight_fold", "weight_displacement")
RESUME_KEYS = (
    "variant",
    "target_class",
    "batch_size",
    "base_width",
    "dropout",
    "warp_grid",
    "change_grid",
    "validation_fraction",
    "seed",
    "image_shape",
)


# ----------------------------------------------------------------------------- plan


@dataclass
class TrainingPlan:
    """Validated parameters, with the preset's values filled in."""

    variant: str
    preset: str
    weights: dict[str, float]
    params: dict[str, Any]
    target_class: int
    num_classes: int
    image_shape: tuple[int, int, int]

    @property
    def batch_size(self) -> int:
        return self.params["batch_size"]

    def resume_identity(self) -> dict[str, Any]:
        values = {
            **self.params,
            "variant": self.variant,
            "target_class": self.target_class,
            "image_shape": list(self.image_shape),
        }
        return {key: values[key] for key in RESUME_KEYS}


def make_plan(
    params: dict[str, Any], image_shape: tuple[int, int, int], num_classes: int, target_class: int
) -> TrainingPlan:
    """Validate ``params`` against the variant's training spec and fill in the preset's values."""
    variant = params.get("variant", "syce")
    params = training_spec(variant).resolve_params(params)
    preset, preset_values = resolve_preset(variant, params["preset"], image_shape[1], image_shape[2])
    params = {name: preset_values[name] if value is None else value for name, value in params.items()}
    weights = {name: value for name, value in params.items() if name.startswith("weight_")}
    for name in WARP_TERMS:
        if weights[name] > 0 and not params["warp_grid"]:
            raise InvalidInput(
                f"{name} penalises a warp generator's field: set warp_grid above 0 too", code="invalid_params"
            )
    if params["warp_grid"] and params["change_grid"]:
        raise InvalidInput(
            "change_grid smooths an additive generator's change and warp_grid makes a warp generator: "
            "set one of them", code="invalid_params",
        )
    return TrainingPlan(variant, preset, weights, params, target_class, num_classes, image_shape)


# ----------------------------------------------------------------------------- training


def train(
    classifier: nn.Module,
    images: torch.Tensor,
    out_dir: Path,
    params: dict[str, Any],
    progress: Progress,
    device: torch.device | str,
    *,
    target_class: int | None = None,
    init_from: Path | None = None,
    regions: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train the SyCE or CyCE generators of ``classifier`` and write ``out_dir/artifact``.

    Calling again with the same ``out_dir`` resumes from its checkpoint (after a restart or a
    cancellation); with more ``epochs`` it trains further; when the checkpoint is complete it only
    rewrites the artifact.

    Args:
        classifier: Takes ``B x C x H x W`` images in [0, 1], returns ``B x K`` logits. Frozen while
            training (eval mode, no parameter gradients) and left as found.
        images: ``N x C x H x W`` training images in [0, 1] at the classifier's input size.
        out_dir: Folder for ``checkpoint.pt`` and the final ``artifact/`` folder.
        params: Training parameters (``xai.methods.syce.training_spec(variant)``); ``variant`` is
            "syce" (default) or "cyce" (the same training without the symmetry terms); missing ones
            take their defaults, ``None`` loss weights and batch size the preset's values.
        progress: Called with (fraction, note) during training; may raise ``JobCancelled``, which
            propagates after a checkpoint is written.
        device: Where to train.
        target_class: The class explained against the rest (default 1 for binary classifiers).
        init_from: An artifact folder (``write_artifact``) whose generators start this run instead of
            the identity (fine-tuning, e.g. with other loss weights); the discriminators and optimisers
            start fresh and epochs count from 0. Used only when ``out_dir`` holds no checkpoint (a
            resumed run continues from its checkpoint); the summary records it as
            ``initialised_from``.
        regions: ``N x 1 x H x W`` masks of each image's annotated finding (above 0.5 = in it), for
            ``weight_outside_finding``, which needs them. Default: None.

    Returns:
        A JSON-safe summary: variant, preset, weights, epochs, steps, sizes of each side, final losses,
        validation flip rate per epoch, seconds, ``initialised_from`` (None or the folder, its variant,
        epochs and seconds), and the artifact path.

    Raises:
        InvalidInput: ``invalid_params``, ``target_class_required``, ``invalid_target_class``,
            ``invalid_training_images``, ``single_decision_side`` (the classifier decides all images
            the same way), ``checkpoint_mismatch`` (``out_dir`` holds a run with other settings);
            ``invalid_params`` also when ``init_from`` holds generators of another architecture or
            target class, and when ``weight_outside_finding`` is set without ``regions`` (or they do
            not match the images).
        ServiceError: ``artifact_unreadable`` when ``init_from`` cannot be read.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    _check_images(images)
    with frozen(classifier):
        logits = predict_logits(classifier, images, PREDICTION_BATCH)
        target = resolve_target_class(logits.shape[1], target_class)
        plan = make_plan(params, tuple(images.shape[1:]), logits.shape[1], target)
        away = away_from_finding(images, regions, plan)
        sides = decision_sides(logits, target)
        run = TrainingRun(classifier, images, sides, plan, out_dir, device, init_from, away)
        return run.fit(progress)


@contextmanager
def frozen(classifier: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while training against it; restores both after."""
    with model_left_as_found(classifier):
        classifier.requires_grad_(False)
        yield


def away_from_finding(
    images: torch.Tensor, regions: torch.Tensor | None, plan: TrainingPlan
) -> torch.Tensor | None:
    """``N x 1 x H x W``: 1 where a pixel is farther than ``finding_margin_px`` from its image's finding
    (chessboard distance), else 0; None when ``weight_outside_finding`` is off."""
    if plan.weights["weight_outside_finding"] <= 0:
        return None
    expected = (len(images), 1, *images.shape[2:])
    if regions is None or tuple(regions.shape) != expected:
        got = "none" if regions is None else f"shape {tuple(regions.shape)}"
        raise InvalidInput(
            f"weight_outside_finding needs a mask of each training image's finding, N x 1 x H x W "
            f"{expected}; got {got}", code="invalid_params",
        )
    return away_from((regions > 0.5).float(), plan.params["finding_margin_px"])


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[0] < 2:
        raise InvalidInput(
            f"training needs N x C x H x W images with N >= 2, got shape {tuple(images.shape)}",
            code="invalid_training_images",
        )
    if images.min() < 0 or images.max() > 1:
        raise InvalidInput("training images must have values in [0, 1]", code="invalid_training_images")


class TrainingRun:
    """The networks, optimisers and data of one training run, and its checkpoint."""

    def __init__(
        self,
        classifier: nn.Module,
        images: torch.Tensor,
        sides: torch.Tensor,
        plan: TrainingPlan,
        out_dir: Path,
        device: torch.device,
        init_from: Path | None = None,
        away: torch.Tensor | None = None,
    ):
        self.classifier, self.images, self.plan, self.away = classifier, images, plan, away
        self.out_dir, self.device = out_dir, device
        self.init_from = None if init_from is None else Path(init_from)
        self.initialised_from: dict[str, Any] | None = None
        self.validation, pools = split_by_side(sides, plan.params["validation_fraction"], plan.params["seed"])
        self.sides = sides
        self.pools = pools
        if min(len(pool) for pool in pools) == 0:
            counts = [int((sides == s).sum()) for s in (0, 1)]
            raise InvalidInput(
                f"the classifier decides {counts[1]} of {len(sides)} images as class {plan.target_class} and "
                f"{counts[0]} otherwise; training needs images on both sides of its decision (after "
                "holding out the validation fraction): add images of the missing side",
                code="single_decision_side",
            )
        torch.manual_seed(plan.params["seed"])
        channels, height, width = plan.image_shape
        widths = widths_for_size(height, width, plan.params["base_width"])
        self.generators = [
            UNetGenerator(
                channels, widths, dropout=plan.params["dropout"], warp_grid=plan.params["warp_grid"],
                change_grid=plan.params["change_grid"],
            ).to(device)
            for _ in range(2)
        ]
        self.discriminators = [
            Discriminator(channels, height, width, discriminator_widths_for_size(height, width)).to(device)
            for _ in range(2)
        ]
        self.optimizer_g = torch.optim.Adam(
            [p for g in self.generators for p in g.parameters()], lr=plan.params["lr_generator"]
        )
        self.optimizer_d = torch.optim.Adam(
            [p for d in self.discriminators for p in d.parameters()], lr=plan.params["lr_discriminator"]
        )
        self.steps_per_epoch = math.ceil(max(len(pool) for pool in pools) / plan.batch_size)
        self.epoch, self.step, self.history, self.seconds = 0, 0, [], 0.0
        # Moving average of each loss term over recent steps (what progress notes and history show).
        self.running: dict[str, float] = {}

    # --------------------------------------------------------------- loop

    def fit(self, progress: Progress) -> dict[str, Any]:
        if not self._resume() and self.init_from is not None:
            self._initialise(self.init_from)
        epochs = self.plan.params["epochs"]
        total = epochs * self.steps_per_epoch
        last_report = -math.inf
        started = time.perf_counter() - self.seconds
        while self.epoch < epochs:
            batches = self._epoch_batches(self.epoch)
            while self.step < self.steps_per_epoch:
                losses = self._train_step(
                    batches[0][self.step], batches[1][self.step], self._step_generator()
                )
                self.running = {k: 0.9 * self.running.get(k, v) + 0.1 * v for k, v in losses.items()}
                self.step += 1
                if time.perf_counter() - last_report >= PROGRESS_INTERVAL_S:
                    last_report = time.perf_counter()
                    self.seconds = time.perf_counter() - started
                    done = self.epoch * self.steps_per_epoch + self.step
                    self._report(
                        progress,
                        done / total,
                        f"epoch {self.epoch + 1}/{epochs} step "
                        f"{self.step}/{self.steps_per_epoch} | {_format(self.running)}",
                    )
            self.epoch, self.step = self.epoch + 1, 0
            self.seconds = time.perf_counter() - started
            self.history.append(
                {
                    "epoch": self.epoch,
                    "losses": {k: round(v, 5) for k, v in self.running.items()},
                    **self._validate(),
                }
            )
            self._save_checkpoint()
            record = self.history[-1]
            self._report(
                progress,
                self.epoch / epochs,
                f"epoch {self.epoch}/{epochs} done | {_format(self.running)} | "
                f"validation flip rate {record['validation_flip_rate']}",
            )
        summary = self._summary()
        plan = self.plan
        artifact = write_artifact(
            self.out_dir / ARTIFACT_DIR,
            self.generators,
            plan.variant,
            plan.target_class,
            plan.num_classes,
            plan.image_shape,
            summary,
        )
        summary["artifact"] = str(artifact)
        return summary

    def _report(self, progress: Progress, fraction: float, note: str) -> None:
        """Call progress; on cancellation keep the work done so far in the checkpoint, then stop."""
        try:
            progress(min(fraction, 1.0), note)
        except BaseException:
            self._save_checkpoint()
            raise

    def _epoch_batches(self, epoch: int) -> list[list[torch.Tensor]]:
        """Per side, ``steps_per_epoch`` batches of image indices; the smaller side is cycled."""
        generator = torch.Generator().manual_seed(self.plan.params["seed"] * 100_003 + epoch)
        needed = self.steps_per_epoch * self.plan.batch_size
        per_side = []
        for pool in self.pools:
            repeats = math.ceil(needed / len(pool))
            order = torch.cat([pool[torch.randperm(len(pool), generator=generator)] for _ in range(repeats)])
            per_side.append(list(order[:needed].split(self.plan.batch_size)))
        return per_side

    def _step_generator(self) -> torch.Generator:
        """Randomness of one step (augmentation, penalty interpolation), reproducible after a resume."""
        seed = (self.plan.params["seed"] * 100_003 + self.epoch) * 1_000_003 + self.step
        return torch.Generator().manual_seed(seed)

    # --------------------------------------------------------------- one step

    def _train_step(
        self, indices_0: torch.Tensor, indices_1: torch.Tensor, rng: torch.Generator
    ) -> dict[str, float]:
        batches, aways = zip(*(self._batch(indices, rng) for indices in (indices_0, indices_1)))
        for network in (*self.generators, *self.discriminators):
            network.train()
        losses: dict[str, float] = {}
        generated_into = [None, None]
        for side in (0, 1):
            self.optimizer_g.zero_grad(set_to_none=True)
            total, terms, adversarial = self._generator_loss(batches[side], side, aways[side])
            total.backward()
            self.optimizer_g.step()
            generated_into[1 - side] = adversarial
            for name, value in terms.items():
                losses[name] = losses.get(name, 0.0) + value / 2
        for _ in range(self.plan.params["discriminator_steps"]):
            self.optimizer_d.zero_grad(set_to_none=True)
            d_total, d_terms = self._discriminator_loss(batches, generated_into, rng)
            d_total.backward()
            self.optimizer_d.step()
        return losses | d_terms

    def _batch(self, indices: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images at ``indices`` and, with ``weight_outside_finding``, where they are away from their
        finding (augmented together, as one more channel)."""
        batch = self.images[indices].to(self.device, torch.float32)
        if self.away is not None:
            batch = torch.cat([batch, self.away[indices].to(self.device, torch.float32)], dim=1)
        if self.plan.params["augment"]:
            batch = augment(batch, rng)
        if self.away is None:
            return batch, None
        return batch[:, :-1], batch[:, -1:]

    def _generator_loss(
        self, source: torch.Tensor, side: int, away: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """The generator objective for a batch of side ``side`` (paper eq. 9-14); ``away`` marks the
        pixels away from each image's finding (``weight_outside_finding``)."""
        w = self.plan.weights
        forward, backward = self.generators[side], self.generators[1 - side]
        fields: list[torch.Tensor] = []

        def apply(generator: UNetGenerator, images: torch.Tensor) -> torch.Tensor:
            # The same as generator(images); with a term on the field, the warp's field is kept for it.
            if all(w[name] <= 0 for name in WARP_TERMS):
                return generator(images)
            field = generator.displacement(images)
            fields.append(field)
            return resample(images, field)

        adversarial = apply(forward, source)
        cycled = apply(backward, adversarial)
        generated = [adversarial, cycled]
        if self.plan.variant == "syce":
            generated.append(apply(forward, adversarial))
        # A batch of one image has no other image to carry its change.
        specific = w["weight_specificity"] > 0 and len(source) > 1
        if specific:
            generated.append(transferred(source, adversarial))
        # One classifier pass for all generated images (it is in eval mode: no batch coupling).
        log_odds = side_logit(self.classifier(torch.cat(generated)), self.plan.target_class).split(
            len(source)
        )
        own = torch.full((len(source),), float(side), device=self.device)
        terms = {
            "adversarial": w["weight_adversarial"] * F.binary_cross_entropy_with_logits(log_odds[0], 1 - own),
            "gan": w["weight_gan"]
            * F.binary_cross_entropy_with_logits(
                self.discriminators[1 - side](adversarial), torch.ones_like(own)
            ),
            "cycle": w["weight_cycle"] * mse_mae(cycled, source),
            "cycle_class": w["weight_cycle_class"] * F.binary_cross_entropy_with_logits(log_odds[1], own),
        }
        if self.plan.variant == "syce":
            terms["symmetry"] = w["weight_symmetry"] * mse_mae(generated[2], source)
            terms["symmetry_class"] = w["weight_symmetry_class"] * F.binary_cross_entropy_with_logits(
                log_odds[2], own
            )
        if specific:
            terms["specificity"] = w["weight_specificity"] * F.binary_cross_entropy_with_logits(
                log_odds[-1], own
            )
        if w["weight_smoothness"] > 0:
            # The change of each pass whose output is shown: G(x) - x, and for SyCE also the stable
            # pass G(G(x)) - G(x), which is the SyCE heatmap.
            rough = roughness(adversarial - source)
            if self.plan.variant == "syce":
                rough = rough + roughness(generated[2] - adversarial)
            terms["smoothness"] = w["weight_smoothness"] * rough
        if w["weight_proximity"] > 0:
            terms["proximity"] = w["weight_proximity"] * (adversarial - source).abs().mean()
        if away is not None:
            # As for smoothness: the change of each pass whose output is shown.
            outside = ((adversarial - source).abs() * away).mean()
            if self.plan.variant == "syce":
                outside = outside + ((generated[2] - adversarial).abs() * away).mean()
            terms["outside_finding"] = w["weight_outside_finding"] * outside
        # Every pass: the adversarial image, and the cycle and stable passes that undo it.
        if w["weight_fold"] > 0:
            terms["fold"] = w["weight_fold"] * sum(fold_penalty(field) for field in fields) / len(fields)
        if w["weight_displacement"] > 0:
            terms["displacement"] = (
                w["weight_displacement"] * sum(displacement_length(field) for field in fields) / len(fields)
            )
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}, adversarial.detach()

    def _discriminator_loss(
        self, real: list[torch.Tensor], fake: list[torch.Tensor], rng: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``D[s]``: real images of side s vs images generated into side s, plus the gradient penalty."""
        w = self.plan.weights
        gan, penalty = 0.0, 0.0
        for side in (0, 1):
            critic = self.discriminators[side]
            real_logits, fake_logits = critic(real[side]), critic(fake[side])
            gan = gan + F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            gan = gan + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            penalty = penalty + gradient_penalty(critic, real[side], fake[side], rng)
        total = w["weight_discriminator"] * gan + w["weight_gradient_penalty"] * penalty
        return total, {
            "discriminator": float(gan.detach()) / 2,
            "gradient_penalty": float(penalty.detach()) / 2,
        }

    # --------------------------------------------------------------- evaluation and summary

    def _validate(self) -> dict[str, Any]:
        """Flip rate of the adversarial images on the held-out images (all images when none held out)."""
        indices = self.validation if len(self.validation) else torch.arange(len(self.images))
        pair = GeneratorPair(self.plan.variant, self.plan.target_class, tuple(self.generators), {})
        for generator in self.generators:
            generator.eval()
        figures = evaluate_pair(self.classifier, pair, self.images[indices], self.device)
        return {f"validation_{name}": value for name, value in figures.items()}

    def _summary(self) -> dict[str, Any]:
        return {
            "variant": self.plan.variant,
            "preset": self.plan.preset,
            "target_class": self.plan.target_class,
            "params": self.plan.params,
            "epochs": self.epoch,
            "steps": self.epoch * self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "training_images_by_side": [len(pool) for pool in self.pools],
            "validation_images": len(self.validation),
            "seconds": round(self.seconds, 1),
            "device": str(self.device),
            "initialised_from": self.initialised_from,
            "final": self.history[-1] if self.history else None,
            "history": self.history,
        }

    # --------------------------------------------------------------- checkpoint

    def _save_checkpoint(self) -> None:
        state = {
            "format_version": FORMAT_VERSION,
            "identity": self.plan.resume_identity(),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "history": json.dumps(self.history),
            "running": json.dumps(self.running),
            "initialised_from": json.dumps(self.initialised_from),
            "generators": [g.state_dict() for g in self.generators],
            "discriminators": [d.state_dict() for d in self.discriminators],
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        path = self.out_dir / CHECKPOINT_NAME
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)

    def _initialise(self, folder: Path) -> None:
        """Start both generators from those of the artifact in ``folder`` (fine-tuning)."""
        pair = load_artifact(folder, self.device)
        wanted = self.generators[0].config
        found = pair.generators[0].config  # rebuilt from the artifact: settings it predates take their defaults
        if found != wanted or pair.target_class != self.plan.target_class:
            raise InvalidInput(
                f"the generators in {folder} (architecture {found}, target class {pair.target_class}) "
                f"cannot start this run (architecture {wanted}, target class {self.plan.target_class})",
                code="invalid_params",
            )
        for generator, loaded in zip(self.generators, pair.generators):
            generator.load_state_dict(loaded.state_dict())
        training = pair.config.get("training") or {}
        self.initialised_from = {
            "folder": str(folder),
            "variant": pair.variant,
            "epochs": training.get("epochs"),
            "seconds": training.get("seconds"),
        }

    def _resume(self) -> bool:
        """Continue from the checkpoint in ``out_dir``; False when there is none."""
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        # A checkpoint from before warp generators and smooth changes existed is of an additive one.
        saved, wanted = {"warp_grid": 0, "change_grid": 0, **state["identity"]}, self.plan.resume_identity()
        differing = sorted(key for key in RESUME_KEYS if saved.get(key) != wanted[key])
        if differing:
            raise InvalidInput(
                f"{self.out_dir} holds a training run with other {', '.join(differing)} "
                f"({', '.join(f'{k}={saved.get(k)}' for k in differing)}); "
                "use a new output folder or the same settings",
                code="checkpoint_mismatch",
            )
        for network, weights in zip(
            (*self.generators, *self.discriminators), (*state["generators"], *state["discriminators"])
        ):
            network.load_state_dict(weights)
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.history = json.loads(state["history"])
        self.running = json.loads(state["running"])
        self.initialised_from = json.loads(state.get("initialised_from", "null"))
        return True


# ----------------------------------------------------------------------------- pieces


def evaluate_pair(
    classifier: nn.Module, pair: GeneratorPair, images: torch.Tensor, device: torch.device | str
) -> dict[str, Any]:
    """How well generators do what they are trained for, on ``images`` (N x C x H x W in [0, 1]).

    Returns:
        ``flip_rate``: share of adversarial images the classifier decides on the other side than the
        input (the paper's Table 1(a) reports 1 - this); ``flip_rate_by_side``: the same for inputs
        outside / inside the explained class; ``stable_keeps_side``: share of stable images G(G(x))
        decided like the input (SyCE only, else None); ``mean_abs_change``: mean |G(x) - x|;
        ``mean_change_roughness``: mean ``roughness`` of G(x) - x (a texture's high-frequency part);
        ``mean_stable_change_roughness``: that of G(G(x)) - G(x), the SyCE heatmap (SyCE only, else
        None); ``images``: N.
    """
    flipped, kept, change, rough, rough_stable, sides_all = [], [], [], [], [], []
    with torch.inference_mode():
        for chunk in images.split(PREDICTION_BATCH):
            chunk = chunk.to(device, torch.float32)
            sides = pair.sides(classifier(chunk))
            adversarial = pair.translate(chunk, sides)
            flipped.append((pair.sides(classifier(adversarial)) != sides).cpu())
            if pair.variant == "syce":
                stable = pair.translate(adversarial, sides)
                kept.append((pair.sides(classifier(stable)) == sides).cpu())
                rough_stable.append(roughness(stable - adversarial).cpu() * len(chunk))
            change.append((adversarial - chunk).abs().flatten(1).mean(1).cpu())
            rough.append(roughness(adversarial - chunk).cpu() * len(chunk))
            sides_all.append(sides.cpu())
    flipped_all, sides = torch.cat(flipped).float(), torch.cat(sides_all)
    return {
        "flip_rate": round(float(flipped_all.mean()), 4),
        "flip_rate_by_side": [
            round(float(flipped_all[sides == s].mean()), 4) if (sides == s).any() else None for s in (0, 1)
        ],
        "stable_keeps_side": round(float(torch.cat(kept).float().mean()), 4) if kept else None,
        "mean_abs_change": round(float(torch.cat(change).mean()), 5),
        "mean_change_roughness": round(float(sum(rough)) / len(images), 5),
        "mean_stable_change_roughness": (
            round(float(sum(rough_stable)) / len(images), 5) if rough_stable else None
        ),
        "images": len(images),
    }


TRANSFER_DONORS = 32


def transfer_rate(
    classifier: nn.Module,
    pair: GeneratorPair,
    images: torch.Tensor,
    device: torch.device | str,
    donors: int = TRANSFER_DONORS,
) -> dict[str, Any]:
    """Does an image's change flip other images? High means a universal texture, not a counterfactual.

    Per decision side, the first ``donors`` images of that side each give their change
    ``G(a) - a``; it is added to every other image ``b`` of the same side (clamped to [0, 1]) and the
    classifier asked again. ``transfer_rate`` is the share of such (a, b) pairs whose decision flips;
    compare it with ``flip_rate`` (each image's own change). Deterministic: no sampling.

    Returns:
        ``transfer_rate`` (None when no side has two images), ``transfer_rate_by_side``,
        ``transfer_pairs``.
    """
    per_side: list[torch.Tensor | None] = [None, None]
    with torch.inference_mode():
        all_sides = pair.sides(predict_logits(classifier, images, PREDICTION_BATCH)).cpu()
        for side in (0, 1):
            chosen = images[all_sides == side].to(device, torch.float32)
            if len(chosen) >= 2:
                per_side[side] = _transferred_flips(classifier, pair, chosen, side, donors)
    present = [flips.float() for flips in per_side if flips is not None]
    everything = torch.cat(present) if present else torch.empty(0)
    return {
        "transfer_rate": round(float(everything.mean()), 4) if len(everything) else None,
        "transfer_rate_by_side": [None if f is None else round(float(f.float().mean()), 4) for f in per_side],
        "transfer_pairs": len(everything),
    }


def _transferred_flips(
    classifier: nn.Module, pair: GeneratorPair, images: torch.Tensor, side: int, donors: int
) -> torch.Tensor:
    """Flip (bool) of every pair (donor a, receiver b != a) of ``images``, all decided ``side``."""
    donor_images = images[:donors]
    changes = pair.translate(donor_images, torch.full((len(donor_images),), side, device=images.device))
    changes = changes.float() - donor_images
    flipped = []
    for index, change in enumerate(changes):
        receivers = torch.cat([images[:index], images[index + 1 :]])
        for chunk in receivers.split(PREDICTION_BATCH):
            decided = pair.sides(classifier((chunk + change).clamp(0, 1)))
            flipped.append((decided != side).cpu())
    return torch.cat(flipped)


def split_by_side(
    sides: torch.Tensor, validation_fraction: float, seed: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Hold out a seeded ``validation_fraction`` of the images; the rest, as index pools per side."""
    order = torch.randperm(len(sides), generator=torch.Generator().manual_seed(seed))
    held_out = round(validation_fraction * len(sides))
    validation, training = order[:held_out].sort().values, order[held_out:].sort().values
    return validation, (training[sides[training] == 0], training[sides[training] == 1])


def transferred(source: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Each image plus the change ``generated - source`` of the next image of the batch, in [0, 1].

    A counterfactual change is about its own image; when the change of another image flips this
    one too, the generator paints a universal pattern (``transfer_rate`` measures that on held-out
    images).
    """
    return (source + (generated - source).roll(1, dims=0)).clamp(0, 1)


def roughness(change: torch.Tensor) -> torch.Tensor:
    """Mean ``|change - box blur of change|`` (3 x 3, edges replicated) over a ``B x C x H x W`` change.

    The high-frequency part of the change: 0 for a constant change, near 0 for a smooth one (exactly
    0 for a linear ramp away from the image border), ``8/9 a`` for a checkerboard of amplitude ``a``.
    The ``weight_smoothness`` term; ``evaluate_pair`` reports it per image (``mean_change_roughness``).
    """
    padded = F.pad(change, (1, 1, 1, 1), mode="replicate")
    blurred = F.avg_pool2d(padded, kernel_size=3, stride=1)
    return (change - blurred).abs().mean()


FOLD_FLOOR = 0.5


def fold_penalty(field: torch.Tensor, floor: float = FOLD_FLOOR) -> torch.Tensor:
    """Mean ``max(0, floor - det J)`` over the pixels of a warp's ``field`` (``jacobian_determinant``).

    0 for the identity, a translation or any gentle deformation; it grows where the mapping folds
    (det < 0: tissue mirrored into waves), collapses (det = 0) or enlarges a spot of the image more
    than 1 / ``floor`` times in area (how the skin line was dragged over the tissue), linearly in how
    far, so its gradient does not vanish at a fold. The ``weight_fold`` term.
    """
    return F.relu(floor - jacobian_determinant(field)).mean()


def displacement_length(field: torch.Tensor) -> torch.Tensor:
    """Mean ``|dx| + |dy|`` of a warp's ``field`` in pixels (``grid_sample`` units: 2 / size per pixel).

    0 for the identity, 5 for a translation by 3 px along x and 2 along y. The ``weight_displacement``
    term: an L1 norm, so it favours moving a small part of the image over moving all of it a little.
    """
    height, width = field.shape[-2:]
    return (field[:, 0].abs() * (width / 2) + field[:, 1].abs() * (height / 2)).mean()


def mse_mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared plus mean absolute error, the reference code's reconstruction loss."""
    return F.mse_loss(output, target) + F.l1_loss(output, target)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator
) -> torch.Tensor:
    """``mean (||grad critic(real + e (fake - real))||_2 - 1)^2`` with e ~ U(0, 1) per image (WGAN-GP)."""
    eps = torch.rand(len(real), 1, 1, 1, generator=rng).to(real.device)
    mixed = (real + eps * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def augment(batch: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random rotation within 5 degrees and zoom-in by 1/[0.8, 1], the reference code's settings."""
    count = len(batch)
    angle = (torch.rand(count, generator=rng) * 2 - 1) * math.radians(5)
    zoom = 0.8 + 0.2 * torch.rand(count, generator=rng)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(count)], 1), torch.stack([sin, cos, torch.zeros(count)], 1)], 1
    ).to(batch.device, batch.dtype)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="border", align_corners=False)


def _format(losses: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.4f}" for name, value in losses.items())
