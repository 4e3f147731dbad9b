"""The torch half of the model registry: a manifest and a weights file become a ``Classifier``.

A ``Classifier`` is what every explainer and metric sees: it takes ``B x C x H x W`` images in [0, 1]
at the manifest's input size (normalisation is inside it) and returns ``B x K`` logits, one per
class, also for sigmoid models (one logit z is presented as ``[-z/2, z/2]``, whose softmax is exactly
``[1 - sigmoid(z), sigmoid(z)]``), so no explainer special-cases binary models.

Example:
    >>> classifier = load_classifier(manifest, store.weights_path(manifest), "cuda")
    >>> probabilities = classifier(images).softmax(dim=1)
    >>> layer = resolve_layer(classifier, "features.block4")
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path

import torch
from torch import nn

from models.manifest import InputSpec, ModelManifest
from models.networks import build_network, default_target_layer
from models.store import sha256_of
from xai.errors import InvalidInput, ServiceError

TORCHSCRIPT = "torchscript"


class Normalization(nn.Module):
    """``(x - mean) / std`` per channel, from an ``InputSpec`` (one value applies to every channel)."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        # Not persistent: the manifest is the source of these numbers, not a state_dict.
        self.register_buffer("mean", _per_channel(spec.mean, spec.channels), persistent=False)
        self.register_buffer("std", _per_channel(spec.std, spec.channels), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class Classifier(nn.Module):
    """A registered classifier: normalisation, the network, and sigmoid-to-two-logits presentation.

    Attributes:
        manifest: The ``ModelManifest`` it was loaded from.
        net: The wrapped network (an ``nn.Module`` or a TorchScript module); layer names for CAM
            methods are relative to it.
        target_layer_name: The manifest's ``target_layer``, else the architecture's default, else None.
    """

    def __init__(self, net: nn.Module, manifest: ModelManifest):
        super().__init__()
        self.manifest = manifest
        self.normalization = Normalization(manifest.input)
        self.net = net
        self.target_layer_name = manifest.target_layer or default_target_layer(net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.normalization(images)).reshape(images.shape[0], -1)
        if self.manifest.output == "sigmoid":
            half = logits[:, :1] / 2
            return torch.cat([-half, half], dim=1)
        return logits


def load_classifier(manifest: ModelManifest, weights_path: Path, device: torch.device | str) -> Classifier:
    """Load a registered classifier onto ``device``, in eval mode.

    Parameters keep ``requires_grad=True``: explainers need gradients with respect to the input
    only, but freezing here would silently change a module the caller may also train (GAD
    fine-tunes copies of it); run plain predictions under ``torch.inference_mode()`` instead.

    Args:
        manifest: The model's manifest; ``architecture`` is a network name or ``"torchscript"``.
        weights_path: A state_dict saved with ``torch.save`` (loaded with ``weights_only=True``, so
            no code in it runs) or, for ``"torchscript"``, a ``torch.jit.save`` file.
        device: Where the model runs ("cpu", "cuda", "cuda:1", or a ``torch.device``).

    Returns:
        The ``Classifier``.

    Raises:
        ServiceError: ``weights_checksum_mismatch`` when ``manifest.weights_sha256`` is set and the
            file's digest differs (a corrupted or replaced file).
        InvalidInput: ``weights_unreadable`` for a file torch cannot read as the architecture says;
            ``weights_do_not_match_architecture`` for a state_dict that does not fit the network;
            the codes of ``models.networks.build_network`` for an unknown architecture.
    """
    _verify_checksum(manifest, weights_path)
    device = torch.device(device)
    if manifest.architecture == TORCHSCRIPT:
        net = _load_torchscript(weights_path, device)
    else:
        net = build_network(
            manifest.architecture,
            manifest.architecture_args,
            _num_outputs(manifest),
            in_channels=manifest.input.channels,
        )
        _load_state_dict(net, _read_state_dict(weights_path), manifest.architecture)
    return Classifier(net, manifest).to(device).eval()


def validate_registration(manifest: ModelManifest, weights_path: Path) -> None:
    """Check that a model about to be registered loads and gives the logits its manifest promises.

    Builds and loads on the CPU, checks that the manifest's ``target_layer`` exists, then runs one
    forward pass on a black image of the manifest's input size; the raw network must give
    ``len(class_names)`` logits (1 for a sigmoid model), all finite.

    Raises:
        InvalidInput: ``unknown_layer`` for a ``target_layer`` the network does not have,
            ``model_forward_failed`` when the network cannot run on the declared input size,
            ``wrong_number_of_outputs`` when its output has another width, ``non_finite_output``
            for NaN/inf logits; and everything ``load_classifier`` raises.
    """
    classifier = load_classifier(manifest, weights_path, "cpu")
    if manifest.target_layer is not None:
        resolve_layer(classifier, manifest.target_layer)
    spec = manifest.input
    black = torch.zeros(1, spec.channels, spec.height, spec.width)
    try:
        with torch.inference_mode():
            raw = classifier.net(classifier.normalization(black))
    except RuntimeError as error:
        raise InvalidInput(
            f"the model failed on a {spec.channels} x {spec.height} x {spec.width} input (the manifest's "
            f"input size): {error}",
            code="model_forward_failed",
        ) from error
    expected = _num_outputs(manifest)
    if raw.numel() != expected:
        raise InvalidInput(
            f"the model gives {raw.numel()} outputs per image (shape {tuple(raw.shape)}) but its manifest "
            f"needs {expected}: output={manifest.output!r} with {len(manifest.class_names)} class_names",
            code="wrong_number_of_outputs",
        )
    if not torch.isfinite(raw).all():
        raise InvalidInput("the model gives non-finite logits on a black image", code="non_finite_output")


def resolve_layer(classifier: Classifier, dotted: str | None = None) -> nn.Module:
    """The sub-module of ``classifier.net`` named ``dotted`` (as ``named_modules()`` names it).

    Args:
        classifier: A loaded classifier.
        dotted: e.g. ``"features.block4"`` or ``"layer4.1.conv2"``. Default: ``classifier.target_layer_name``.

    Raises:
        InvalidInput: ``unknown_layer`` with the closest valid names and the last convolutions, or
            when no name is given and the model has no default target layer.
    """
    modules = dict(classifier.net.named_modules())
    convolutions = [name for name, module in modules.items() if _is_convolution(module)]
    name = dotted if dotted is not None else classifier.target_layer_name
    if name is None:
        raise InvalidInput(
            f"model {classifier.manifest.id!r} names no target_layer; pass one, e.g. one of its last "
            f"convolutions: {', '.join(convolutions[-3:]) or 'none'}",
            code="unknown_layer",
        )
    if name and name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
    raise InvalidInput(
        f"model {classifier.manifest.id!r} has no layer {name!r}; closest names: "
        f"{', '.join(close) or 'none'}; last convolutions: {', '.join(convolutions[-3:]) or 'none'}",
        code="unknown_layer",
    )


def _num_outputs(manifest: ModelManifest) -> int:
    return 1 if manifest.output == "sigmoid" else len(manifest.class_names)


def _per_channel(values: list[float], channels: int) -> torch.Tensor:
    per_channel = values * channels if len(values) == 1 else values
    return torch.tensor(per_channel, dtype=torch.float32).reshape(1, -1, 1, 1)


def _verify_checksum(manifest: ModelManifest, weights_path: Path) -> None:
    if manifest.weights_sha256 and sha256_of(weights_path) != manifest.weights_sha256.lower():
        raise ServiceError(
            f"the weights file of model {manifest.key} does not have the sha256 its manifest records; "
            "it was corrupted or replaced: register the model again",
            code="weights_checksum_mismatch",
        )


def _load_torchscript(weights_path: Path, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(str(weights_path), map_location=device)
    except RuntimeError as error:
        raise InvalidInput(
            f"architecture is 'torchscript' but the weights file is not a TorchScript file "
            f"(save one with torch.jit.save): {error}",
            code="weights_unreadable",
        ) from error


def _read_state_dict(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise InvalidInput(
            "the weights file is not a state_dict torch can load safely (save one with "
            f"torch.save(model.state_dict(), path), or register a TorchScript file): {error}",
            code="weights_unreadable",
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInput(
            "the weights file holds a dict that is not a state_dict of tensors (a training checkpoint?); "
            "save model.state_dict() itself",
            code="weights_unreadable",
        )
    return state


def _load_state_dict(net: nn.Module, state: dict[str, torch.Tensor], architecture: str) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same keys, different tensor shapes
        raise InvalidInput(
            f"the weights do not fit architecture {architecture!r} with these architecture_args: {error}",
            code="weights_do_not_match_architecture",
        ) from error
    if result.missing_keys or result.unexpected_keys:
        raise InvalidInput(
            f"the weights do not fit architecture {architecture!r}: missing keys "
            f"{result.missing_keys[:5]} ({len(result.missing_keys)} in all), unexpected keys "
            f"{result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)",
            code="weights_do_not_match_architecture",
        )


def _is_convolution(module: nn.Module) -> bool:
    # TorchScript modules are not instances of nn.Conv2d but keep the original class name.
    return isinstance(module, nn.Conv2d) or getattr(module, "original_name", "") == "Conv2d"
