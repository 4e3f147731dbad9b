"""The figures every explanation job reports: prediction, faithfulness, complexity and localisation.

Each function returns a JSON-safe dict that states the settings it used next to its numbers, because
published values of these metrics are not comparable unless baseline, steps, score function and
integration rule travel with them (../shared/notes/reference-implementations.md, section C4).

- ``prediction``: the class the model predicts and its softmax probability.
- ``deletion_insertion``: causal deletion and insertion curves and their areas (Petsiuk et al., RISE, 2018).
- ``complexity``: area of the convex hull of the most important half of the pixels (GAD, section 5).
- ``localization``: IoU of the heatmap thresholded at the 85/90/95/98th percentiles with a ground-truth
  mask, and normalised cross-correlation (SyCE/CyCE, supplementary 0.F.2).

Example:
    >>> figures = deletion_insertion(model, image, heatmap, target=1, steps=50)
    >>> figures["deletion_auc"], figures["settings"]["baseline"]
    (0.21, 'blur')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import ConvexHull
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from models.guard import model_left_as_found
from xai.errors import ErrorCode, InvalidInput

Substrate = Literal["blur", "zero", "mean"]
ScoreFunction = Literal["softmax", "logit"]

SUBSTRATES = ("blur", "zero", "mean")
SCORE_FUNCTIONS = ("softmax", "logit")
# RISE's insertion substrate (eclique/RISE, Evaluation.ipynb: gkern(klen=11, nsig=5)).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
IOU_PERCENTILES = (85, 90, 95, 98)


class EmptyAnnotation(InvalidInput, ValueError):
    """The ground-truth mask has no foreground pixel, so IoU and NCC are undefined."""

    code = ErrorCode.EMPTY_ANNOTATION


def prediction(model: nn.Module, image: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """The predicted class of one image and the softmax probability of every class.

    Args:
        model: a classifier taking ``B x C x H x W`` images in [0, 1] and returning ``B x K`` logits.
        image: ``1 x C x H x W`` on the model's device.
        class_names: the K class names, in logit order.

    Returns:
        ``{"class": int, "class_name": str, "score": float, "probabilities": {name: float}}``;
        ties in the arg-max go to the lowest class index.

    Raises:
        ValueError: the image is not ``1 x C x H x W`` or the model's output does not have one logit
            per class name.
    """
    _check_single_image(image)
    return predictions(model, image, class_names)[0]


def predictions(model: nn.Module, images: torch.Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``prediction`` of each image of a ``B x C x H x W`` batch, in one forward pass."""
    with model_left_as_found(model), torch.inference_mode():
        logits = model(images)
    if logits.shape != (images.shape[0], len(class_names)):
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)}, expected ({images.shape[0]}, {len(class_names)})"
        )
    return [_prediction_of(row.float().softmax(dim=0).cpu(), class_names) for row in logits]


