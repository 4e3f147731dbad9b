"""GAD (models/training/gad.py, workers/explainers/gad.py): known answers on small real torch models.

The known-answer models are linear read-outs of one-hot 8 x 8 images, where the regression targets
are reachable exactly and the saliency of a class is the magnitude of its weights, so the support
models' margins and the kept pixels can be written down in advance.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from models.loader import Classifier
from models.manifest import InputSpec, ModelManifest
from models.artifacts.gad import read_artifact, write_artifact
from models.training.gad import CHECKPOINT_FILE, assign_to_pair, distanced_targets, train
from workers.explainers.gad import (
    BASE_METHODS,
    GAD,
    complexity_ratio,
    hull_mask,
    important_pixels,
    region_sensitivity,
)
from xai.errors import Conflict, InvalidInput, JobCancelled
from xai.methods.gad import SPECS, TRAINING_SPECS, parse_alphas, parse_class_pair

SPEC = SPECS[0]
SIZE = 8


def manifest(output: str = "softmax", class_names=("a", "b")) -> ModelManifest:
    return ModelManifest(
        id="tiny", architecture="test", input=InputSpec(height=SIZE, width=SIZE),
        class_names=list(class_names), output=output,
    )


def linear_classifier(output: str = "softmax") -> Classifier:
    """Class b's logit (or the sigmoid logit) is -x0 - x1 + x2 + x3: one-hot images 0, 1 -> a, 2, 3 -> b."""
    outputs = 2 if output == "softmax" else 1
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, outputs, bias=False))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[-1, :4] = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    return Classifier(net, manifest(output)).eval()


def three_class_classifier() -> Classifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 3))
    return Classifier(net, manifest(class_names=("a", "b", "c")))


def one_hot_images(count: int = 4) -> torch.Tensor:
    return torch.eye(SIZE * SIZE)[:count].view(count, 1, SIZE, SIZE)


