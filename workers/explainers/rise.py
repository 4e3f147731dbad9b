"""RISE: randomized input sampling for explanation (Petsiuk et al. 2018), batched in torch."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from workers.explainers._catalogue import CatalogueExplainer, rows_per_pass
from workers.explainers.base import Explanation, Progress


class Rise(CatalogueExplainer):
    """Saliency = sum over random masks M of P(target | image * M) * M / (n_masks * keep_probability).

    As in the paper, the score is the softmax probability of the target class, and masks are coarse random
    binary grids upsampled bilinearly and shifted by a random sub-cell offset. The masks depend only on
    ``seed`` and the image size, so every image of a batch sees the same masks and a heatmap does not depend
    on the batch. Params: ``n_masks``, ``grid``, ``keep_probability``, ``seed``, ``internal_batch_size``.
    Reference: arXiv:1806.07421.

    Example:
        >>> params = {"n_masks": 2000, "grid": 7, "keep_probability": 0.5, "seed": 0,
        ...           "internal_batch_size": 64}
        >>> heatmaps = Rise(model).explain(images, [1], params).heatmaps
    """

    name = "rise"

    def _explain_batch(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        masks = RandomMasks(
            params["n_masks"], params["grid"], params["keep_probability"], params["seed"], images.shape[-2:]
        )
        batch = images.shape[0]
        per_pass = rows_per_pass(params["internal_batch_size"], batch)
        image_index = torch.arange(batch, device=images.device)
        target_index = torch.tensor(targets, device=images.device)
        saliency = torch.zeros(batch, *images.shape[-2:], device=images.device)
        with torch.no_grad():
            for start in range(0, masks.count, per_pass):
                chunk = masks.upsampled(start, start + per_pass, images.device)
                masked = (images[:, None] * chunk[None, :, None].to(images.dtype)).flatten(0, 1)
                probabilities = self.model(masked).float().softmax(dim=1).view(batch, chunk.shape[0], -1)
                scores = probabilities[image_index, :, target_index]  # B x masks in this chunk
                saliency += torch.einsum("bk,khw->bhw", scores, chunk)
                done = min(start + per_pass, masks.count)
                progress(done / masks.count, f"{done}/{masks.count} masks")
        return Explanation(heatmaps=saliency / (masks.count * params["keep_probability"]))


class RandomMasks:
    """RISE's masks for images of ``size``, drawn once from a CPU generator seeded with ``seed``.

    Drawing the coarse grids and shifts on the CPU up front makes them identical on every device and for
    every chunking; upsampling happens chunk by chunk so that ``n_masks x H x W`` never sits in memory.
    """

    def __init__(self, count: int, grid: int, keep_probability: float, seed: int, size: tuple[int, int]):
        generator = torch.Generator().manual_seed(seed)
        self.count = count
        self.size = tuple(size)
        self.cell = tuple(math.ceil(side / grid) for side in self.size)
        self.upsampled_size = tuple((grid + 1) * cell for cell in self.cell)
        self.grids = (torch.rand(count, 1, grid, grid, generator=generator) < keep_probability).float()
        self.shifts = torch.stack(
            [torch.randint(0, cell, (count,), generator=generator) for cell in self.cell], dim=1
        )

    def upsampled(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Masks ``start`` to ``stop`` (clipped), ``k x H x W`` float32 in [0, 1] on ``device``."""
        smooth = F.interpolate(
            self.grids[start:stop].to(device), size=self.upsampled_size, mode="bilinear", align_corners=False
        )
        height, width = self.size
        return torch.stack(
            [
                smooth[i, 0, dy : dy + height, dx : dx + width]
                for i, (dy, dx) in enumerate(self.shifts[start:stop].tolist())
            ]
        )
