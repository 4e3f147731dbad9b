"""DeepLIFT, rescale rule: contributions of each pixel's change from a baseline (Shrikumar et al. 2017)."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import captum.attr
import torch
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import nn

from workers.explainers._catalogue import CaptumAttribution, baseline_images
from xai.errors import InvalidInput


class DeepLift(CaptumAttribution):
    """DeepLIFT (rescale rule) from a black, white or blurred baseline.

    Captum replaces the gradients of non-linear *modules* (``nn.ReLU``, ``nn.Sigmoid``...) with hooks;
    functional non-linearities keep plain gradients, and a module called twice in one forward pass is refused
    with ``method_unsupported_by_model``.
    Details: ``convergence_delta`` = sum of attributions - (f(input) - f(baseline)), 0 for a supported model.
    Reference: arXiv:1704.02685.

    Example:
        >>> heatmaps = DeepLift(model).explain(images, [1], {"baseline": "black", "sign": "all"}).heatmaps
    """

    name = "deeplift"
    # The rescale rule divides by differences of activations, which half precision rounds badly.
    supports_autocast: ClassVar[bool] = False

    def _rows_per_image(self, images: torch.Tensor, params: dict[str, Any]) -> int:
        # Inputs and baselines in one pass, then each again for the convergence delta.
        return 4

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, params: dict[str, Any]
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        try:
            attributions, delta = captum.attr.DeepLift(model).attribute(
                inputs,
                baselines=baseline_images(inputs.detach(), params["baseline"]),
                target=targets,
                return_convergence_delta=True,
            )
        except RuntimeError as error:
            reused = reused_activations(self.model, inputs.detach()[:1])
            if not reused:
                raise
            raise InvalidInput(
                f"deeplift cannot explain this model: it calls the activation module(s) {', '.join(reused)} "
                "more than once per forward pass (as torchvision ResNets do), and DeepLIFT needs one module "
                "per use; use integrated_gradients or gradient_shap instead",
                code="method_unsupported_by_model",
            ) from error
        return attributions, [{"convergence_delta": float(value)} for value in delta]


def reused_activations(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Names of the non-linear modules Captum's DeepLift rewrites that one forward pass calls twice."""
    calls: Counter[str] = Counter()
    handles = [
        module.register_forward_hook(lambda module, inputs, output, name=name: calls.update([name]))
        for name, module in model.named_modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(name for name, count in calls.items() if count > 1)