def small_cnn_classifier(seed: int = 0) -> Classifier:
    """A seeded CNN with batch norm, separate ReLU modules and max pooling (what Captum's rules touch)."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3, padding=1), bn1=nn.BatchNorm2d(4), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(4, 6, 3, padding=1), relu2=nn.ReLU(), gap=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(), fc=nn.Linear(6, 2),
    ))
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.1, 0.1)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return Classifier(net, manifest()).eval()


def perturbed_states(classifier: nn.Module, count: int, scale: float = 0.2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    states = []
    for _ in range(count):
        state = {k: v.clone() for k, v in classifier.state_dict().items()}
        for name, tensor in state.items():
            if tensor.is_floating_point() and "running" not in name:
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator))
        states.append(state)
    return states


def explain_params(**overrides) -> dict:
    return SPEC.resolve_params({"n_steps": 8, **overrides})


def no_progress(fraction: float, note: str | None = None) -> None:
    pass


# --- spec ----------------------------------------------------------------------------------------


def test_spec_parsers_accept_the_papers_defaults_and_refuse_bad_input():
    assert parse_alphas(TRAINING_SPECS[0].resolve_params({})["alphas"]) == [2.0, 4.0, 6.0, 8.0]
    assert parse_alphas("8, 2") == [2.0, 8.0]
    for bad in ("", "2,2", "0,4", "two"):
        with pytest.raises(InvalidInput):
            parse_alphas(bad)
    assert parse_class_pair("cat, 0", ["dog", "bird", "cat"]) == (2, 0)
    assert parse_class_pair("", ["a", "b"]) is None
    assert parse_class_pair("b,0", ["a", "b", "c"]) == (1, 0)
    with pytest.raises(InvalidInput) as refused:
        parse_class_pair("a,a", ["a", "b"])
    assert refused.value.code == "invalid_class_pair"
    assert set(SPEC.describe()["params"][0]["choices"]) == set(BASE_METHODS)
    assert SPEC.name == GAD.name and SPEC.needs_artifacts and TRAINING_SPECS[0].queue == "train"


# --- training ------------------------------------------------------------------------------------


def test_distanced_targets_lower_the_other_class_by_alpha():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, 0.0], [0.0, 0.0, 4.0]])
    side = assign_to_pair(logits, (0, 1))
    assert side.tolist() == [0, 1, -1]
    targets = distanced_targets(logits, side, (0, 1), 2.5)
    assert torch.equal(targets, torch.tensor([[3.0, -1.5, 0.0], [-2.0, 2.0, 0.0], [0.0, 0.0, 4.0]]))


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_training_moves_the_margin_by_alpha_and_leaves_the_classifier_alone(tmp_path, output):
    classifier = linear_classifier(output)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    notes = []
    summary = train(
        classifier, one_hot_images(), tmp_path,
        {"alphas": "2,8", "epochs": 100, "learning_rate": 0.2, "batch_size": 4},
        lambda fraction, note: notes.append(note), "cpu",
    )
    # Own-class minus other-class logit grows by alpha: the regression optimum for both output kinds.
    assert summary["margin_shift"]["2"] == pytest.approx(2.0, abs=0.05)
    assert summary["margin_shift"]["8"] == pytest.approx(8.0, abs=0.15)
    if output == "sigmoid":  # [-z/2, z/2] cannot meet both targets: the MSE floor is alpha**2 / 4
        assert summary["final_loss"]["8"] == pytest.approx(16.0, abs=0.1)
    assert summary["images_used"] == {"a": 2, "b": 2}
    assert len(notes) == 100 and "loss" in notes[-1]
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(tensor, before[name])
    assert all(p.grad is None for p in classifier.parameters()) and not classifier.training

    artifact = read_artifact(Path(summary["artifact"]))
    assert artifact.alphas == [2.0, 8.0] and artifact.class_pair == (0, 1)
    support = linear_classifier(output)
    support.load_state_dict(artifact.states[1])
    own_sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])  # images 0, 1 are class a, 2, 3 class b

    def margin(model: nn.Module) -> torch.Tensor:
        return (model(one_hot_images()) @ torch.tensor([-1.0, 1.0])) * own_sign

    assert (margin(support) - margin(classifier)).mean().item() == pytest.approx(8.0, abs=0.15)


def test_a_cancelled_run_resumes_to_the_same_support_models(tmp_path):
    params = {"alphas": "2,4", "epochs": 3, "learning_rate": 0.05, "batch_size": 2}
    straight = train(linear_classifier(), one_hot_images(), tmp_path / "straight", params, no_progress, "cpu")

    def cancel_after_first_epoch(fraction: float, note: str | None = None) -> None:
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        train(linear_classifier(), one_hot_images(), tmp_path / "resumed", params, cancel_after_first_epoch,
              "cpu")
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).exists()
    resumed = train(linear_classifier(), one_hot_images(), tmp_path / "resumed", params, no_progress, "cpu")
    assert resumed["resumed_from_epoch"] == 1 and straight["resumed_from_epoch"] == 0
    for a, b in zip(read_artifact(tmp_path / "straight" / "artifact").states,
                    read_artifact(tmp_path / "resumed" / "artifact").states):
        assert all(torch.equal(a[name], b[name]) for name in a)

    retrained = linear_classifier()  # the same images and settings, but other classifier weights
    with torch.no_grad():
        retrained.net[1].weight[1, :4] *= 2
    again = train(retrained, one_hot_images(), tmp_path / "resumed", params, no_progress, "cpu")
    assert again["resumed_from_epoch"] == 0


def test_training_refuses_a_class_the_classifier_never_predicts_and_a_missing_pair(tmp_path):
    with pytest.raises(InvalidInput) as refused:
        train(linear_classifier(), one_hot_images(2), tmp_path, {"epochs": 1}, no_progress, "cpu")
    assert refused.value.code == "class_not_predicted" and "'b'" in refused.value.message
    three = three_class_classifier()
    with pytest.raises(InvalidInput) as refused:
        train(three, one_hot_images(), tmp_path, {"epochs": 1}, no_progress, "cpu")
    assert refused.value.code == "class_pair_required"


def test_a_multi_class_model_distances_the_named_pair_only(tmp_path):
    three = three_class_classifier()
    with torch.no_grad():
        three.net[1].weight.zero_()
        three.net[1].bias.zero_()
        three.net[1].weight[:, :3] = torch.eye(3)  # one-hot image i -> class i (image 3 -> class 0)
    summary = train(three, one_hot_images(), tmp_path, {"epochs": 1, "class_pair": "c,a"}, no_progress, "cpu")
    assert summary["class_pair"] == [2, 0] and summary["class_names"] == ["c", "a"]
    assert summary["images_used"] == {"c": 1, "a": 2} and summary["images_not_in_pair"] == 1
    with pytest.raises(InvalidInput) as refused:
        train(three, one_hot_images(), tmp_path, {"epochs": 1, "class_pair": "c,a"}, no_progress, "cpu",
              target_class=1)
    assert refused.value.code == "target_not_in_class_pair"


# --- explainer -----------------------------------------------------------------------------------


def hand_built_artifact(folder: Path, classifier: Classifier, support_rows: list[torch.Tensor]) -> Path:
    """An artifact whose support models are the linear classifier with class b's weights replaced."""
    states = []
    for row in support_rows:
        state = {k: v.clone() for k, v in classifier.state_dict().items()}
        state["net.1.weight"][1] = row
        states.append(state)
    alphas = [float(2 * (i + 1)) for i in range(len(states))]
    return write_artifact(folder, states, alphas, (0, 1), classifier.manifest, {"epochs": 0})


