"""Small real networks for the explainer tests: random CNNs, a linear model, and a CNN built by hand whose
class-0 logit depends only on the bright pixels of an image (a bright square on a dark background)."""

from __future__ import annotations

import torch
from torch import nn

SQUARE = (
    slice(8, 16),
    slice(16, 24),
)  # rows 8-15, columns 16-23 of a 32 x 32 image: aligned to 4- and 8-pixel grids


def tiny_cnn(channels: int, classes: int = 3) -> nn.Sequential:
    """Conv-BN-ReLU(in-place) x 2, global average pooling, linear; BatchNorm statistics made non-trivial."""
    model = nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, classes),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model


def linear_model(channels: int, height: int, width: int, classes: int = 2) -> nn.Sequential:
    """Logits = W x + b on the flattened image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, classes))


def square_detector(channels: int) -> nn.Sequential:
    """A CNN whose class-0 logit is proportional to the mean over pixels of relu(channel mean - 0.5).

    On an image that is dark (< 0.5) everywhere but a square, the decision depends on the square only.
    Layers: conv 3x3 (centre tap only) - BN (identity statistics) - ReLU(in-place) - avg pool 2 - conv 1x1
    (identity) - ReLU(in-place) - global average pool - linear. Index 4 (conv 1x1) is the CAM target layer.
    """
    scales = torch.tensor([1.0, 0.5, 2.0, 1.5])
    first = nn.Conv2d(channels, 4, 3, padding=1)
    second = nn.Conv2d(4, 4, 1)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:, :, 1, 1] = scales[:, None] / channels
        first.bias.copy_(-0.5 * scales)
        second.weight.copy_(torch.eye(4)[:, :, None, None])
        second.bias.zero_()
        # Class 0 scores the bright area, class 1 is a constant threshold: P(class 0) goes from ~0.05 with
        # the square hidden to ~0.95 with all of it, a swing wide enough for sampling methods (RISE).
        head.weight.copy_(torch.stack([torch.full((4,), 64.0), torch.zeros(4)]))
        head.bias.copy_(torch.tensor([0.0, 3.0]))
    return nn.Sequential(
        first,
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        second,
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        head,
    )


def square_image(
    channels: int, height: int = 32, width: int = 32, square: tuple[slice, slice] = SQUARE
) -> torch.Tensor:
    """``1 x C x H x W``: dark noise in [0, 0.4] with a bright noisy square in [0.6, 1.0]."""
    image = torch.rand(1, channels, height, width) * 0.4
    image[..., square[0], square[1]] = 0.6 + 0.4 * torch.rand(
        1, channels, square[0].stop - square[0].start, square[1].stop - square[1].start
    )
    return image


def square_mask(height: int = 32, width: int = 32, square: tuple[slice, slice] = SQUARE) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[square] = True
    return mask
