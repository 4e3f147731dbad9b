"""SyCE and CyCE: the networks, training (losses, resume, errors) and the explainers' known answers.

A tiny separable problem stands in for a classifier: 16 x 16 grey images whose left or right half is
bright, and a hand-set model whose logit is 10 x (mean of the left half - mean of the right half),
presented as two logits as ``models.loader.Classifier`` presents a sigmoid model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from models.artifacts.syce import CONFIG_NAME, GENERATOR_FILES, GeneratorPair, load_artifact, side_logit
from models.networks.discriminator import Discriminator
from models.networks.unet import UNetGenerator, jacobian_determinant, resample, smooth_field, widths_for_size
from models.training.syce import (
    CHECKPOINT_NAME,
    away_from_finding,
    displacement_length,
    evaluate_pair,
    fold_penalty,
    gradient_penalty,
    make_plan,
    roughness,
    train,
    transfer_rate,
    transferred,
)
from workers.explainers.cyce import CyCE
from workers.explainers.syce import SyCE
from workers.precision import explain_autocast_or_float32
from xai.errors import Conflict, InvalidInput, JobCancelled, ServiceError
from xai.methods.syce import PRESETS, SPECS, training_spec

SIZE = 16
# Fast settings for the tiny problem: small networks, a high learning rate, no held-out images, and a
# larger adversarial weight (each pixel moves this linear classifier's logit little, so the digits
# preset's reconstruction terms would keep the generators at the identity for many more steps).
FAST = {
    "batch_size": 8,
    "base_width": 4,
    "lr_generator": 1e-2,
    "lr_discriminator": 1e-3,
    "validation_fraction": 0.0,
    "epochs": 4,
    "weight_adversarial": 5.0,
}


class HalvesClassifier(nn.Module):
    """Logit z = 10 (mean(left half) - mean(right half)), shown as the two logits [-z/2, z/2]."""

    def __init__(self):
        super().__init__()
        weight = torch.zeros(1, 1, SIZE, SIZE)
        weight[..., : SIZE // 2] = 10 / (SIZE * SIZE // 2)
        weight[..., SIZE // 2 :] = -10 / (SIZE * SIZE // 2)
        self.linear = nn.Linear(SIZE * SIZE, 1)
        with torch.no_grad():
            self.linear.weight.copy_(weight.flatten()[None])
            self.linear.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = self.linear(images.flatten(1)) / 2
        return torch.cat([-half, half], dim=1)


def halves_images(count: int, seed: int = 0) -> torch.Tensor:
    """Half of them bright on the left (class 1), half on the right (class 0), with noise."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.rand(count, 1, SIZE, SIZE, generator=generator)
    images[: count // 2, ..., : SIZE // 2] += 0.6
    images[count // 2 :, ..., SIZE // 2 :] += 0.6
    return images


class AddPatch(nn.Module):
    """A hand-set generator: adds ``value`` inside a square, clipped to [0, 1]."""

    def __init__(self, rows: slice, cols: slice, value: float):
        super().__init__()
        self.patch = torch.zeros(1, 1, SIZE, SIZE)
        self.patch[..., rows, cols] = value

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.patch.to(images.device)).clamp(0, 1)


def no_progress(fraction: float, note: str | None = None) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One short SyCE and one short CyCE run on the halves problem, shared by the tests below."""
    torch.manual_seed(0)
    images, classifier = halves_images(64), HalvesClassifier()
    folders = {}
    for variant in ("syce", "cyce"):
        out = tmp_path_factory.mktemp(variant)
        summary = train(classifier, images, out, {**FAST, "variant": variant}, no_progress, "cpu")
        folders[variant] = out
        folders[variant + "_summary"] = summary
    return folders


# ----------------------------------------------------------------------------- networks


def test_generator_starts_as_the_identity_and_keeps_odd_sizes():
    generator = UNetGenerator(channels=1, widths=widths_for_size(28, 28, 8)).eval()
    images = torch.rand(3, 1, 28, 28)
    assert torch.equal(generator(images), images)
    deep = UNetGenerator(channels=3, widths=[4, 8, 8, 8], residual_output=False)
    assert deep(torch.rand(2, 3, 27, 33)).shape == (2, 3, 27, 33)


def test_a_warp_generator_moves_the_content_and_paints_nothing():
    generator = UNetGenerator(channels=1, widths=widths_for_size(32, 32, 8), warp_grid=4).eval()
    images = torch.zeros(1, 1, 32, 32)
    images[..., 12:20, 12:20] = 1.0  # a bright square on black
    torch.testing.assert_close(generator(images), images, atol=1e-5, rtol=0)  # starts as the identity
    shift = torch.zeros(1, 2, 32, 32)
    shift[:, 0] = 4 * 2 / 32  # 4 pixels in grid_sample's [-1, 1] units: each output reads 4 px to its right
    moved = resample(images, smooth_field(shift, 4))
    torch.testing.assert_close(moved[..., 8:16], images[..., 12:20], atol=1e-5, rtol=0)
    assert moved.sum() == pytest.approx(images.sum(), abs=1e-3)  # moved, not brightened
    assert set(torch.unique(moved.round(decimals=4)).tolist()) <= {0.0, 1.0}  # no new grey levels painted
    assert UNetGenerator(**generator.config).warp_grid == 4


def test_a_smooth_change_generator_adds_only_what_a_cell_grid_can_hold():
    torch.manual_seed(0)
    pixelwise = UNetGenerator(channels=1, widths=widths_for_size(32, 32, 8)).eval()
    smooth = UNetGenerator(channels=1, widths=widths_for_size(32, 32, 8), change_grid=4).eval()
    images = torch.rand(2, 1, 32, 32) * 0.5 + 0.25  # away from the clip at 0 and 1
    assert torch.equal(smooth(images), images)  # starts as the identity
    nn.init.normal_(pixelwise.head[-1].weight, std=0.01)  # now it changes the images, inside the clip
    smooth.load_state_dict(pixelwise.state_dict())  # the same network, its change smoothed
    with torch.no_grad():
        change = pixelwise(images) - images
        torch.testing.assert_close(smooth(images) - images, smooth_field(change, 4), atol=1e-6, rtol=0)
        assert float(roughness(smooth(images) - images)) < 0.1 * float(roughness(change))
    assert UNetGenerator(**smooth.config).change_grid == 4
    for bad in ({"warp_grid": 4}, {"residual_output": False}):
        with pytest.raises(ValueError):
            UNetGenerator(channels=1, widths=[4, 8], change_grid=4, **bad)
    with pytest.raises(InvalidInput) as error:
        make_plan({"warp_grid": 8, "change_grid": 8}, (1, SIZE, SIZE), 2, 1)
    assert error.value.code == "invalid_params"


def linear_field(height: int, width: int, matrix: list[list[float]]) -> torch.Tensor:
    """The displacement ``(A - I) p`` at each pixel centre ``p`` (grid_sample units): the warp reads the
    image at ``A p``, a linear mapping whose Jacobian determinant is ``det A`` everywhere."""
    ys = (torch.arange(height) + 0.5) * 2 / height - 1
    xs = (torch.arange(width) + 0.5) * 2 / width - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    (a, b), (c, d) = matrix
    return torch.stack([(a - 1) * x + b * y, c * x + (d - 1) * y])[None]


def test_fold_penalty_is_zero_for_rigid_moves_and_grows_with_a_fold():
    height, width = 8, 16  # not square: the x and y units of grid_sample differ and must cancel
    identity = torch.zeros(2, 2, height, width)
    translation = identity.clone()
    translation[:, 0], translation[:, 1] = 0.3, -0.2
    cos, sin = torch.cos(torch.tensor(0.5)), torch.sin(torch.tensor(0.5))
    rotation = linear_field(height, width, [[cos, -sin], [sin, cos]])
    for field in (identity, translation, rotation):
        torch.testing.assert_close(jacobian_determinant(field), torch.ones(len(field), height - 1, width - 1))
        assert float(fold_penalty(field)) == pytest.approx(0.0, abs=1e-6)
    # Reading x at 0.6 x (enlarging 1 / 0.6 times): det 0.6, above the floor 0.5, no penalty; at 0.4 x,
    # 0.1 below it; mirrored (-0.5 x, a fold) 1.0 below it; the same along y, and stretched along x
    # while mirrored along y (det 2 * -1 = -2).
    for matrix, det in (
        ([[0.6, 0], [0, 1]], 0.6), ([[0.4, 0], [0, 1]], 0.4), ([[-0.5, 0], [0, 1]], -0.5),
        ([[1, 0], [0, -0.5]], -0.5), ([[2, 0], [0, -1]], -2.0),
    ):
        field = linear_field(height, width, matrix)
        torch.testing.assert_close(jacobian_determinant(field), torch.full((1, height - 1, width - 1), det))
        assert float(fold_penalty(field)) == pytest.approx(max(0.0, 0.5 - det), abs=1e-5)
    # Folded in one half only: the mean over the pixels.
    mirrored = linear_field(height, width, [[-0.5, 0], [0, 1]])
    half = torch.cat([mirrored[..., : width // 2], identity[:1, ..., width // 2 :]], -1)
    assert 0 < float(fold_penalty(half)) < 1.0


def test_displacement_length_is_the_mean_move_in_pixels():
    height, width = 8, 16
    field = torch.zeros(2, 2, height, width)
    assert float(displacement_length(field)) == 0.0  # the identity
    field[:, 0], field[:, 1] = 3 * 2 / width, -2 * 2 / height  # 3 px along x, 2 px back along y
    assert float(displacement_length(field)) == pytest.approx(5.0)
    field[:, :, :, width // 4 :] = 0  # only a quarter of the image moves
    assert float(displacement_length(field)) == pytest.approx(5.0 / 4)


def test_a_warp_generator_is_its_field_applied():
    generator = UNetGenerator(channels=1, widths=widths_for_size(32, 32, 8), warp_grid=4)
    with torch.no_grad():
        generator.head[-1].bias.copy_(torch.tensor([0.1, -0.05]))  # some displacement, not the identity
    images = torch.rand(2, 1, 32, 32)
    field = generator.displacement(images)
    assert field.shape == (2, 2, 32, 32)
    torch.testing.assert_close(generator(images), resample(images, field))
    with pytest.raises(ValueError):
        UNetGenerator(channels=1, widths=widths_for_size(32, 32, 8)).displacement(images)


def test_shipped_architectures_stay_small():
    """The demo generators must ship in the repository: under 5 MB of float32 weights each."""
    for size in (28, 128):
        generator = UNetGenerator(1, widths_for_size(size, size))
        assert sum(p.numel() for p in generator.parameters()) * 4 < 5e6
    assert Discriminator(1, 28, 28, widths=[32, 64])(torch.rand(5, 1, 28, 28)).shape == (5,)


def test_gradient_penalty_of_a_linear_critic_is_known():
    """For D(x) = w . x the gradient is w everywhere: penalty (|w| - 1)^2."""
    for norm, expected in ((1.0, 0.0), (2.0, 1.0), (3.0, 4.0)):
        critic = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        with torch.no_grad():
            critic[1].weight.copy_(torch.tensor([[norm, 0.0, 0.0, 0.0]]))
        real, fake = torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2)
        penalty = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
        assert float(penalty.detach()) == pytest.approx(expected, abs=1e-5)


def test_side_logit_is_the_log_odds_of_the_target_against_the_rest():
    z = torch.tensor([[-1.5, 1.5], [2.0, -2.0]])
    assert torch.allclose(side_logit(z, 1), torch.tensor([3.0, -4.0]))
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    p = logits.softmax(1)[0, 2]
    assert float(side_logit(logits, 2)) == pytest.approx(float(torch.log(p / (1 - p))), abs=1e-6)


# ----------------------------------------------------------------------------- parameters


def test_training_params_take_the_paper_tables():
    syce = training_spec("syce").resolve_params({})
    assert syce["variant"] == "syce" and syce["lr_generator"] == 1e-4 and syce["lr_discriminator"] == 2e-4
    assert PRESETS["syce"]["digits"]["weight_symmetry"] == 10.0
    assert PRESETS["syce"]["digits"]["weight_adversarial"] == 0.2
    cyce = training_spec("cyce").resolve_params({})
    assert "weight_symmetry" not in cyce and cyce["variant"] == "cyce"
    with pytest.raises(InvalidInput) as error:
        training_spec("cyce").resolve_params({"weight_symmetry": 1.0})
    assert error.value.code == "invalid_params"
    assert {spec.name: (spec.queue, spec.needs_artifacts) for spec in SPECS} == {
        "syce": ("fast", True),
        "cyce": ("fast", True),
    }


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", ["syce", "cyce"])
def test_training_moves_adversarial_images_to_the_other_side(trained, variant):
    summary = trained[variant + "_summary"]
    history = summary["history"]
    assert history[-1]["losses"]["adversarial"] < history[0]["losses"]["adversarial"]
    assert ("symmetry" in history[0]["losses"]) == (variant == "syce")
    pair = load_artifact(trained[variant] / "artifact", "cpu")
    classifier, images = HalvesClassifier(), halves_images(32, seed=1)
    with torch.inference_mode():
        logits = classifier(images)
        sides = pair.sides(logits)
        moved = side_logit(classifier(pair.translate(images, sides)), 1) - side_logit(logits, 1)
    # Generators start as the identity (moved == 0): after training, side 1 images move down, side 0 up.
    assert float(moved[sides == 1].mean()) < -1.0
    assert float(moved[sides == 0].mean()) > 1.0
    config = json.loads((trained[variant] / "artifact" / "config.json").read_text())
    assert config["variant"] == variant and config["target_class"] == 1
    assert config["training"]["epochs"] == FAST["epochs"] and config["training"]["preset"] == "digits"


def test_resume_after_cancellation_continues_from_the_saved_step(tmp_path):
    images, classifier = halves_images(64), HalvesClassifier()
    params = {**FAST, "epochs": 2}
    straight_summary = train(classifier, images, tmp_path / "straight", params, no_progress, "cpu")

    def cancel_at_first_report(fraction, note=None):
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        train(classifier, images, tmp_path / "resumed", params, cancel_at_first_report, "cpu")
    checkpoint = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (0, 1)
    summary = train(classifier, images, tmp_path / "resumed", params, no_progress, "cpu")
    assert summary["epochs"] == 2 and summary["history"] == straight_summary["history"]
    for file_name in GENERATOR_FILES:
        straight = torch.load(tmp_path / "straight" / "artifact" / file_name, weights_only=True)
        resumed = torch.load(tmp_path / "resumed" / "artifact" / file_name, weights_only=True)
        for key in straight:
            assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


def test_a_run_can_start_from_trained_generators(trained, tmp_path):
    images, classifier = halves_images(64), HalvesClassifier()
    start = trained["syce"] / "artifact"
    # A tiny learning rate: the first epoch's generators are (almost) those it started from.
    params = {**FAST, "epochs": 1, "lr_generator": 1e-7}
    summary = train(classifier, images, tmp_path / "tuned", params, no_progress, "cpu", init_from=start)
    assert summary["initialised_from"] == {
        "folder": str(start),
        "variant": "syce",
        "epochs": FAST["epochs"],
        "seconds": trained["syce_summary"]["seconds"],
    }
    fresh = train(classifier, images, tmp_path / "fresh", params, no_progress, "cpu")
    assert fresh["initialised_from"] is None
    # Started from trained generators, the first epoch already flips what a fresh start does not.
    assert summary["history"][0]["validation_flip_rate"] > fresh["history"][0]["validation_flip_rate"]
    for file_name in GENERATOR_FILES:
        before = torch.load(start / file_name, weights_only=True)
        after = torch.load(tmp_path / "tuned" / "artifact" / file_name, weights_only=True)
        for key in before:
            assert torch.allclose(before[key], after[key], atol=1e-3), key
    # Training further resumes from the checkpoint and keeps the record of where it started.
    resumed = train(classifier, images, tmp_path / "tuned", {**params, "epochs": 2}, no_progress, "cpu")
    assert resumed["epochs"] == 2 and resumed["initialised_from"] == summary["initialised_from"]
    # Generators of another architecture cannot start a run.
    with pytest.raises(InvalidInput) as error:
        train(classifier, images, tmp_path / "wide", {**params, "base_width": 8}, no_progress, "cpu", init_from=start)
    assert error.value.code == "invalid_params"
    # An artifact written before a generator setting existed (the shipped ones have no change_grid) starts
    # a run with that setting at its default, and no other.
    older = tmp_path / "older"
    shutil.copytree(start, older)
    config = json.loads((older / CONFIG_NAME).read_text())
    del config["architecture"]["args"]["change_grid"]
    (older / CONFIG_NAME).write_text(json.dumps(config))
    assert train(classifier, images, tmp_path / "from-older", params, no_progress, "cpu", init_from=older)["epochs"] == 1
    with pytest.raises(InvalidInput) as error:
        train(classifier, images, tmp_path / "smooth", {**params, "change_grid": 4}, no_progress, "cpu", init_from=older)
    assert error.value.code == "invalid_params"


def test_a_checkpoint_of_other_settings_is_refused(trained):
    with pytest.raises(InvalidInput) as error:
        train(
            HalvesClassifier(),
            halves_images(64),
            trained["syce"],
            {**FAST, "variant": "cyce"},
            no_progress,
            "cpu",
        )
    assert error.value.code == "checkpoint_mismatch"


def test_a_checkpoint_from_before_warp_generators_resumes_as_an_additive_run(tmp_path):
    images, classifier = halves_images(64), HalvesClassifier()
    train(classifier, images, tmp_path, {**FAST, "epochs": 1}, no_progress, "cpu")
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    del checkpoint["identity"]["warp_grid"]  # as the checkpoints of the earlier releases were written
    torch.save(checkpoint, tmp_path / CHECKPOINT_NAME)
    assert train(classifier, images, tmp_path, {**FAST, "epochs": 2}, no_progress, "cpu")["epochs"] == 2
    with pytest.raises(InvalidInput) as error:
        train(classifier, images, tmp_path, {**FAST, "epochs": 3, "warp_grid": 4}, no_progress, "cpu")
    assert error.value.code == "checkpoint_mismatch"


def test_training_leaves_the_classifier_as_found_and_refuses_bad_splits(tmp_path):
    classifier = HalvesClassifier().train()
    classifier.linear.bias.requires_grad_(False)
    train(classifier, halves_images(32), tmp_path / "ok", {**FAST, "epochs": 1}, no_progress, "cpu")
    assert classifier.training and classifier.linear.weight.requires_grad
    assert not classifier.linear.bias.requires_grad

    one_sided = halves_images(32)[:16]  # all bright on the left: all decided as class 1
    with pytest.raises(InvalidInput) as error:
        train(classifier, one_sided, tmp_path / "bad", FAST, no_progress, "cpu")
    assert error.value.code == "single_decision_side"

    three_classes = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 3))
    with pytest.raises(InvalidInput) as error:
        train(three_classes, halves_images(32), tmp_path / "multi", FAST, no_progress, "cpu")
    assert error.value.code == "target_class_required"


def test_multi_class_models_train_one_class_against_the_rest(tmp_path):
    three_classes = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 3))
    with torch.no_grad():
        three_classes[1].weight.zero_()
        three_classes[1].bias.zero_()
        # class 2 wins for left-bright images, class 0 for right-bright ones, class 1 never
        three_classes[1].weight[2].copy_(HalvesClassifier().linear.weight[0])
    summary = train(
        three_classes, halves_images(32), tmp_path, {**FAST, "epochs": 1}, no_progress, "cpu", target_class=2
    )
    assert summary["target_class"] == 2 and summary["training_images_by_side"] == [16, 16]


# ----------------------------------------------------------------------------- explainers


def hand_set_explainer(cls, trained, generators) -> SyCE | CyCE:
    explainer = cls(HalvesClassifier(), artifacts=trained[cls.variant] / "artifact")
    explainer.pair = GeneratorPair(cls.variant, 1, generators, explainer.pair.config)
    return explainer


class Constant(nn.Module):
    """A hand-set generator that returns one fixed image whatever it is given."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.image = image

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image.expand_as(images).clone()


def halves(left: float, right: float) -> torch.Tensor:
    image = torch.full((1, 1, SIZE, SIZE), right)
    image[..., : SIZE // 2] = left
    return image


def test_transfer_rate_counts_the_pairs_another_images_change_flips():
    # Class-1 images with left - right = d in {0.1, 0.3, 0.5, 0.7}; the generator maps every image to
    # one image with d = -0.1, so each own change flips its image. Image a's change added to image b
    # gives d_b - d_a - 0.1 (no clipping here): it flips b exactly when d_b < d_a, 6 of the 12 pairs.
    gaps = (0.1, 0.3, 0.5, 0.7)
    images = torch.cat([halves(0.5 + d / 2, 0.5 - d / 2) for d in gaps])
    target = halves(0.45, 0.55)
    pair = GeneratorPair("cyce", 1, (Constant(target), Constant(target)), {})
    classifier = HalvesClassifier()
    assert evaluate_pair(classifier, pair, images, "cpu")["flip_rate"] == 1.0
    figures = transfer_rate(classifier, pair, images, "cpu")
    assert figures == {"transfer_rate": 0.5, "transfer_rate_by_side": [None, 0.5], "transfer_pairs": 12}
    # Only the first two images give their change: d_a = 0.1 flips none of 3, d_a = 0.3 flips 1 of 3.
    assert transfer_rate(classifier, pair, images, "cpu", donors=2)["transfer_rate"] == round(1 / 6, 4)


def test_specificity_term_carries_each_change_to_the_next_image_of_the_batch(tmp_path):
    source = torch.tensor([0.1, 0.5, 0.9]).reshape(3, 1, 1, 1)
    generated = torch.tensor([0.3, 0.4, 0.2]).reshape(3, 1, 1, 1)  # changes +0.2, -0.1, -0.7
    # Image i gets the change of image i - 1 (the first the last's), clipped to [0, 1].
    assert torch.allclose(transferred(source, generated).flatten(), torch.tensor([0.0, 0.7, 0.8]))
    params = {**FAST, "epochs": 1, "weight_specificity": 1.0}
    summary = train(HalvesClassifier(), halves_images(16), tmp_path, params, no_progress, "cpu")
    assert "specificity" in summary["final"]["losses"]
    assert training_spec("syce").resolve_params({})["weight_specificity"] == 0.0  # the paper's objective


def test_roughness_is_the_high_frequency_part_of_a_change():
    n, a = SIZE, 0.1
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    checkerboard = (a * (1 - 2 * ((rows + cols) % 2))).float()[None, None]  # +a / -a
    # Inside, a pixel's 3 x 3 box holds 5 of its own sign and 4 of the other: |a - a/9| = 8a/9. With
    # the border replicated, the 4 (n - 2) edge pixels get 10a/9 and the 4 corners 8a/9.
    assert float(roughness(checkerboard)) == pytest.approx(a * (8 * n * n + 8 * n - 16) / (9 * n * n), rel=1e-5)
    assert float(roughness(torch.full((2, 1, n, n), 0.3))) == pytest.approx(0.0, abs=1e-7)  # constant
    # A linear ramp: 0 inside, s/3 in the first and last column (the replicated edge): 2s / 3n.
    slope = 1 / n
    ramp = (slope * cols).float()[None, None]
    assert float(roughness(ramp)) == pytest.approx(2 * slope / (3 * n), rel=1e-5)
    bump = torch.exp(-((rows - n / 2) ** 2 + (cols - n / 2) ** 2) / (2 * 4.0**2))[None, None] * a
    assert float(roughness(bump)) < 0.05 * float(roughness(checkerboard))


def test_smoothness_term_is_off_by_default_and_smooths_the_change(tmp_path):
    plan = make_plan({}, (1, SIZE, SIZE), 2, 1)
    assert plan.weights["weight_smoothness"] == 0.0  # the paper's objective
    assert make_plan({"weight_smoothness": 2}, (1, SIZE, SIZE), 2, 1).weights["weight_smoothness"] == 2.0
    for bad in (-1.0, "much", float("nan")):
        with pytest.raises(InvalidInput) as error:
            make_plan({"weight_smoothness": bad}, (1, SIZE, SIZE), 2, 1)
        assert error.value.code == "invalid_params"
    with pytest.raises(InvalidInput) as error:  # other names are still refused
        make_plan({"weight_smoothnes": 1.0}, (1, SIZE, SIZE), 2, 1)
    assert error.value.code == "invalid_params"
    rough = {
        w: _trained_with(tmp_path, "weight_smoothness", w)["final"]["validation_mean_change_roughness"]
        for w in (0.0, 100.0)
    }
    assert rough[100.0] < 0.5 * rough[0.0]


def test_proximity_term_is_off_by_default_and_shrinks_the_change(tmp_path):
    assert make_plan({}, (1, SIZE, SIZE), 2, 1).weights["weight_proximity"] == 0.0  # the paper's objective
    change = {
        w: _trained_with(tmp_path, "weight_proximity", w)["final"]["validation_mean_abs_change"] for w in (0.0, 100.0)
    }
    assert change[100.0] < 0.5 * change[0.0]


def test_away_from_finding_marks_pixels_beyond_the_margin_and_needs_a_mask_per_image():
    regions = torch.zeros(2, 1, SIZE, SIZE)
    regions[0, 0, 5, 7] = 1.0  # one pixel; the second image has no finding at all
    plan = make_plan({"weight_outside_finding": 1.0, "finding_margin_px": 2}, (1, SIZE, SIZE), 2, 1)
    away = away_from_finding(torch.zeros(2, 1, SIZE, SIZE), regions, plan)
    expected = torch.ones(2, 1, SIZE, SIZE)
    expected[0, 0, 3:8, 5:10] = 0.0  # within 2 px (chessboard) of the pixel
    assert torch.equal(away, expected)
    assert away_from_finding(torch.zeros(2, 1, SIZE, SIZE), None, make_plan({}, (1, SIZE, SIZE), 2, 1)) is None
    for bad in (None, regions[:1], regions[..., :-1]):
        with pytest.raises(InvalidInput) as error:
            away_from_finding(torch.zeros(2, 1, SIZE, SIZE), bad, plan)
        assert error.value.code == "invalid_params" and "mask of each training image" in error.value.message


def test_outside_finding_term_keeps_the_change_on_the_finding(tmp_path):
    assert make_plan({}, (1, SIZE, SIZE), 2, 1).weights["weight_outside_finding"] == 0.0  # the paper's objective
    # Every image's "finding" is its leftmost quarter, through which the classifier can be flipped too.
    images, classifier = halves_images(32), HalvesClassifier()
    regions = torch.zeros(32, 1, SIZE, SIZE)
    regions[..., : SIZE // 4] = 1.0
    outside_share = {}
    for weight in (0.0, 100.0):
        params = {**FAST, "epochs": 4, "weight_outside_finding": weight, "finding_margin_px": 0}
        summary = train(classifier, images, tmp_path / str(weight), params, no_progress, "cpu", regions=regions)
        assert ("outside_finding" in summary["final"]["losses"]) == (weight > 0)
        pair = load_artifact(tmp_path / str(weight) / "artifact", "cpu")
        with torch.no_grad():
            change = (pair.translate(images, pair.sides(classifier(images))) - images).abs()
        outside_share[weight] = float(change[..., SIZE // 4 :].sum() / change.sum())
    assert outside_share[0.0] > 0.5 and outside_share[100.0] < 0.4 * outside_share[0.0]


def _trained_with(tmp_path, term: str, weight: float, **params) -> dict:
    """The summary of training the toy generators (with ``params``) and ``term`` at ``weight``, 2 epochs."""
    images, classifier = halves_images(32), HalvesClassifier()
    summary = train(classifier, images, tmp_path / f"{term}-{weight}", {**FAST, "epochs": 2, **params, term: weight},
                    no_progress, "cpu")
    # At weight 0 the term is not computed (no loss entry); above 0 it is, times the weight.
    assert (term.removeprefix("weight_") in summary["final"]["losses"]) == (weight > 0)
    assert summary["params"][term] == weight
    return summary


def _trained_warp_measure(tmp_path, term: str, weight: float, measure) -> float:
    """Train the toy warp generators with ``term`` at ``weight``; ``measure`` of their fields, both sides summed."""
    _trained_with(tmp_path, term, weight, warp_grid=8)
    images, classifier = halves_images(32), HalvesClassifier()
    pair = load_artifact(tmp_path / f"{term}-{weight}" / "artifact", "cpu")
    with torch.no_grad():
        sides = pair.sides(classifier(images))
        return sum(float(measure(pair.generators[side].displacement(images[sides == side]))) for side in (0, 1))


def test_fold_term_is_off_by_default_needs_warp_generators_and_unfolds_them(tmp_path):
    for name in ("weight_fold", "weight_displacement"):
        assert make_plan({}, (1, SIZE, SIZE), 2, 1).weights[name] == 0.0  # the paper's objective
        with pytest.raises(InvalidInput) as error:  # an additive generator has no field
            make_plan({name: 1.0}, (1, SIZE, SIZE), 2, 1)
        assert error.value.code == "invalid_params"
    folds = {weight: _trained_warp_measure(tmp_path, "weight_fold", weight, fold_penalty) for weight in (0.0, 100.0)}
    # Pushed to the other side by the adversarial term, the fine field folds; the term undoes most of it.
    assert folds[0.0] > 0.05 and folds[100.0] < 0.5 * folds[0.0]


def test_displacement_term_shortens_the_moves(tmp_path):
    lengths = {weight: _trained_warp_measure(tmp_path, "weight_displacement", weight, displacement_length)
               for weight in (0.0, 10.0)}
    assert lengths[10.0] < 0.5 * lengths[0.0]


def test_a_universal_patch_transfers_to_every_image():
    # Filling the other half with bright pixels flips any image of that side, whichever image it came from.
    images = halves_images(16)
    right, left = (slice(None), slice(SIZE // 2, None)), (slice(None), slice(None, SIZE // 2))
    pair = GeneratorPair("cyce", 1, (AddPatch(*left, 1.0), AddPatch(*right, 1.0)), {})
    figures = transfer_rate(HalvesClassifier(), pair, images, "cpu")
    assert figures["transfer_rate"] == 1.0 and figures["transfer_pairs"] == 2 * 8 * 7


def test_identity_generators_explain_nothing(trained):
    images = halves_images(8)
    for cls in (SyCE, CyCE):
        explainer = hand_set_explainer(cls, trained, (nn.Identity(), nn.Identity()))
        result = explainer.explain(images, [1] * 8, {"return_images": True})
        assert torch.count_nonzero(result.heatmaps) == 0
        assert not any(detail["flipped"] for detail in result.details)


def test_known_patches_are_the_heatmaps(trained):
    """G[0] adds 0.3 top-left, G[1] adds 0.3 bottom-right; pixels stay below 1 after two passes
    only where the image is dark, so the test images are dark (0.2 noise) and the patch lands whole."""
    patch_0, patch_1 = AddPatch(slice(0, 4), slice(0, 4), 0.3), AddPatch(slice(10, 14), slice(10, 14), 0.3)
    images = halves_images(8) * 0.5  # below 0.4 everywhere: x + 0.6 < 1
    with torch.no_grad():
        sides = HalvesClassifier()(images).argmax(1)
    for cls in (SyCE, CyCE):
        result = hand_set_explainer(cls, trained, (patch_0, patch_1)).explain(images, [1] * 8, {})
        for heatmap, side in zip(result.heatmaps, sides):
            expected = (patch_1 if side == 1 else patch_0).patch[0, 0]
            assert torch.allclose(heatmap, expected, atol=1e-6)
    stable = (
        hand_set_explainer(SyCE, trained, (patch_0, patch_1)).explain(images, [1] * 8, {}).images["stable"]
    )
    assert torch.allclose(stable[sides == 0], images[sides == 0] + 2 * patch_0.patch, atol=1e-6)


def test_details_report_scores_and_flips(trained):
    images = halves_images(8)
    result = SyCE(HalvesClassifier(), artifacts=trained["syce"] / "artifact").explain(images, [1] * 8, {})
    with torch.no_grad():
        probability = HalvesClassifier()(images).softmax(1)[:, 1]
        adversarial_sides = HalvesClassifier()(result.images["adversarial"]).argmax(1)
        input_sides = HalvesClassifier()(images).argmax(1)
    for detail, p in zip(result.details, probability):
        assert detail["score_input"] == pytest.approx(float(p), abs=1e-5)
        assert set(detail) >= {"score_adversarial", "score_stable", "flipped", "mean_abs_difference"}
    assert [d["flipped"] for d in result.details] == (adversarial_sides != input_sides).tolist()
    assert any(d["flipped"] for d in result.details)
    assert set(result.images) == {"adversarial", "stable"}
    cyce = CyCE(HalvesClassifier(), artifacts=trained["cyce"] / "artifact").explain(
        images, [0] * 8, {"return_images": False}
    )
    assert cyce.images == {} and "score_counterfactual" in cyce.details[0]


@pytest.mark.parametrize("cls", [SyCE, CyCE])
def test_batched_equals_one_by_one_and_model_is_left_as_found(trained, cls):
    classifier = HalvesClassifier().train()
    explainer = cls(classifier, artifacts=trained[cls.variant] / "artifact")
    images = halves_images(6)
    original = images.clone()
    batched = explainer.explain(images, [1] * 6, {})
    for index in range(6):
        single = explainer.explain(images[index : index + 1], [1], {})
        assert torch.allclose(single.heatmaps[0], batched.heatmaps[index], atol=1e-5)
        assert single.details[0]["flipped"] == batched.details[index]["flipped"]
    assert torch.equal(images, original)
    assert classifier.training and all(p.requires_grad and p.grad is None for p in classifier.parameters())


def test_autocast_gives_the_float32_heatmaps(trained):
    """The worker runs SyCE under autocast on CUDA; bfloat16 on the CPU exercises the same path."""
    explainer = SyCE(HalvesClassifier(), artifacts=trained["syce"] / "artifact")
    images = halves_images(6)
    exact = explainer.explain(images, [1] * 6, {}).heatmaps
    mixed, precision = explain_autocast_or_float32(
        explainer, images, [1] * 6, {}, no_progress, device_type="cpu", dtype=torch.bfloat16
    )
    assert precision == "bfloat16"
    assert float((mixed.heatmaps - exact).abs().max()) <= 0.05 * float(exact.max()) + 1e-3


def test_missing_or_wrong_artifacts_are_clear_errors(trained, tmp_path):
    with pytest.raises(Conflict) as missing:
        SyCE(HalvesClassifier(), artifacts=None)
    assert missing.value.code == "artifact_missing"
    with pytest.raises(ServiceError) as mismatch:
        SyCE(HalvesClassifier(), artifacts=trained["cyce"] / "artifact")
    assert mismatch.value.code == "artifact_mismatch"
    with pytest.raises(ServiceError) as unreadable:
        CyCE(HalvesClassifier(), artifacts=tmp_path)
    assert unreadable.value.code == "artifact_unreadable"
    with pytest.raises(InvalidInput) as size:
        CyCE(HalvesClassifier(), artifacts=trained["cyce"] / "artifact").explain(
            torch.rand(1, 1, 8, 8), [1], {}
        )
    assert size.value.code == "artifact_input_mismatch"


def test_explainers_read_artifacts_without_the_training_code():
    """A worker that only explains must not load optimisers, discriminators or data loading."""
    import subprocess
    import sys

    code = (
        "import sys, workers.explainers.syce, workers.explainers.cyce, workers.explainers.gad; "
        "print(sorted(m for m in sys.modules if m.startswith('models.training')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
