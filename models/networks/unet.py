"""The conditional U-Net generator of SyCE and CyCE (one per side of the classifier's decision).

Follows the generator of the SyCE paper (suppl. 0.E.1) and of its reference code
(``martinCharachon/cGANsExplainer``, ``src/interpreters/unet_generator.py``): an encoder of
pre-activation convolution blocks (normalisation, ReLU, convolution) with a residual block per
level and max-pooling between levels, a decoder that upsamples, concatenates the encoder's skip
connection and applies convolution blocks, and a 1 x 1 output convolution whose values are clipped
to [0, 1] so the output can be fed to the classifier. Two downsampling steps for digits, three for
larger images.

Two changes. Group normalisation instead of batch normalisation: in one training step a generator
sees real images (G(x)) and generated ones (G(G(x)), G'(G(x))), so running batch statistics match
neither at inference; on MNIST 3 vs 8, adversarial images flipped 85% of the time in training mode
and 74% in eval mode with batch norm. Group norm is computed per image, so training and inference
agree and a batch's outputs equal the per-image outputs. And ``residual_output``: the network
predicts a change that is added to its input before the clip, with that last convolution
initialised to zero, so the generator starts as the exact identity (what the symmetry and cycle
terms ask of it) and the short training budgets we can afford go to learning the counterfactual
change.

Not in the paper, off by default: ``warp_grid``. The network's output is then a displacement field
of the image, its mean over a ``warp_grid x warp_grid`` grid of cells smoothly interpolated back to
the image's size, by which the input is resampled: the generator can move, stretch and shrink what
the image shows (a heart border, a lesion's outline) but not paint anything onto it. On a classifier
that a faint pattern flips, an additive generator learns such a pattern; a warp has to move anatomy.

Also not in the paper, off by default: ``change_grid``. The generator stays additive, but its change
is the mean over a ``change_grid x change_grid`` grid of cells, smoothly interpolated back: it can
brighten, darken, fill or hollow a region as large as a cell, not paint dots, streaks or stripes
finer than that. A warp cannot change a region's brightness (a lesion's echo, the shadow behind it);
this can.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (up to 8 groups): per image, so training and inference agree (module doc)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def conv_block(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """Normalisation, ReLU, 3 x 3 convolution (the paper's order), then dropout when asked for."""
    layers: list[nn.Module] = [
        norm(in_channels),
        nn.ReLU(inplace=False),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``convs`` convolution blocks whose output is added to their input (same width in and out)."""

    def __init__(self, width: int, convs: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(*[conv_block(width, width, dropout) for _ in range(convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EncoderLevel(nn.Module):
    """Optional 2 x 2 max-pool, a convolution to this level's width, then a residual block."""

    def __init__(self, in_width: int, width: int, convs: int, dropout: float, downsample: bool):
        super().__init__()
        self.downsample = downsample
        # The first level sees the raw image: a plain convolution, no batch norm/ReLU on pixels.
        self.entry = (
            conv_block(in_width, width, dropout) if downsample else nn.Conv2d(in_width, width, 3, padding=1)
        )
        self.residual = ResidualBlock(width, convs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            # ceil_mode keeps odd sizes (28 -> 14 -> 7 -> 4) from losing their last row.
            x = F.max_pool2d(x, 2, ceil_mode=True)
        return self.residual(self.entry(x))


class DecoderLevel(nn.Module):
    """Upsample to the skip connection's size, concatenate it, apply ``convs`` convolution blocks."""

    def __init__(self, in_width: int, skip_width: int, width: int, convs: int, dropout: float):
        super().__init__()
        widths = [in_width + skip_width] + [width] * convs
        self.body = nn.Sequential(*[conv_block(a, b, dropout) for a, b in itertools.pairwise(widths)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.body(torch.cat([skip, x], dim=1))


class UNetGenerator(nn.Module):
    """Image-to-image U-Net: ``B x C x H x W`` in [0, 1] to the same shape in [0, 1].

    Args:
        channels: Image channels in and out (1 grey, 3 RGB).
        widths: Feature widths per level, shallowest first; ``len(widths) - 1`` downsampling steps.
        convs_per_level: Convolution blocks in each residual block and each decoder level.
        dropout: Channel dropout after each convolution block (0 disables it).
        residual_output: Add the network's output to its input before the clip (see module doc).
        warp_grid: When above 0, the output is a smooth displacement field on this many cells a side,
            by which the input is resampled, in place of an additive change (see module doc).
        change_grid: When above 0, the additive change is smooth on this many cells a side (see
            module doc); needs ``residual_output`` and excludes ``warp_grid``.

    Example:
        >>> generator = UNetGenerator(channels=1, widths=(16, 32, 64))
        >>> generator(torch.rand(4, 1, 28, 28)).shape
        torch.Size([4, 1, 28, 28])
    """

    def __init__(
        self,
        channels: int = 1,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        convs_per_level: int = 2,
        dropout: float = 0.0,
        residual_output: bool = True,
        warp_grid: int = 0,
        change_grid: int = 0,
    ):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least two levels, got widths={list(widths)}")
        if change_grid and (warp_grid or not residual_output):
            raise ValueError("change_grid smooths an additive change: it needs residual_output and no warp_grid")
        self.channels = channels
        self.widths = [int(w) for w in widths]
        self.convs_per_level = convs_per_level
        self.dropout = dropout
        self.residual_output = residual_output
        self.warp_grid = int(warp_grid)
        self.change_grid = int(change_grid)
        in_widths = [channels] + self.widths[:-1]
        self.encoder = nn.ModuleList(
            EncoderLevel(a, b, convs_per_level, dropout, downsample=level > 0)
            for level, (a, b) in enumerate(zip(in_widths, self.widths))
        )
        self.decoder = nn.ModuleList(
            DecoderLevel(
                self.widths[level + 1], self.widths[level], self.widths[level], convs_per_level, dropout
            )
            for level in reversed(range(len(self.widths) - 1))
        )
        outputs = 2 if self.warp_grid else channels  # a displacement (x, y) per pixel, or a change per channel
        self.head = nn.Sequential(
            norm(self.widths[0]), nn.ReLU(), nn.Conv2d(self.widths[0], outputs, kernel_size=1)
        )
        if residual_output or self.warp_grid:
            # Start as the exact identity: the cycle and symmetry terms are met from the first step
            # and the adversarial term alone decides where the image starts to change.
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.warp_grid:
            return resample(images, self.displacement(images))
        out = self._network(images)
        if self.change_grid:
            out = smooth_field(out, self.change_grid)
        if self.residual_output:
            out = images + out
        return out.clamp(0.0, 1.0)

    def displacement(self, images: torch.Tensor) -> torch.Tensor:
        """A warp generator's smooth field (``B x 2 x H x W``, ``grid_sample`` units) for ``images``:
        ``forward`` is ``resample(images, displacement(images))``. Training reads it to penalise folds."""
        if not self.warp_grid:
            raise ValueError("only a warp generator (warp_grid > 0) has a displacement field")
        return smooth_field(self._network(images), self.warp_grid)

    def _network(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        x = images
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        for level, skip in zip(self.decoder, reversed(skips[:-1])):
            x = level(x, skip)
        return self.head(x)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-safe: ``UNetGenerator(**generator.config)`` rebuilds it."""
        return {
            "channels": self.channels,
            "widths": list(self.widths),
            "convs_per_level": self.convs_per_level,
            "dropout": self.dropout,
            "residual_output": self.residual_output,
            "warp_grid": self.warp_grid,
            "change_grid": self.change_grid,
        }


def smooth_field(field: torch.Tensor, cells: int) -> torch.Tensor:
    """``field`` (``B x C x H x W``: a displacement, x then y in the ``[-1, 1]`` units of ``grid_sample``, or
    an additive change) averaged over ``cells x cells`` cells and interpolated back to its size
    (bicubic), so that it is smooth."""
    height, width = field.shape[-2:]
    coarse = F.adaptive_avg_pool2d(field, (min(cells, height), min(cells, width)))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)


def resample(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """``images`` read at each pixel's own place plus ``field`` (bilinear, edges repeated), in [0, 1]: a
    zero field gives back the images (to float rounding)."""
    eye = torch.eye(2, 3, device=images.device, dtype=images.dtype).expand(len(images), 2, 3)
    grid = F.affine_grid(eye, list(images.shape), align_corners=False) + field.permute(0, 2, 3, 1).to(images.dtype)
    resampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resampled.clamp(0.0, 1.0)


def jacobian_determinant(field: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of the mapping ``p -> p + field(p)`` that ``resample`` reads through,
    by forward differences between neighbouring pixels: ``B x (H - 1) x (W - 1)``.

    1 for the identity and any translation. It is the source area one output pixel reads: above 1
    where the output shrinks what the image shows, below 1 where it enlarges it, 0 where one source
    point is smeared over several pixels, negative where the mapping folds (neighbouring pixels read
    the source in reversed order, which mirrors tissue into waves). The units cancel:
    ``grid_sample``'s x and y scales divide out of the determinant, so it is the same in pixels.
    """
    height, width = field.shape[-2:]
    # Pixel steps in grid_sample units (align_corners=False): 2 / W along x, 2 / H along y.
    dx = (field[..., :-1, 1:] - field[..., :-1, :-1]) * (width / 2)
    dy = (field[..., 1:, :-1] - field[..., :-1, :-1]) * (height / 2)
    return (1 + dx[:, 0]) * (1 + dy[:, 1]) - dy[:, 0] * dx[:, 1]


def widths_for_size(height: int, width: int, base_width: int = 16) -> list[int]:
    """The paper's depth: two downsampling steps for digit-sized images (<= 32 px), three above.

    Widths double per level, capped at 4 x base so a generator stays a few MB.
    """
    levels = 3 if min(height, width) <= 32 else 4
    return [base_width * min(2**level, 4) for level in range(levels)]
