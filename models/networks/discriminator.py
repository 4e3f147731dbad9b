"""The domain discriminator of SyCE and CyCE: real images of one decision side vs generated ones.

As the SyCE paper describes it (suppl. 0.E.1): convolutional downsampling blocks, each a 3 x 3
convolution with stride 2 and LeakyReLU, no normalisation (a gradient penalty is applied to it,
which batch norm would break), then a dense layer to one logit. The reference code
(``src/interpreters/discriminator.py``) puts a stride-1 convolution before each strided one; we
leave it out: at 128 x 128 it made the discriminator costlier than the generator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Discriminator(nn.Module):
    """``B x C x H x W`` images in [0, 1] to ``B`` logits (high = looks like a real image of its side).

    Args:
        channels: Image channels.
        height: Image height (the dense layer's size depends on it).
        width: Image width.
        widths: Feature width of each downsampling block; one stride-2 block per entry.

    Example:
        >>> Discriminator(1, 28, 28, widths=(32, 64))(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5])
    """

    def __init__(
        self, channels: int, height: int, width: int, widths: tuple[int, ...] | list[int] = (32, 64, 96)
    ):
        super().__init__()
        self.channels, self.height, self.width = channels, height, width
        self.widths = [int(w) for w in widths]
        layers: list[nn.Module] = []
        in_width, rows, cols = channels, height, width
        for out_width in self.widths:
            layers += [nn.Conv2d(in_width, out_width, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            in_width, rows, cols = out_width, (rows + 1) // 2, (cols + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_width * rows * cols, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1)).squeeze(1)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-safe."""
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "widths": list(self.widths),
        }


def discriminator_widths_for_size(height: int, width: int) -> list[int]:
    """Two downsampling blocks for digit-sized images (<= 32 px), three above, as in the paper."""
    return [32, 64] if min(height, width) <= 32 else [32, 64, 96]
