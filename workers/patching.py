"""Patch-based execution for images larger than the model input: tile, explain every tile, blend the overlaps.

TorchEsegeta does this for large volumes with TorchIO's GridSampler and an averaging GridAggregator. Here each
tile's heatmap is weighted by a window that ramps up linearly across the overlap, so tile borders (where
convolutions see padding) count less and seams do not show. Each tile is explained at the model input size
for the same target class. Methods that scale each map to [0, 1] (Grad-CAM++, Score-CAM) are scaled per tile,
so tiles without evidence are stretched too: prefer unscaled methods in patch mode.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.explainers._catalogue import sub_progress
from workers.explainers.base import Explainer, Progress, no_progress
from xai.errors import InvalidInput

MAX_OVERLAP = 0.9


def explain_in_patches(
    explainer: Explainer,
    image: torch.Tensor,
    target: int,
    params: dict[str, Any],
    patch_size: int | tuple[int, int],
    overlap: float,
    progress: Progress = no_progress,
    *,
    tiles_per_call: int = 8,
) -> torch.Tensor:
    """Explain a large image tile by tile and blend the tiles' heatmaps into one.

    Args:
        explainer: Any explainer; it sees batches of tiles of ``patch_size``.
        image: ``1 x C x H x W`` in [0, 1], at least ``patch_size`` in each dimension.
        target: The class explained in every tile.
        params: The method's validated parameters.
        patch_size: The model input size ``(height, width)``, or one int for a square.
        overlap: Fraction of a tile shared with its neighbour, in [0, 0.9]. The last tile of each row and
            column is moved flush with the image edge, so it may overlap more.
        progress: Called with the fraction of tiles done; ``JobCancelled`` propagates.
        tiles_per_call: Tiles explained together in one batch.

    Returns:
        The ``H x W`` float32 heatmap, on the image's device.

    Raises:
        InvalidInput: ``invalid_params`` for an overlap outside [0, 0.9]; ``image_smaller_than_patch`` when
            the image is smaller than a tile in some dimension.

    Example:
        >>> heatmap = explain_in_patches(Saliency(model), big_image, 1, {"abs": True}, 224, 0.25)
    """
    if not 0 <= overlap <= MAX_OVERLAP:
        raise InvalidInput(f"patch overlap {overlap} is outside [0, {MAX_OVERLAP}]", code="invalid_params")
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    size = tuple(image.shape[-2:])
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one 1 x C x H x W image, got {tuple(image.shape)}")
    if size[0] < patch[0] or size[1] < patch[1]:
        raise InvalidInput(
            f"patch mode needs an image at least as large as the model input {patch[0]} x {patch[1]}; this "
            f"one is {size[0]} x {size[1]}: explain it without patch mode",
            code="image_smaller_than_patch",
        )
    corners = [
        (top, left)
        for top in tile_starts(size[0], patch[0], overlap)
        for left in tile_starts(size[1], patch[1], overlap)
    ]
    window = blend_window(patch, overlap, image.device)
    weighted = torch.zeros(size, device=image.device)
    weights = torch.zeros(size, device=image.device)
    for start in range(0, len(corners), tiles_per_call):
        batch = corners[start : start + tiles_per_call]
        tiles = torch.cat([image[..., top : top + patch[0], left : left + patch[1]] for top, left in batch])
        report = sub_progress(progress, start / len(corners), (start + len(batch)) / len(corners))
        heatmaps = explainer.explain(tiles, [target] * len(batch), params, report).heatmaps
        for (top, left), heatmap in zip(batch, heatmaps, strict=True):
            weighted[top : top + patch[0], left : left + patch[1]] += heatmap.to(weighted.device) * window
            weights[top : top + patch[0], left : left + patch[1]] += window
    return weighted / weights


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Offsets of tiles of length ``patch`` covering ``size`` with about ``overlap`` of each tile shared."""
    stride = max(1, patch - round(overlap * patch))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # the last tile sits flush with the edge
    return starts


def blend_window(patch: tuple[int, int], overlap: float, device: torch.device) -> torch.Tensor:
    """Tile weights: 1 in the middle, ramping linearly down to ``1 / (ramp + 1)`` across the overlap.

    Every weight is positive, so pixels covered by a single tile (the image border) keep that tile's value.
    """
    ramps = [_ramp(side, round(overlap * side), device) for side in patch]
    return ramps[0][:, None] * ramps[1][None, :]


def _ramp(length: int, ramp: int, device: torch.device) -> torch.Tensor:
    ramp = min(ramp, length // 2)
    position = torch.arange(length, device=device, dtype=torch.float32)
    distance_to_edge = torch.minimum(position, length - 1 - position)
    return ((distance_to_edge + 1) / (ramp + 1)).clamp(max=1.0)
