"""A small convolutional classifier for grey medical images of about 128 x 128 (ultrasound, chest X-ray).

Small enough to train on a CPU in minutes and to ship in the repository (well under 1 MB of weights),
deep enough to reach the whole image through global average pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """``convs`` times (3 x 3 convolution, batch norm, ReLU); each ReLU a separate module for Captum."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for index in range(1, convs + 1):
        channels_in = in_channels if index == 1 else out_channels
        # No bias: the batch norm right after has its own shift.
        layers[f"conv{index}"] = nn.Conv2d(channels_in, out_channels, kernel_size=3, padding=1, bias=False)
        layers[f"bn{index}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{index}"] = nn.ReLU()
    return nn.Sequential(layers)


class SmallCNN(nn.Module):
    """Convolution blocks with 2 x 2 max pooling between them, global average pooling and one linear layer.

    With the default four blocks a 128 x 128 input reaches the last block at 16 x 16, the resolution
    of a Grad-CAM map on ``default_target_layer`` (the last block's output, after its ReLU).

    Args:
        in_channels: Image channels. Default: 1.
        num_outputs: Logits (1 for a sigmoid model). Default: 1.
        widths: Output channels of each block. Default: (16, 32, 64, 128).
        convs_per_block: Convolutions in each block. Default: 1.
        dropout: Dropout before the linear layer. Default: 0.2.

    Example:
        >>> SmallCNN(num_outputs=2)(torch.zeros(2, 1, 128, 128)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_outputs: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        convs_per_block: int = 1,
        dropout: float = 0.2,
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for index, width in enumerate(widths, start=1):
            if index > 1:
                layers[f"pool{index - 1}"] = nn.MaxPool2d(2)
            layers[f"block{index}"] = conv_block(channels, width, convs_per_block)
            channels = width
        self.features = nn.Sequential(layers)
        self.default_target_layer = f"features.block{len(widths)}"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                dropout=nn.Dropout(dropout),
                fc=nn.Linear(channels, num_outputs),
            )
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)))
