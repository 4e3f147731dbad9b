"""torchvision classification architectures by name, built without weights, for any channel count.

Nothing here downloads: ``weights=None`` always, and a registered model brings its own state_dict.
"""

from __future__ import annotations

import torchvision
from torch import nn

# Containers whose output is the last convolutional stage, in the order they are looked for. This is
# where pytorch-grad-cam's README points for these families: ResNet/ResNeXt/Wide-ResNet ``layer4``;
# VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt, AlexNet ``features[-1]``; MNASNet ``layers[-1]``.
_LAST_STAGE_CONTAINERS = ("layer4", "features", "layers")


def classification_model_names() -> list[str]:
    """Names accepted after ``torchvision.`` (torchvision's classification models)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(name: str, architecture_args: dict, num_outputs: int, in_channels: int) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **architecture_args)``.

    torchvision models take 3 channels; for another count the first convolution is replaced by one
    with ``in_channels`` inputs and otherwise the same settings (its weights then come from the
    registered state_dict like every other weight).
    """
    net = torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **architecture_args)
    if in_channels != 3:
        _replace_first_conv(net, in_channels)
    return net


def torchvision_target_layer(net: nn.Module) -> str | None:
    """The last convolutional stage of a torchvision CNN, or None (e.g. vision transformers)."""
    children = dict(net.named_children())
    for container in _LAST_STAGE_CONTAINERS:
        module = children.get(container)
        if module is None:
            continue
        if isinstance(module, nn.Sequential) and container != "layer4":
            return f"{container}.{list(module.named_children())[-1][0]}"
        return container
    return None


def _replace_first_conv(net: nn.Module, in_channels: int) -> None:
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent_name, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent_name), attribute, replacement)
