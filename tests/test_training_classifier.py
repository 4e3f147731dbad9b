"""Classifier training: ROC AUC, the training loop, image folders, model folders, the shipped demo models."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from models.loader import load_classifier
from models.manifest import InputSpec, ModelManifest
from models.store import MANIFEST_NAME, sha256_of
from models.training import demo
from models.training.classifier import (
    AdversarialTraining,
    Augmentation,
    macro_roc_auc,
    roc_auc,
    stratified_split,
    train_classifier,
    train_from_folder,
)
from models.training.data import load_image_folder
from xai.errors import InvalidImage, InvalidInput

SPEC = InputSpec(height=16, width=16, channels=1)
TINY = {"widths": [4, 8]}
DATA_ROOT = demo.DEFAULT_DATA_ROOT


# ----------------------------------------------------------------------------- ROC AUC


def test_roc_auc_known_values():
    # The textbook example (also scikit-learn's docstring): 3 of the 4 positive-negative pairs are ordered.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.2, 0.9]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.2]), np.array([0, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5  # ties count one half
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def test_macro_roc_auc_averages_one_vs_rest():
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    labels = np.array([0, 1, 2, 2])
    # Class 0: its positive 0.8 beats 0.2, 0.3, 0.5; class 1: 0.7 beats 0.1, 0.3, 0.1;
    # class 2: 0.4 and 0.4 beat 0.1 and 0.1.
    assert macro_roc_auc(probabilities, labels) == pytest.approx(1.0)
    probabilities[3, 0] = 0.9  # class 0 now ranks one negative above its positive: 2 of 3 pairs
    assert macro_roc_auc(probabilities, labels) == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_stratified_split_holds_out_the_fraction_of_each_class():
    labels = torch.tensor([0] * 10 + [1] * 20)
    train, held_out = stratified_split(labels, 0.2, seed=3)
    assert sorted(train.tolist() + held_out.tolist()) == list(range(30))
    assert torch.bincount(labels[held_out]).tolist() == [2, 4]


# ----------------------------------------------------------------------------- training loop


def separable_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; class 1 ("spot") has a bright 5 x 5 square somewhere, class 0 ("plain") none."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.rand(count, 1, 16, 16, generator=generator)
    labels = torch.arange(count) % 2
    for index in torch.nonzero(labels).flatten().tolist():
        row, column = torch.randint(0, 11, (2,), generator=generator).tolist()
        images[index, 0, row : row + 5, column : column + 5] += 0.7
    return images, labels


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_training_drives_the_loss_down_and_learns_a_separable_task(output):
    images, labels = separable_images(64, seed=0)
    val_images, val_labels = separable_images(32, seed=1)
    losses = []

    def record(fraction: float, note: str | None) -> None:
        losses.append(float(note.split("train loss ")[1].split(",")[0]))

    net, evaluation = train_classifier(
        images, labels, architecture="small_cnn", architecture_args=TINY, input_spec=SPEC,
        class_names=["plain", "spot"], output=output, epochs=8, batch_size=16, lr=3e-2, device="cpu", seed=0,
        val_images=val_images, val_labels=val_labels, progress=record, augment=None,
    )
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert evaluation["accuracy"] >= 0.95 and evaluation["auc"] >= 0.98
    assert evaluation["n_train"] == 64 and evaluation["n_test"] == 32
    assert not net.training


def test_training_is_reproducible_with_a_seed():
    images, labels = separable_images(32, seed=0)
    runs = [
        train_classifier(
            images, labels, architecture="lenet", architecture_args={}, input_spec=SPEC,
            class_names=["a", "b"], output="sigmoid", epochs=1, batch_size=8, lr=1e-3, device="cpu", seed=5,
            augment=Augmentation(),
        )[0]
        for _ in range(2)
    ]
    first, second = (run.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)


class Linear(torch.nn.Module):
    """Logit w . x for 4 x 4 images, w = +1 on the left half, -2 on the right half."""

    def __init__(self):
        super().__init__()
        self.weight = torch.ones(1, 1, 4, 4)
        self.weight[..., 2:] = -2.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images * self.weight).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_of_a_linear_model_moves_to_the_edge_of_the_ball_along_its_weights(norm):
    # Raising w . x within the ball: L-infinity's optimum is eps * sign(w), reached exactly (the sign
    # steps travel 2.5 eps in all); L2's is eps * w / ||w||, approached from the random start (each
    # projected step shrinks the sideways part, by about exp(-2.5) in all).
    model, images = Linear(), torch.full((3, 1, 4, 4), 0.5)
    attack = AdversarialTraining(epsilon=0.1, steps=10, norm=norm)
    moved = attack.attack(model, images, lambda logits: logits.sum(), torch.Generator().manual_seed(0))
    change = (moved - images).flatten(1)
    weight = model.weight.flatten()
    if norm == "linf":
        assert torch.allclose(change, 0.1 * weight.sign().expand_as(change), atol=1e-6)
    else:
        assert torch.allclose(change.norm(dim=1), torch.full((3,), 0.1), atol=1e-6)
        cosine = torch.nn.functional.cosine_similarity(change, weight[None], dim=1)
        assert (cosine > 0.97).all()


def test_adversarial_training_is_recorded_in_the_evaluation():
    images, labels = separable_images(32, seed=0)
    _, evaluation = train_classifier(
        images, labels, architecture="small_cnn", architecture_args=TINY, input_spec=SPEC,
        class_names=["plain", "spot"], output="sigmoid", epochs=1, batch_size=16, lr=1e-2, device="cpu", seed=0,
        augment=None, adversarial=AdversarialTraining(epsilon=0.5, steps=2, norm="l2"),
    )
    assert evaluation["adversarial_training"] == {
        "epsilon": 0.5, "steps": 2, "norm": "l2", "warmup_epochs": 0, "background_margin_px": None,
        "gain_field": 0.0,
    }


def test_attack_confined_to_the_background_leaves_the_finding_and_its_margin_alone():
    model, images = Linear(), torch.full((2, 1, 4, 4), 0.5)
    regions = torch.zeros(2, 1, 4, 4)
    regions[0, 0, 0, 0] = 1  # a finding in the corner of the first image; the second has none
    attack = AdversarialTraining(epsilon=0.1, steps=10, norm="linf", background_margin_px=1)
    allowed = attack.allowed_pixels(regions)
    expected = torch.ones(2, 1, 4, 4)
    expected[0, 0, :2, :2] = 0  # the finding and the pixels within 1 px of it
    assert torch.equal(allowed, expected)
    moved = attack.attack(model, images, lambda logits: logits.sum(), torch.Generator().manual_seed(0), allowed)
    change = moved - images
    assert torch.equal(change[0, 0, :2, :2], torch.zeros(2, 2))
    assert torch.allclose(change[allowed.bool()], 0.1 * model.weight.sign().expand_as(images)[allowed.bool()])
    assert AdversarialTraining().allowed_pixels(regions) is None


class MeanAboveHalf(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).mean(1, keepdim=True) - 0.5


def test_gain_field_is_a_smooth_bounded_brightness_change_away_from_the_finding():
    # No PGD (epsilon 0: a step of length 0): the attack is the gain field alone, on grey 0.5 so that nothing clips.
    images = torch.full((4, 1, 128, 128), 0.5)
    mean_model = MeanAboveHalf()
    regions = torch.zeros(4, 1, 128, 128)
    regions[:, :, 40:60, 40:60] = 1
    attack = AdversarialTraining(epsilon=0.0, steps=1, background_margin_px=4, gain_field=0.4)
    allowed = attack.allowed_pixels(regions)
    change = attack.attack(mean_model, images, lambda logits: logits.sum(), torch.Generator().manual_seed(0), allowed) \
        - images
    assert torch.equal(change[:, :, 36:64, 36:64], torch.zeros(4, 1, 28, 28))  # the finding and its margin
    size = change.abs().mean()
    assert 0.02 < size and change.abs().max() <= 0.4 * 1.25  # bicubic overshoots a cell's value a little
    # Smooth: neighbouring pixels differ far less than the change itself (white noise: about as much).
    steps = torch.cat([(change[..., 1:, :] - change[..., :-1, :]).flatten(), (change[..., 1:] - change[..., :-1]).flatten()])
    assert steps.abs().mean() < 0.3 * size
    assert not torch.allclose(change[0], change[1])  # a field of its own per image
    assert torch.equal(AdversarialTraining(epsilon=0.0, steps=1).attack(
        mean_model, images, lambda logits: logits.sum(), torch.Generator().manual_seed(0)), images)


def test_flip_rate_counts_the_decisions_an_attack_of_its_size_flips():
    # Flipping needs the mean to cross 0.5: image 0 (0.51) by an L2 change of 0.04, image 1 (0.9) of 1.6.
    images = torch.stack([torch.full((1, 4, 4), 0.51), torch.full((1, 4, 4), 0.9)])
    attack = AdversarialTraining(epsilon=0.5, steps=10, norm="l2")
    assert attack.flip_rate(MeanAboveHalf(), images) == 0.5
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2] = 1  # 8 pixels may change: image 0 still flips with 0.02 each (L2 0.057)
    assert attack.flip_rate(MeanAboveHalf(), images, half) == 0.5
    assert attack.flip_rate(MeanAboveHalf(), images, torch.zeros(1, 1, 4, 4)) == 0.0


def test_background_attack_without_regions_is_refused():
    images, labels = separable_images(8, seed=0)
    with pytest.raises(InvalidInput) as error:
        train_classifier(
            images, labels, architecture="small_cnn", architecture_args=TINY, input_spec=SPEC,
            class_names=["plain", "spot"], output="sigmoid", epochs=1, batch_size=4, lr=1e-2, device="cpu",
            seed=0, adversarial=AdversarialTraining(background_margin_px=2),
        )
    assert error.value.code == "invalid_training_data"


def test_augmentation_moves_regions_with_the_image():
    # An image that is its own mask: after the same warp, the moved mask is where the image is bright.
    square = torch.zeros(4, 1, 32, 32)
    square[:, :, 10:20, 8:16] = 1
    augment = Augmentation(rotation_degrees=30, translate=0.15, horizontal_flip=True, contrast=0, brightness=0)
    moved, regions = augment.with_regions(square, square.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(regions, (moved > 0.5).float())
    assert not torch.equal(regions, square)
    alone = augment(square, torch.Generator().manual_seed(0))
    assert torch.equal(alone, moved)  # the same draws with and without regions


def test_augmentation_keeps_range_and_shape():
    images = torch.rand(4, 1, 16, 16)
    out = Augmentation(horizontal_flip=True)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, images)


# ----------------------------------------------------------------------------- image folders


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_class_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / classes[label] / ("nested" if index % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image[0].clamp(0, 1) * 255).round().byte().numpy()
        (folder / f"{index:03d}.png").write_bytes(png_bytes(pixels))


def test_load_image_folder_labels_by_first_level_folder_and_skips_non_images(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog" / "deep").mkdir(parents=True)
    (tmp_path / "cat" / "a.png").write_bytes(png_bytes(np.full((32, 32), 255, np.uint8)))
    (tmp_path / "dog" / "deep" / "b.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    # A DICOM file without suffix, as PACS exports name them: it is found by its bytes.
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm", download=False), tmp_path / "dog" / "1.2.3")

    images, labels, paths = load_image_folder(tmp_path, SPEC, ["cat", "dog"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["cat/a.png", "dog/1.2.3", "dog/deep/b.png"]
    assert images.shape == (3, 1, 16, 16) and labels.tolist() == [0, 1, 1]
    assert float(images[0].min()) == 1.0 and float(images[2].max()) == 0.0
    assert load_image_folder(tmp_path, SPEC)[1] is None
    assert load_image_folder(tmp_path, SPEC, ["cat", "bird"])[1] is None  # "dog" is not a class


def test_a_broken_image_in_a_folder_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8))[:40])
    with pytest.raises(InvalidImage) as caught:
        load_image_folder(tmp_path, SPEC)
    assert "broken.png" in caught.value.message


def test_train_from_folder_writes_a_model_folder_that_loads(tmp_path):
    images, labels = separable_images(40, seed=0)
    write_class_folder(tmp_path / "data", images, labels, ["plain", "spot"])
    manifest = train_from_folder(
        tmp_path / "data", tmp_path / "model", model_id="tiny-folder", architecture_args=TINY,
        size=16, epochs=8, lr=3e-2, batch_size=8, val_fraction=0.25, augment=None,
    )
    on_disk = ModelManifest.model_validate_json((tmp_path / "model" / MANIFEST_NAME).read_text())
    assert on_disk == manifest and manifest.weights_sha256 == sha256_of(tmp_path / "model" / "weights.pt")
    assert manifest.class_names == ["plain", "spot"] and manifest.output == "sigmoid"
    assert manifest.target_layer == "features.block2"
    assert manifest.evaluation["n_test"] == 10 and manifest.evaluation["accuracy"] >= 0.9
    classifier = load_classifier(manifest, tmp_path / "model" / "weights.pt", "cpu")
    assert classifier(images[:2]).shape == (2, 2)


# ----------------------------------------------------------------------------- shipped demo models


@pytest.mark.skipif(not DATA_ROOT.is_dir(), reason="the developer data set (../shared/data) is not here")
@pytest.mark.parametrize("name", sorted(demo.DEMOS))
def test_shipped_demo_model_reaches_its_recorded_test_figures(name):
    folder = demo.DEMO_DIR / name
    manifest = ModelManifest.model_validate_json((folder / MANIFEST_NAME).read_text())
    assert (folder / manifest.weights_file).stat().st_size < 5_000_000
    classifier = load_classifier(manifest, folder / manifest.weights_file, "cpu")
    test = demo.DEMOS[name].test_split(DATA_ROOT)
    with torch.inference_mode():
        predicted = torch.cat([classifier(batch).argmax(dim=1) for batch in test.images.split(256)])
    accuracy = float((predicted == test.labels).float().mean())
    assert len(test.labels) == manifest.evaluation["n_test"]
    # Another thread count may round a borderline logit the other way: allow one image.
    assert accuracy == pytest.approx(manifest.evaluation["accuracy"], abs=1.01 / len(test.labels))


@pytest.mark.skipif(not DATA_ROOT.is_dir(), reason="the developer data set (../shared/data) is not here")
def test_busi_split_carries_each_image_s_lesion_mask():
    # labels.csv records each mask's area and bounding box at 128 px; the regions must be those masks.
    rows = [row for row in demo.read_table(DATA_ROOT / "busi" / "labels.csv") if row["split_hint"] == "test"]
    test = demo.busi_test_split(DATA_ROOT)
    assert test.regions.shape == (len(rows), 1, 128, 128)
    for row, region in zip(rows[:20], test.regions[:20, 0]):
        assert float(region.mean()) == pytest.approx(float(row["mask_fraction"]), abs=5e-4)
        ys, xs = torch.nonzero(region, as_tuple=True)
        assert (int(xs.min()), int(ys.min())) == (int(row["mask_bbox_x"]), int(row["mask_bbox_y"]))
