"""The table that drives the explainer suite: every method (and SmoothGrad base), with small parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.explainers import EXPLAINERS
from workers.explainers.base import Explainer
from xai.methods import CATALOGUE


@dataclass(frozen=True)
class Case:
    """One method run: the API name, overrides of its spec defaults, and a test id."""

    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def id(self) -> str:
        return self.label or self.method

    @property
    def explainer_class(self) -> type[Explainer]:
        return EXPLAINERS[self.method]

    def params(self, **more: Any) -> dict[str, Any]:
        """The spec's defaults with this case's overrides (and ``more``), validated by the spec."""
        spec = CATALOGUE[self.method]
        known = {param.name for param in spec.params}
        given = {name: value for name, value in {**self.overrides, **more}.items() if name in known}
        return spec.resolve_params(given)

    @property
    def expands_batch(self) -> bool:
        """The method evaluates several perturbed copies per image and so takes ``internal_batch_size``."""
        return any(param.name == "internal_batch_size" for param in CATALOGUE[self.method].params)

    @property
    def random(self) -> bool:
        return "seed" in {param.name for param in CATALOGUE[self.method].params}


SMALL = {"internal_batch_size": 8}
CASES = [
    Case("saliency"),
    Case("saliency", {"abs": False}, "saliency-signed"),
    Case("integrated_gradients", {**SMALL, "n_steps": 8}),
    Case(
        "integrated_gradients",
        {**SMALL, "n_steps": 8, "baseline": "blur", "sign": "all"},
        "integrated_gradients-blur",
    ),
    Case("smoothgrad", {**SMALL, "nt_samples": 3}),
    Case(
        "smoothgrad",
        {**SMALL, "nt_samples": 3, "base": "integrated_gradients", "n_steps": 4},
        "smoothgrad-ig",
    ),
    Case(
        "smoothgrad",
        {**SMALL, "nt_samples": 3, "base": "input_x_gradient", "nt_type": "vargrad"},
        "smoothgrad-ixg",
    ),
    Case(
        "smoothgrad",
        {**SMALL, "nt_samples": 3, "base": "guided_backprop", "nt_type": "smoothgrad_sq"},
        "smoothgrad-gbp",
    ),
    Case("input_x_gradient"),
    Case("guided_backprop"),
    Case("deconvolution"),
    Case("deeplift"),
    Case("gradient_shap", {**SMALL, "n_samples": 5, "stdev": 0.05}),
    Case("occlusion", {**SMALL, "window": 6, "stride": 4}),
    Case("feature_ablation", {**SMALL, "grid": 4}),
    Case("shapley_value_sampling", {**SMALL, "grid": 3, "n_samples": 2}),
    Case("grad_cam"),
    Case("grad_cam", {"relu": False}, "grad_cam-signed"),
    Case("guided_grad_cam"),
    Case("grad_cam_plus_plus"),
    Case("score_cam", SMALL),
    Case("rise", {**SMALL, "n_masks": 24, "grid": 4}),
]
