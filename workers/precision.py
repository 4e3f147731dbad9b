"""Mixed precision where a method tolerates it: autocast on CUDA, float32 again if a heatmap is not finite.

TorchEsegeta runs its patch loop under ``torch.cuda.amp.autocast`` and recomputes an attribution in full
precision when it contains NaN. The same rule here, per method: an explainer class opts in with
``supports_autocast = True`` (gradient methods and RISE do; methods built on small score differences, DeepLIFT
and pytorch-grad-cam's NumPy code do not). float16 is the default because its overflow is exactly what the
fallback catches, while its 10-bit mantissa keeps gradients closer to float32 than bfloat16's 7 bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from models.guard import model_left_as_found
from workers.explainers.base import Explainer, Explanation, Progress, no_progress

FALLBACK = "float32-fallback"


def explain_mixed_precision(
    explainer: Explainer,
    images: torch.Tensor,
    targets: Sequence[int],
    params: dict[str, Any],
    progress: Progress = no_progress,
    *,
    dtype: torch.dtype = torch.float16,
) -> tuple[Explanation, str]:
    """Explain under autocast when the images are on CUDA and the method supports it; else as usual.

    Args:
        explainer: The explainer; its class attribute ``supports_autocast`` (default False) opts in.
        images, targets, params, progress: As for ``Explainer.explain``.
        dtype: The autocast dtype, ``torch.float16`` or ``torch.bfloat16``.

    Returns:
        The explanation and the precision that produced it: ``"float32"`` (CPU, or a method that does not
        support autocast), ``"float16"``/``"bfloat16"``, or ``"float32-fallback"`` when the autocast heatmap
        was not finite and the batch was explained again in float32. On CPU this is ``explainer.explain``.

    Example:
        >>> explanation, precision = explain_mixed_precision(IntegratedGradients(model), images, [1], params)
    """
    if images.device.type != "cuda" or not explainer.supports_autocast:
        return explainer.explain(images, targets, params, progress), "float32"
    return explain_autocast_or_float32(
        explainer, images, targets, params, progress, device_type="cuda", dtype=dtype
    )


def explain_autocast_or_float32(
    explainer: Explainer,
    images: torch.Tensor,
    targets: Sequence[int],
    params: dict[str, Any],
    progress: Progress,
    *,
    device_type: str,
    dtype: torch.dtype,
) -> tuple[Explanation, str]:
    """Explain under ``torch.autocast(device_type, dtype)``; again in float32 if a value is not finite.

    This calls the explainer's ``_explain`` inside the base class's guard rather than ``explain``, because
    ``explain`` replaces non-finite values by 0 and would hide the overflow this fallback exists to catch.
    (``device_type="cpu"`` is accepted so that the rule can be tested without a GPU.)
    """
    if images.ndim != 4 or len(targets) != images.shape[0]:
        return explainer.explain(images, targets, params, progress), "float32"  # let explain() refuse them
    with model_left_as_found(explainer.model), torch.autocast(device_type, dtype=dtype):
        explanation = explainer._explain(images, list(targets), params, progress)
    heatmaps = explanation.heatmaps.detach().float()
    if bool(torch.isfinite(heatmaps).all()):
        explanation.heatmaps = heatmaps
        return explanation, str(dtype).removeprefix("torch.")
    return explainer.explain(images, targets, params, progress), FALLBACK
