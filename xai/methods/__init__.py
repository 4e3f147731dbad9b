"""The method catalogue: every explanation method the service offers, its queue and its parameters.

Torch-free: the gateway lists and validates methods from here. Each family of methods declares its
specs in its own module; each worker-side explainer (workers/explainers/<name>.py) declares the same
``name``, and a test keeps the two in step.
"""

from xai.errors import InvalidInput
from xai.methods import gradient
from xai.methods.spec import MethodSpec, Param

CATALOGUE: dict[str, MethodSpec] = {spec.name: spec for family in (gradient,) for spec in family.SPECS}


def get_method(name: str) -> MethodSpec:
    if name not in CATALOGUE:
        raise InvalidInput(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(CATALOGUE))}", code="unknown_method"
        )
    return CATALOGUE[name]


__all__ = ["CATALOGUE", "MethodSpec", "Param", "get_method"]
