"""Classifier architectures by name: the project's own (``NETWORKS``) and ``torchvision.<name>``.

A manifest names its architecture and arguments; ``build_network`` turns them into an untrained
``nn.Module`` whose state_dict the registered weights must fit. Each architecture knows the layer
CAM methods should look at by default (its last convolutional block).

Example:
    >>> net = build_network("small_cnn", {"widths": [16, 32]}, num_outputs=2)
    >>> default_target_layer(net)
    'features.block2'
"""

from __future__ import annotations

import inspect

from torch import nn

from models.networks.lenet import LeNet
from models.networks.small_cnn import SmallCNN
from models.networks.torchvision_models import (
    build_torchvision,
    classification_model_names,
    torchvision_target_layer,
)
from xai.errors import InvalidInput

__all__ = ["NETWORKS", "TORCHVISION_PREFIX", "architecture_names", "build_network", "default_target_layer"]

NETWORKS: dict[str, type[nn.Module]] = {"lenet": LeNet, "small_cnn": SmallCNN}
TORCHVISION_PREFIX = "torchvision."


def architecture_names() -> list[str]:
    """Every name ``build_network`` accepts (the project's own, then torchvision's)."""
    return list(NETWORKS) + [TORCHVISION_PREFIX + name for name in classification_model_names()]


def build_network(
    architecture: str, architecture_args: dict, num_outputs: int, *, in_channels: int = 1
) -> nn.Module:
    """Build an untrained network (no weights are ever downloaded).

    Args:
        architecture: A key of ``NETWORKS`` or ``torchvision.<name>`` (e.g. ``torchvision.resnet18``).
        architecture_args: Keyword arguments of the architecture (``widths`` for ``small_cnn``...).
        num_outputs: Number of output logits: the number of classes, or 1 for a sigmoid model.
        in_channels: Image channels the network takes. Default: 1.

    Returns:
        The network, in training mode, on the CPU.

    Raises:
        InvalidInput: ``unknown_architecture`` (the message lists valid names) or
            ``invalid_architecture_args`` (the message lists the accepted arguments).
    """
    if architecture in NETWORKS:
        network_class = NETWORKS[architecture]
        _check_arguments(architecture, network_class, architecture_args)
        return network_class(in_channels=in_channels, num_outputs=num_outputs, **architecture_args)
    if architecture.startswith(TORCHVISION_PREFIX):
        name = architecture.removeprefix(TORCHVISION_PREFIX)
        if name not in classification_model_names():
            raise InvalidInput(
                f"architecture {architecture!r} is not a torchvision classification model; valid: "
                f"{', '.join(TORCHVISION_PREFIX + n for n in classification_model_names())}",
                code="unknown_architecture",
            )
        try:
            return build_torchvision(name, architecture_args, num_outputs, in_channels)
        except TypeError as error:
            raise InvalidInput(
                f"architecture_args {architecture_args} do not fit {architecture}: {error}",
                code="invalid_architecture_args",
            ) from error
    raise InvalidInput(
        f"unknown architecture {architecture!r}; valid: {', '.join(NETWORKS)}, 'torchscript' "
        f"or '{TORCHVISION_PREFIX}<name>' with <name> one of {', '.join(classification_model_names())}",
        code="unknown_architecture",
    )


def default_target_layer(net: nn.Module) -> str | None:
    """The dotted name (relative to ``net``) CAM methods use when a manifest names none.

    The project's networks name their last convolutional block; torchvision CNNs their last
    convolutional stage; anything else (a vision transformer, a TorchScript file) gives None, and
    the manifest must then name ``target_layer`` itself.
    """
    own = getattr(net, "default_target_layer", None)
    if isinstance(own, str):
        return own
    if type(net).__module__.startswith("torchvision."):
        return torchvision_target_layer(net)
    return None


def _check_arguments(architecture: str, network_class: type[nn.Module], architecture_args: dict) -> None:
    parameters = inspect.signature(network_class).parameters
    accepted = [name for name in parameters if name not in ("in_channels", "num_outputs")]
    unknown = sorted(set(architecture_args) - set(accepted))
    if unknown:
        raise InvalidInput(
            f"architecture {architecture!r} does not take {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted)}",
            code="invalid_architecture_args",
        )
