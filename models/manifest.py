"""The manifest of a registered classifier: everything needed to load, feed and explain it.

Torch-free, so the gateway validates registrations and lists models without importing torch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from xai.methods import CATALOGUE

MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class InputSpec(BaseModel):
    """How a canonical image (float in [0, 1], H x W or H x W x 3) becomes the model's input tensor."""

    height: int = Field(..., ge=8, le=4096)
    width: int = Field(..., ge=8, le=4096)
    channels: Literal[1, 3] = 1
    # Applied after resizing, per channel: (x - mean) / std. The loader builds it into the model,
    # so explainers work in [0, 1] image space, where a zero baseline means a black image.
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @model_validator(mode="after")
    def _normalisation_matches_channels(self) -> InputSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"input.{name} must have 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("input.std values must be positive")
        return self


class ModelManifest(BaseModel):
    """What a caller registers (plus fields the store fills in: version, sha256, artifacts)."""

    id: str = Field(..., pattern=MODEL_ID_PATTERN, description="Stable id, lower-case slug")
    version: int = Field(0, ge=0, description="Assigned by the store on registration")
    description: str = ""
    # "torchscript" for a scripted/traced file; otherwise the name of an architecture known to
    # models.networks (the project's own) or "torchvision.<name>" (e.g. torchvision.resnet18).
    architecture: str
    architecture_args: dict = Field(default_factory=dict)
    weights_file: str = "weights.pt"
    weights_sha256: str = ""
    input: InputSpec
    # "sigmoid": one output logit, class_names[1] is the positive class; "softmax": one logit per class.
    output: Literal["sigmoid", "softmax"] = "softmax"
    class_names: list[str] = Field(..., min_length=2)
    target_layer: str | None = Field(None, description="Dotted module name used by CAM methods")
    # Held-out figures from training: accuracy, auc, the data set and split they were measured on.
    evaluation: dict = Field(default_factory=dict)
    # Explainer artifacts of this version, method name -> path relative to the version directory.
    artifacts: dict[str, str] = Field(default_factory=dict)
    # Set by the store: an API registration stays "pending" until a worker has built and run it once.
    status: Literal["pending", "ready", "invalid"] = "ready"
    status_reason: str | None = None

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class_names must be unique")
        return names

    @model_validator(mode="after")
    def _sigmoid_is_binary(self) -> ModelManifest:
        if self.output == "sigmoid" and len(self.class_names) != 2:
            raise ValueError("a sigmoid output explains exactly two classes; use softmax for more")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.weights_file):
            raise ValueError("weights_file must be a plain file name")
        return self

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def class_index(self, target: str | int) -> int:
        """Resolve a class given by index or by name; raises ValueError naming the valid choices."""
        if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
            index = int(target)
            if 0 <= index < len(self.class_names):
                return index
            raise ValueError(f"target {index} is out of range; this model has classes 0..{len(self.class_names) - 1}")
        if target in self.class_names:
            return self.class_names.index(target)
        raise ValueError(f"target {target!r} is not a class of this model; valid: {', '.join(self.class_names)}")

    def available_methods(self) -> list[str]:
        """Methods this model can be explained with now: artifacts trained, target layer named."""
        return [
            name
            for name, spec in CATALOGUE.items()
            if (not spec.needs_artifacts or name in self.artifacts)
            and (not spec.needs_target_layer or self.target_layer)
        ]
