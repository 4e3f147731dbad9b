"""LeNet-style classifier for small grey images (MNIST 28 x 28), the SyCE paper's digits classifier.

Every activation is its own ``nn.ReLU`` module, used once and never in place, because Captum's
guided backprop, deconvolution and DeepLift replace or hook activation modules and refuse reused ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class LeNet(nn.Module):
    """Two 5 x 5 convolutions with max pooling, then three fully connected layers (LeCun et al., 1998).

    The first convolution pads by 2, as LeNet-5 fed 32 x 32 images: a 28 x 28 input gives 10 x 10 maps
    after ``conv2``, which is where CAM methods look (``default_target_layer``). An adaptive pooling
    layer before the dense part lets other input sizes through unchanged in meaning.

    Args:
        in_channels: Image channels. Default: 1.
        num_outputs: Logits (1 for a sigmoid model). Default: 1.
        conv_channels: Widths of the two convolutions. Default: (6, 16), as LeNet-5.
        hidden: Widths of the two hidden dense layers. Default: (120, 84), as LeNet-5.

    Example:
        >>> LeNet(num_outputs=1)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1])
    """

    default_target_layer = "features.relu2"

    def __init__(
        self,
        in_channels: int = 1,
        num_outputs: int = 1,
        conv_channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
    ):
        super().__init__()
        c1, c2 = conv_channels
        h1, h2 = hidden
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, c1, kernel_size=5, padding=2),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(c1, c2, kernel_size=5),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(c2 * 25, h1),
                relu3=nn.ReLU(),
                fc2=nn.Linear(h1, h2),
                relu4=nn.ReLU(),
                fc3=nn.Linear(h2, num_outputs),
            )
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(images)))
