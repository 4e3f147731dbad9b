"""How a method and its parameters are described: the gateway validates requests against these. Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from xai.errors import InvalidInput

Queue = Literal["fast", "slow", "train"]
ParamType = Literal["int", "float", "bool", "str"]


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def validate(self, value: Any) -> Any:
        if value is None and self.default is None:  # a null default means "decided elsewhere", e.g. a preset
            return None
        if self.type == "bool":
            if not isinstance(value, bool):
                raise self._invalid("must be true or false")
            return value
        if self.type in ("int", "float"):
            return self._number(value)
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            allowed = f"one of {', '.join(self.choices)}" if self.choices else "a string"
            raise self._invalid(f"must be {allowed}")
        return value

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._invalid("must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._invalid("must be a finite number, not NaN or Infinity")
        if self.type == "int" and isinstance(value, float) and not value.is_integer():
            raise self._invalid("must be an integer")
        # Compared before any conversion: float() of a 400-digit integer overflows, and str() of one
        # over Python's digit limit raises, so the value itself is never formatted.
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise self._invalid(f"must be within [{self.minimum}, {self.maximum}]")
        return int(value) if self.type == "int" else float(value)

    def _invalid(self, requirement: str) -> InvalidInput:
        return InvalidInput(f"parameter {self.name!r} {requirement}", code="invalid_params")

    def json_schema(self) -> dict[str, Any]:
        """The parameter as JSON Schema (draft 2020-12), as ``validate`` checks it."""
        kind = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}[self.type]
        schema: dict[str, Any] = {"type": [kind, "null"] if self.default is None else kind,
                                  "default": self.default, "description": self.description}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices:
            schema["enum"] = list(self.choices)
        return schema

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        out["description"] = self.description
        if self.minimum is not None or self.maximum is not None:
            out["range"] = [self.minimum, self.maximum]
        if self.choices:
            out["choices"] = list(self.choices)
        return out


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str
    queue: Queue
    description: str
    params: tuple[Param, ...] = ()
    # The explainer needs per-model artifacts (trained generators, support models) to run.
    needs_artifacts: bool = False
    # CAM methods need a target layer from the model manifest.
    needs_target_layer: bool = False
    # Training only: it can use a mask of each training image's finding (``TrainJob.masks``).
    takes_masks: bool = False
    references: tuple[str, ...] = field(default=())

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate ``given``; unknown names are refused with the valid ones listed."""
        if not isinstance(given, dict):
            raise InvalidInput(f"the parameters of method {self.name!r} must be a JSON object", code="invalid_params")
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise InvalidInput(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name!r}; valid: {valid}",
                code="invalid_params",
            )
        return {name: (p.validate(given[name]) if name in given else p.default) for name, p in known.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "queue": self.queue,
            "description": self.description,
            "needs_artifacts": self.needs_artifacts,
            "needs_target_layer": self.needs_target_layer,
            "params": [p.describe() for p in self.params],
            "params_schema": {"type": "object", "additionalProperties": False,
                              "properties": {p.name: p.json_schema() for p in self.params}},
            "references": list(self.references),
        }


INTERNAL_BATCH = Param(
    "internal_batch_size", "int", 16, "Most perturbed or interpolated inputs evaluated in one pass", 1, 1024
)
