"""The method catalogue: every explanation method the service offers, its queue and its parameters.

Torch-free: the gateway lists and validates methods from here. Each family of methods declares its
specs in its own module; each worker-side explainer (workers/explainers/<name>.py) declares the same
``name``, and a test keeps the two in step.
"""

from xai.errors import InvalidInput
from xai.methods import gad, gradient, igos_pp, syce
from xai.methods.spec import MethodSpec, Param

FAMILIES = (gradient, igos_pp, syce, gad)
CATALOGUE: dict[str, MethodSpec] = {spec.name: spec for family in FAMILIES for spec in family.SPECS}
# Methods whose per-model artifacts are trained on the train queue, with their training parameters.
TRAINABLE: dict[str, MethodSpec] = {
    spec.name: spec for family in FAMILIES for spec in getattr(family, "TRAINING_SPECS", ())
}


def get_method(name: str) -> MethodSpec:
    if name not in CATALOGUE:
        raise InvalidInput(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(CATALOGUE))}", code="unknown_method"
        )
    return CATALOGUE[name]


def get_trainable(name: str) -> MethodSpec:
    if name not in TRAINABLE:
        valid = ", ".join(sorted(TRAINABLE)) or "none yet"
        raise InvalidInput(f"method {name!r} has nothing to train; trainable: {valid}", code="not_trainable")
    return TRAINABLE[name]


__all__ = ["CATALOGUE", "TRAINABLE", "MethodSpec", "Param", "get_method", "get_trainable"]