def test_gad_keeps_exactly_the_pixels_important_for_every_model(tmp_path):
    # Saliency of class b on a linear model is |weight|: the classifier ranks pixels 0..31 highest,
    # support model 1 ranks pixels 16..47, support model 2 pixels 0..23 and 40..47.
    classifier = linear_classifier()
    ramp = torch.linspace(2.0, 1.0, SIZE * SIZE)
    weights = ramp.clone()
    weights[32:] = 0.1
    with torch.no_grad():
        classifier.net[1].weight[1] = weights
    first = ramp.clone()
    first[:16] = 0.05
    first[48:] = 0.05
    second = ramp.clone()
    second[24:40] = 0.05
    second[48:] = 0.05
    artifact = hand_built_artifact(tmp_path / "artifact", classifier, [first, second])

    image = torch.rand(1, 1, SIZE, SIZE)
    params = explain_params(base_method="saliency", support_evaluation="batched")
    result = GAD(classifier, artifacts=artifact).explain(image, [1], params)

    kept = torch.zeros(SIZE * SIZE, dtype=torch.bool)
    kept[16:24] = True
    assert torch.equal(result.heatmaps[0].flatten() > 0, kept)
    assert torch.allclose(result.heatmaps[0].flatten()[kept], weights[kept])
    details = result.details[0]
    assert details["important_pixels"] == {"base": 32, "per_support_model": [32, 32], "gad": 8}
    assert details["retained_fraction"] == pytest.approx(8 / 32)
    assert details["rc"] < 1 and details["support_evaluation"] == "batched (torch.vmap)"
    # The unfiltered map comes back too, normalised to a peak of 1, with the kept mask.
    assert torch.allclose(result.images["base_map"][0, 0].flatten(), weights / weights.max())
    assert torch.equal(result.images["gad_mask"][0, 0].flatten().bool(), kept)


@pytest.mark.parametrize("base_method", sorted(BASE_METHODS))
def test_batched_support_evaluation_equals_one_after_another(tmp_path, base_method):
    classifier = small_cnn_classifier()
    states = perturbed_states(classifier, 3)
    artifact = write_artifact(tmp_path / "artifact", states, [2.0, 4.0, 6.0], (0, 1), classifier.manifest, {})
    explainer = GAD(classifier, artifacts=artifact)
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    # internal_batch_size 5 splits integrated gradients' 8 steps x 2 images into uneven chunks.
    params = explain_params(base_method=base_method, internal_batch_size=5, support_evaluation="batched")
    batched = explainer.explain(images, [0, 1], params)
    sequential = params | {"support_evaluation": "sequential"}
    looped = explainer.explain(images, [0, 1], sequential)
    assert batched.details[0]["support_evaluation"] == "batched (torch.vmap)"
    assert looped.details[0]["support_evaluation"] == "sequential (requested)"
    assert (batched.heatmaps > 0).any(dim=1).any(dim=1).all()  # a real map for both images
    assert torch.allclose(batched.heatmaps, looped.heatmaps, atol=1e-6, rtol=1e-4)
    assert torch.allclose(batched.images["base_map"], looped.images["base_map"], atol=1e-6, rtol=1e-4)
    assert batched.details[1]["logit_margin"] == looped.details[1]["logit_margin"]
    # The GAD map never holds a pixel the base map does not rank as important.
    base_important = important_pixels(batched.images["base_map"][:, 0], 0.5)
    assert not ((batched.heatmaps > 0) & ~base_important).any()


def test_the_classifier_is_left_as_found(tmp_path):
    classifier = small_cnn_classifier()
    artifact = write_artifact(
        tmp_path / "artifact", perturbed_states(classifier, 2), [2.0, 4.0], (0, 1), classifier.manifest, {}
    )
    classifier.train()
    classifier.net.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    image = torch.rand(1, 1, SIZE, SIZE)
    snapshot = image.clone()
    for base_method in ("guided_backprop", "integrated_gradients"):
        for mode in ("batched", "sequential"):
            params = explain_params(base_method=base_method, support_evaluation=mode)
            GAD(classifier, artifacts=artifact).explain(image, [1], params)
    assert classifier.training and all(m.training for m in classifier.modules())
    assert not classifier.net.conv1.weight.requires_grad and classifier.net.fc.weight.requires_grad
    for module in classifier.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert all(torch.equal(v, before[k]) for k, v in classifier.state_dict().items())
    assert torch.equal(image, snapshot)


