"""The torch half of the registry: networks, loading, the sigmoid presentation, layers, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.loader import Classifier, Normalization, load_classifier, resolve_layer, validate_registration
from models.manifest import InputSpec, ModelManifest
from models.networks import build_network, default_target_layer
from models.preprocess import heatmap_to_input_size, to_model_input
from models import DEMO_DIR
from models.store import ModelStore
from models.training.classifier import save_model_folder
from xai.errors import InvalidInput, ServiceError

SPEC = InputSpec(height=16, width=16, channels=1, mean=[0.4], std=[0.2])
TINY = {"widths": [4, 8]}


def manifest_for(architecture: str = "small_cnn", output: str = "sigmoid", **fields) -> ModelManifest:
    classes = ["absent", "present"] if output == "sigmoid" else ["a", "b", "c"]
    values = {"architecture_args": TINY if architecture == "small_cnn" else {}, **fields}
    return ModelManifest(
        id="tiny", architecture=architecture, input=SPEC, output=output, class_names=classes, **values
    )


def trained_looking(net: nn.Module) -> nn.Module:
    """Give batch-norm layers non-trivial running statistics, so a lost buffer would show in the logits."""
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 1, 16, 16) * 3)
    return net.eval()


@pytest.fixture
def saved_model(tmp_path):
    """A tiny sigmoid small_cnn saved as a model folder, with its network."""
    net = trained_looking(build_network("small_cnn", TINY, 1))
    manifest = save_model_folder(tmp_path / "folder", manifest_for(), net)
    return manifest, net, tmp_path / "folder"


# ----------------------------------------------------------------------------- networks


def test_build_network_names_the_valid_architectures_when_unknown():
    with pytest.raises(InvalidInput) as caught:
        build_network("resnet", {}, 2)
    assert caught.value.code == "unknown_architecture"
    assert "lenet" in caught.value.message and "small_cnn" in caught.value.message
    assert "torchvision.resnet18" not in caught.value.message  # listed as <name> choices instead
    assert "resnet18" in caught.value.message


def test_build_network_refuses_unknown_arguments_listing_the_accepted_ones():
    with pytest.raises(InvalidInput) as caught:
        build_network("small_cnn", {"width": [8]}, 2)
    assert caught.value.code == "invalid_architecture_args"
    assert "widths" in caught.value.message


@pytest.mark.parametrize(
    ("architecture", "size", "target"),
    [
        ("lenet", 28, "features.relu2"),
        ("small_cnn", 64, "features.block4"),
        ("torchvision.resnet18", 64, "layer4"),
    ],
)
def test_networks_take_one_channel_and_name_their_last_conv_block(architecture, size, target):
    net = build_network(architecture, {}, 3, in_channels=1).eval()
    assert net(torch.zeros(2, 1, size, size)).shape == (2, 3)
    assert default_target_layer(net) == target
    assert target in dict(net.named_modules())


# ----------------------------------------------------------------------------- loading


def test_round_trip_through_the_store_gives_identical_logits(saved_model, tmp_path):
    manifest, net, folder = saved_model
    stored = ModelStore(tmp_path / "store").register_directory(folder)
    classifier = load_classifier(stored, ModelStore(tmp_path / "store").weights_path(stored), "cpu")

    images = torch.rand(5, 1, 16, 16)
    z = net((images - 0.4) / 0.2)
    assert stored.weights_sha256 == manifest.weights_sha256 != ""
    assert not classifier.training and all(p.requires_grad for p in classifier.parameters())
    assert torch.equal(classifier(images), torch.cat([-z / 2, z / 2], dim=1))


def test_sigmoid_model_is_presented_as_two_logits_with_the_sigmoid_as_softmax():
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 1))
    classifier = Classifier(net, manifest_for(architecture="torchscript"))
    images = torch.rand(6, 1, 16, 16)
    z = net((images - 0.4) / 0.2)[:, 0]
    probabilities = classifier(images).softmax(dim=1)
    torch.testing.assert_close(probabilities[:, 1], torch.sigmoid(z), rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities[:, 0], 1 - torch.sigmoid(z), rtol=0, atol=1e-6)


def test_normalization_uses_the_manifest_mean_and_std_per_channel():
    spec = InputSpec(height=8, width=8, channels=3, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    out = Normalization(spec)(torch.ones(1, 3, 8, 8))
    assert out[0, :, 0, 0].tolist() == [1.0, 3.0, 0.5]


def test_checksum_mismatch_is_refused(saved_model):
    manifest, _, folder = saved_model
    tampered = manifest.model_copy(update={"weights_sha256": "0" * 64})
    with pytest.raises(ServiceError) as caught:
        load_classifier(tampered, folder / "weights.pt", "cpu")
    assert caught.value.code == "weights_checksum_mismatch"


def test_state_dict_of_another_architecture_is_refused_with_the_keys(saved_model):
    _, _, folder = saved_model
    with pytest.raises(InvalidInput) as caught:
        load_classifier(manifest_for(architecture="lenet"), folder / "weights.pt", "cpu")
    assert caught.value.code == "weights_do_not_match_architecture"
    assert "features.conv1.weight" in caught.value.message  # missing
    assert "features.block1.conv1.weight" in caught.value.message  # unexpected


def test_state_dict_with_other_shapes_is_refused(saved_model):
    _, _, folder = saved_model
    wider = manifest_for(architecture_args={"widths": [4, 16]})
    with pytest.raises(InvalidInput) as caught:
        load_classifier(wider, folder / "weights.pt", "cpu")
    assert caught.value.code == "weights_do_not_match_architecture"
    assert "size mismatch" in caught.value.message


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InvalidInput) as caught:
        load_classifier(manifest_for(), path, "cpu")
    assert caught.value.code == "weights_unreadable"


def test_torchscript_model_loads_with_its_layers(tmp_path):
    net = trained_looking(build_network("small_cnn", TINY, 3))
    path = tmp_path / "model.ts"
    torch.jit.trace(net, torch.rand(1, 1, 16, 16)).save(str(path))
    classifier = load_classifier(manifest_for(architecture="torchscript", output="softmax"), path, "cpu")
    images = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(classifier(images), net((images - 0.4) / 0.2))
    assert resolve_layer(classifier, "features.block2.conv1") is classifier.net.features.block2.conv1
    assert classifier.target_layer_name is None  # a TorchScript file brings no default


def test_validate_registration_refuses_a_wrong_number_of_outputs(tmp_path):
    path = tmp_path / "model.ts"
    torch.jit.trace(build_network("small_cnn", TINY, 2).eval(), torch.rand(1, 1, 16, 16)).save(str(path))
    with pytest.raises(InvalidInput) as caught:
        validate_registration(manifest_for(architecture="torchscript", output="sigmoid"), path)
    assert caught.value.code == "wrong_number_of_outputs"
    assert "gives 2 outputs" in caught.value.message


def test_validate_registration_refuses_an_input_size_the_network_cannot_take(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(100, 1))  # needs 10 x 10 images, the manifest says 16 x 16
    path = tmp_path / "model.ts"
    torch.jit.trace(net, torch.rand(1, 1, 10, 10)).save(str(path))
    with pytest.raises(InvalidInput) as caught:
        validate_registration(manifest_for(architecture="torchscript"), path)
    assert caught.value.code == "model_forward_failed"


def test_validate_registration_refuses_a_target_layer_the_network_lacks(saved_model):
    manifest, _, folder = saved_model
    with pytest.raises(InvalidInput) as caught:
        validate_registration(manifest.model_copy(update={"target_layer": "layer4"}), folder / "weights.pt")
    assert caught.value.code == "unknown_layer"


def test_validate_registration_accepts_a_fitting_model(saved_model):
    manifest, _, folder = saved_model
    validate_registration(manifest, folder / "weights.pt")


# ----------------------------------------------------------------------------- layers


def test_resolve_layer_by_dotted_name_and_by_default(saved_model):
    manifest, _, folder = saved_model
    classifier = load_classifier(manifest, folder / "weights.pt", "cpu")
    assert resolve_layer(classifier, "features.block2.conv1") is classifier.net.features.block2.conv1
    assert resolve_layer(classifier) is classifier.net.features.block2  # the architecture's default


def test_resolve_layer_error_lists_close_names_and_convolutions(saved_model):
    manifest, _, folder = saved_model
    classifier = load_classifier(manifest, folder / "weights.pt", "cpu")
    with pytest.raises(InvalidInput) as caught:
        resolve_layer(classifier, "features.blok2")
    assert caught.value.code == "unknown_layer"
    assert "features.block2" in caught.value.message
    assert "features.block2.conv1" in caught.value.message  # last convolutions


# ----------------------------------------------------------------------------- preprocessing


def grey_spec(size: int, channels: int = 1) -> InputSpec:
    return InputSpec(height=size, width=size, channels=channels)


def test_same_size_grey_image_is_passed_through_unchanged():
    image = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    tensor = to_model_input(image, grey_spec(8))
    assert tensor.shape == (1, 1, 8, 8) and tensor.dtype == torch.float32
    assert np.array_equal(tensor[0, 0].numpy(), image)


def test_upsampling_is_bilinear_with_pixel_centres():
    image = np.repeat(np.array([[0, 0, 1, 1]], dtype=np.float32), 4, axis=0)  # 4 x 4, dark left half
    tensor = to_model_input(image, grey_spec(8))
    # Output pixel centres fall at input columns -0.25, 0.25, ..., 3.25 (clamped at the border).
    np.testing.assert_allclose(tensor[0, 0, 0].numpy(), [0, 0, 0, 0.25, 0.75, 1, 1, 1])


def test_downsampling_is_antialiased():
    stripes = np.tile(np.array([0, 1], dtype=np.float32), (24, 12))  # 24 x 24 alternating columns
    tensor = to_model_input(stripes, grey_spec(8))
    # Plain bilinear would sample a few columns and keep much of the 0/1 contrast.
    assert float(tensor.min()) > 0.4 and float(tensor.max()) < 0.6


def test_rgb_to_grey_is_itu_601_luma_and_grey_to_rgb_repeats():
    rgb = np.zeros((8, 8, 3), dtype=np.float32)
    rgb[:, :4, 0] = 1  # red left half
    rgb[:, 4:, 1] = 1  # green right half
    grey = to_model_input(rgb, grey_spec(8))[0, 0]
    np.testing.assert_allclose(grey[0, [0, 7]].numpy(), [0.299, 0.587], rtol=1e-6)

    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    colour = to_model_input(image, grey_spec(8, channels=3))
    assert colour.shape == (1, 3, 8, 8)
    assert all(np.array_equal(colour[0, c].numpy(), image) for c in range(3))


def test_other_array_shapes_are_refused():
    with pytest.raises(InvalidInput) as caught:
        to_model_input(np.zeros((8, 8, 4), dtype=np.float32), grey_spec(8))
    assert caught.value.code == "invalid_image_shape"


def test_heatmap_goes_back_to_the_image_resolution():
    heatmap = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    back = heatmap_to_input_size(heatmap, (4, 4, 3))
    assert back.shape == (4, 4) and back.dtype == np.float32
    np.testing.assert_allclose(back[2], [0, 0.25, 0.75, 1])


def test_a_version_that_failed_validation_never_becomes_the_default(tmp_path):
    store = ModelStore(tmp_path / "models")
    first = store.register_directory(DEMO_DIR / "mnist-3v8")
    second = store.register(first.model_copy(update={"status": "pending"}), store.weights_path(first))
    assert store.get(first.id).version == first.version  # pending: not the default yet
    store.set_status(first.id, second.version, "invalid", "weights do not load")
    assert store.get(first.id).version == first.version
    store.set_status(first.id, second.version, "ready", None)
    assert store.get(first.id).version == second.version
    assert store.get(first.id, second.version).version == second.version


@pytest.mark.parametrize("model_id", ["../mnist-3v8", "/etc", "..", "a" * 65, "Mnist", "a/b", ""])
def test_model_ids_outside_the_alphabet_never_reach_the_filesystem(tmp_path, model_id):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ServiceError) as raised:
        store.get(model_id)
    assert raised.value.code == "unknown_model" and "model ids are" in raised.value.message