def _prediction_of(probabilities: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    predicted = int(probabilities.argmax())
    return {
        "class": predicted,
        "class_name": class_names[predicted],
        "score": float(probabilities[predicted]),
        "probabilities": {name: float(p) for name, p in zip(class_names, probabilities, strict=True)},
    }


def deletion_insertion(
    model: nn.Module,
    image: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    *,
    steps: int = 50,
    deletion_baseline: Substrate = "blur",
    insertion_start: Substrate = "blur",
    score: ScoreFunction = "softmax",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Deletion and insertion curves of a heatmap and the areas under them (Petsiuk et al., 2018).

    Pixels are ranked by descending heatmap value (ties in raster order, so the result is
    deterministic). Deletion starts from the image and replaces the top-ranked pixels, all channels,
    by the baseline; insertion starts from the substrate and puts the original pixels back in the same
    order. After step k of ``steps``, ``round(k * H * W / steps)`` pixels have been changed. The curve
    is the target's score at each of the ``steps + 1`` states, and its area is the trapezoid rule over
    the fraction of pixels changed, from 0 to 1, endpoints included.

    Args:
        model: a classifier taking ``B x C x H x W`` images in [0, 1] and returning ``B x K`` logits.
        image: ``1 x C x H x W`` in [0, 1], on the model's device.
        heatmap: ``H x W``, high = important.
        target: the class whose score is followed.
        steps: number of perturbation steps (default 50, i.e. 2% of the pixels per step); capped at
            ``H * W``.
        deletion_baseline: what deleted pixels become: ``"blur"`` (default; Gaussian blur of the image,
            kernel 11, sigma 5, as RISE's insertion substrate), ``"zero"`` (black) or ``"mean"`` (the
            image's per-channel mean).
        insertion_start: the image insertion starts from, same choices (default ``"blur"``).
        score: ``"softmax"`` (default; probability of ``target``, as RISE and iGOS) or ``"logit"``.
        batch_size: perturbed images per forward pass (default 32).

    Returns:
        ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better), ``fractions`` and the
        two curves as lists, and ``settings`` stating every choice above.

    Raises:
        ValueError: shapes do not match, the heatmap is not finite, or an option is unknown.
    """
    _check_single_image(image)
    return deletion_insertion_batch(
        model, image, torch.as_tensor(heatmap)[None], [target], steps=steps, deletion_baseline=deletion_baseline,
        insertion_start=insertion_start, score=score, batch_size=batch_size,
    )[0]


def deletion_insertion_batch(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: Sequence[int],
    *,
    steps: int = 50,
    deletion_baseline: Substrate = "blur",
    insertion_start: Substrate = "blur",
    score: ScoreFunction = "softmax",
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """``deletion_insertion`` of each image of a ``B x C x H x W`` batch with its ``H x W`` heatmap.

    The perturbed states of all images share forward passes of ``batch_size``, so B small jobs cost
    about as many passes as their states fill, not B times a partly filled last pass each.
    """
    heatmaps = torch.as_tensor(heatmaps).to(images.device)
    if images.ndim != 4 or heatmaps.shape[0] != images.shape[0] or len(targets) != images.shape[0]:
        raise ValueError(f"expected B images, B heatmaps and B targets, got {tuple(images.shape)}, "
                         f"{tuple(heatmaps.shape)} and {len(targets)}")
    for heatmap in heatmaps:
        _check_heatmap(heatmap, tuple(images.shape[-2:]))
    _check_choice("score", score, SCORE_FUNCTIONS)
    _check_choice("deletion_baseline", deletion_baseline, SUBSTRATES)
    _check_choice("insertion_start", insertion_start, SUBSTRATES)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")

    n_pixels = heatmaps[0].numel()
    steps = min(steps, n_pixels)
    ranks = torch.stack([_pixel_ranks(heatmap) for heatmap in heatmaps])
    counts = torch.linspace(0, n_pixels, steps + 1, device=images.device).round().long()
    fractions = counts.double().cpu() / n_pixels
    target_index = torch.as_tensor(list(targets), device=images.device)

    with model_left_as_found(model), torch.inference_mode():
        deletion = _score_curves(model, images, _substrate(images, deletion_baseline), ranks, counts,
                                 target_index, score, batch_size)
        insertion = _score_curves(model, _substrate(images, insertion_start), images, ranks, counts,
                                  target_index, score, batch_size)

    settings = _faithfulness_settings(images, steps, deletion_baseline, insertion_start, score)
    return [
        {
            "deletion_auc": float(torch.trapezoid(deletion_curve, fractions)),
            "insertion_auc": float(torch.trapezoid(insertion_curve, fractions)),
            "fractions": fractions.tolist(),
            "deletion_curve": deletion_curve.tolist(),
            "insertion_curve": insertion_curve.tolist(),
            "settings": settings,
        }
        for deletion_curve, insertion_curve in zip(deletion, insertion, strict=True)
    ]


def complexity(heatmap: np.ndarray | torch.Tensor, top_fraction: float = 0.5) -> dict[str, Any]:
    """Area of the convex hull of the most important pixels, as a fraction of the image (GAD, section 5).

    GAD "filtered out 50% of the pixels, retaining only the most important half" and measures the
    area of the convex hull of what remains. Here the retained pixels are the ``ceil(top_fraction *
    H * W)`` highest-valued ones, plus any pixel tied with the last of them, minus pixels whose value
    is zero or negative: those carry no importance (GAD's own maps are zero outside the features it
    keeps), and including them would make a sparse map look as complex as a flat one. Each pixel is
    a unit square, so the hull of a single pixel has area 1 and a row of pixels has an area equal to its
    length: no selection is degenerate, and an empty one has area 0.

    Args:
        heatmap: ``H x W`` array or tensor, high = important.
        top_fraction: share of pixels retained (default 0.5, GAD's setting).

    Returns:
        ``area_fraction`` (hull area / image area, in [0, 1]; lower is simpler), ``selected_fraction``
        (share of pixels actually retained) and ``settings``.

    Raises:
        ValueError: the heatmap is not a finite 2-D map or ``top_fraction`` is outside (0, 1].
    """
    values = _as_numpy(heatmap).astype(np.float64)
    _check_heatmap(values, values.shape)
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    selected = _most_important(values, top_fraction)
    return {
        "area_fraction": _hull_area(selected) / values.size,
        "selected_fraction": float(selected.mean()),
        "settings": {
            "top_fraction": top_fraction,
            "selection": (
                f"the ceil({top_fraction} * H * W) highest-valued pixels, ties at the cut included, "
                "pixels with value <= 0 excluded"
            ),
            "hull": "convex hull of the selected pixels, each pixel a unit square (scipy.spatial.ConvexHull)",
            "direction": "lower is simpler",
        },
    }


def localization(heatmap: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Agreement between a heatmap and a ground-truth mask, as the SyCE paper measures it.

    ``iou_pP`` binarises the heatmap at its P-th percentile (``heatmap >= np.percentile(heatmap, P)``,
    linear interpolation, as the SyCE authors' ``localization_utils.py``) and takes the IoU with the
    mask; the 85/90/95/98th percentiles suit annotations covering about 2 to 15% of the image. ``ncc``
    is the normalised cross-correlation (Pearson correlation) between the raw heatmap and the binary
    mask; it is ``None`` where either map is constant, since it is undefined there.

    Args:
        heatmap: ``H x W``, high = important.
        mask: ``H x W``, non-zero = annotated (boxes must be drawn into a mask first).

    Returns:
        ``iou_p85``, ``iou_p90``, ``iou_p95``, ``iou_p98``, ``ncc`` and ``settings``.

    Raises:
        EmptyAnnotation: the mask has no annotated pixel.
        ValueError: the shapes differ or the heatmap is not finite.
    """
    values = _as_numpy(heatmap).astype(np.float64)
    _check_heatmap(values, values.shape)
    truth = _as_numpy(mask) != 0
    if truth.shape != values.shape:
        raise ValueError(f"mask shape {truth.shape} differs from heatmap shape {values.shape}")
    if not truth.any():
        raise EmptyAnnotation("the annotation marks no pixel; send a mask or boxes that cover the finding")
    figures: dict[str, Any] = {
        f"iou_p{p}": _iou(values >= np.percentile(values, p), truth) for p in IOU_PERCENTILES
    }
    figures["ncc"] = _pearson(values, truth)
    figures["settings"] = {
        "percentiles": list(IOU_PERCENTILES),
        "binarisation": "heatmap >= numpy.percentile(heatmap, p), linear interpolation",
        "ncc": "Pearson correlation of the raw heatmap with the binary mask; null when either is constant",
        "mask_fraction": float(truth.mean()),
        "direction": "higher is better",
    }
    return figures


def _score_curves(
    model: nn.Module,
    start: torch.Tensor,
    end: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    targets: torch.Tensor,
    score: ScoreFunction,
    batch_size: int,
) -> torch.Tensor:
    """B x K target scores: state k of image b has its pixels ranked below ``counts[k]`` from ``end``."""
    n_states = counts.numel()
    pairs = torch.arange(start.shape[0] * n_states, device=start.device)
    scores = []
    for chunk in pairs.split(batch_size):
        image, state = chunk // n_states, chunk % n_states
        changed = ranks[image, None] < counts[state, None, None, None]  # n x 1 x H x W, broadcast over channels
        logits = model(torch.where(changed, end[image], start[image])).float()
        outputs = logits.softmax(dim=1) if score == "softmax" else logits
        scores.append(outputs[torch.arange(len(chunk)), targets[image]].double().cpu())
    return torch.cat(scores).view(start.shape[0], n_states)


def _pixel_ranks(heatmap: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel (0 = most important); the stable sort breaks ties in raster order."""
    order = torch.argsort(heatmap.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks.view_as(heatmap)


def _substrate(image: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(image)
    if kind == "mean":
        return image.mean(dim=(2, 3), keepdim=True).expand_as(image)
    kernel = _blur_kernel(image)
    return gaussian_blur(image, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])


def _blur_kernel(image: torch.Tensor) -> int:
    # Reflect padding needs the half-kernel to be smaller than the image; only images under 6 px shrink it.
    return min(BLUR_KERNEL, 2 * min(image.shape[-2:]) - 1)


def _faithfulness_settings(
    image: torch.Tensor, steps: int, deletion_baseline: str, insertion_start: str, score: str
) -> dict[str, Any]:
    blur = {"kernel": _blur_kernel(image), "sigma": BLUR_SIGMA, "padding": "reflect"}
    return {
        "baseline": deletion_baseline,
        "insertion_start": insertion_start,
        "blur": blur if "blur" in (deletion_baseline, insertion_start) else None,
        "steps": steps,
        "pixels_per_step": image.shape[-2] * image.shape[-1] / steps,
        "ranking_unit": "pixel (all channels together), descending heatmap value, ties in raster order",
        "score": ("softmax probability" if score == "softmax" else "logit") + " of the target class",
        "integration": "trapezoid over the fraction of pixels changed, in [0, 1], endpoints included",
        "direction": "deletion: lower is better; insertion: higher is better",
    }


def _most_important(values: np.ndarray, top_fraction: float) -> np.ndarray:
    keep = math.ceil(top_fraction * values.size)
    cut = np.partition(values.ravel(), values.size - keep)[values.size - keep]  # the keep-th largest value
    return (values >= cut) & (values > 0)


def _hull_area(selected: np.ndarray) -> float:
    """Area of the convex hull of the selected pixels' unit squares.

    The hull of a set of squares is the hull of the leftmost and rightmost square of each row, so only
    those corners go to Qhull: at most 8 points per row instead of 4 per pixel.
    """
    rows = np.flatnonzero(selected.any(axis=1))
    if rows.size == 0:
        return 0.0
    width = selected.shape[1]
    first = selected[rows].argmax(axis=1)
    last = width - 1 - selected[rows, ::-1].argmax(axis=1)
    xs = np.concatenate([first, first, last + 1, last + 1])
    ys = np.concatenate([rows, rows + 1, rows, rows + 1])
    return float(ConvexHull(np.column_stack([xs, ys]).astype(np.float64)).volume)  # in 2-D, volume is area


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.logical_and(predicted, truth).sum() / np.logical_or(predicted, truth).sum())


def _pearson(values: np.ndarray, truth: np.ndarray) -> float | None:
    a = values.ravel() - values.mean()
    b = truth.astype(np.float64).ravel() - truth.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / norm) if norm > 0 else None


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _check_single_image(image: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image of shape 1 x C x H x W, got {tuple(image.shape)}")


def _check_heatmap(heatmap: np.ndarray | torch.Tensor, size: tuple[int, ...]) -> None:
    if tuple(heatmap.shape) != tuple(size) or len(size) != 2:
        raise ValueError(f"expected an H x W heatmap of shape {tuple(size)}, got {tuple(heatmap.shape)}")
    finite = torch.isfinite(heatmap) if isinstance(heatmap, torch.Tensor) else np.isfinite(heatmap)
    if not finite.all():
        raise ValueError("the heatmap holds NaN or infinite values")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