def test_missing_mismatched_artifacts_and_foreign_targets_are_refused(tmp_path):
    classifier = linear_classifier()
    with pytest.raises(Conflict) as refused:
        GAD(classifier, artifacts=None)
    assert refused.value.code == "gad_not_trained"
    other = Classifier(classifier.net, manifest(class_names=("x", "y")))
    artifact = write_artifact(tmp_path / "other", [other.state_dict()], [2.0], (0, 1), other.manifest, {})
    with pytest.raises(Conflict) as refused:
        GAD(classifier, artifacts=artifact)
    assert refused.value.code == "gad_artifact_mismatch"

    artifact = hand_built_artifact(tmp_path / "linear", classifier, [torch.ones(SIZE * SIZE)])
    with pytest.raises(InvalidInput) as refused:  # no nn.ReLU: the rule would silently be the plain gradient
        GAD(classifier, artifacts=artifact).explain(
            torch.rand(1, 1, SIZE, SIZE), [1], explain_params(base_method="guided_backprop")
        )
    assert refused.value.code == "base_method_unsupported"

    three = three_class_classifier()
    artifact = write_artifact(tmp_path / "three", [three.state_dict()], [2.0], (0, 2), three.manifest, {})
    with pytest.raises(InvalidInput) as refused:
        GAD(three, artifacts=artifact).explain(torch.rand(1, 1, SIZE, SIZE), [1], explain_params())
    assert refused.value.code == "target_not_in_class_pair"


def test_important_pixels_are_the_top_share_of_the_pixels_with_importance():
    sparse = torch.tensor([[0.0, 0.9, 0.0, 0.2], [0.5, 0.0, 0.7, 0.0]])  # 4 of 8 pixels carry importance
    expected = [[False, True, False, False], [False, False, True, False]]
    assert important_pixels(sparse, 0.5).tolist() == expected
    ties = torch.tensor([[1.0, 1.0, 1.0, 0.5]])
    assert important_pixels(ties, 0.25).tolist() == [[True, True, True, False]]  # ties at the cut stay
    assert not important_pixels(torch.zeros(2, 4), 0.5).any()


# --- RC and RS -----------------------------------------------------------------------------------


def test_hull_mask_fills_the_hull_of_the_selected_pixel_squares():
    selected = torch.zeros(4, 4, dtype=torch.bool)
    selected[0, 0] = selected[3, 3] = True
    mask = hull_mask(selected.numpy())
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(torch.from_numpy(mask), (rows - cols).abs() <= 1)  # the diagonal band, 10 pixels
    assert not hull_mask(torch.zeros(4, 4, dtype=torch.bool).numpy()).any()


def test_rc_is_the_ratio_of_hull_areas():
    base = torch.ones(8, 8)
    gad = torch.zeros(8, 8)
    gad[2:4, 5:7] = 1.0
    figures = complexity_ratio(gad, base, 0.5)
    assert figures["rc"] == pytest.approx(4 / 64) and figures["base_area"] == pytest.approx(1.0)
    assert complexity_ratio(gad, torch.zeros(8, 8), 0.5)["rc"] is None


def test_rs_is_the_probability_change_per_occluded_pixel():
    # z = sum of the image's top-left 4 x 4 square, presented as [-z/2, z/2]: p_b = sigmoid(z).
    weights = torch.zeros(SIZE, SIZE)
    weights[:4, :4] = 1.0

    class Square(nn.Module):
        def forward(self, images):
            z = (images[:, 0] * weights).flatten(1).sum(dim=1, keepdim=True) - 8
            return torch.cat([-z / 2, z / 2], dim=1)

    image = torch.full((1, 1, SIZE, SIZE), 0.75)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[0, :2, :] = 1.0  # 16 pixels, 8 of them inside the square
    expected = abs(1 / (1 + math.exp(-(12 - 8))) - 1 / (1 + math.exp(-(6 - 8)))) / 16
    assert region_sensitivity(Square(), image, mask, [1]) == [pytest.approx(expected)]
    assert region_sensitivity(Square(), image, torch.zeros(1, SIZE, SIZE), [1]) == [None]
