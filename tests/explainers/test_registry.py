"""The explainer registry and the torch-free method specs stay in step."""

from __future__ import annotations

import pytest

from workers.explainers import EXPLAINERS
from workers.explainers._catalogue import CatalogueExplainer
from xai.methods import CATALOGUE, gradient

from .cases import CASES


def test_every_registered_explainer_is_filed_under_its_own_name() -> None:
    assert list(EXPLAINERS) == sorted(EXPLAINERS)
    for name, explainer_class in EXPLAINERS.items():
        assert explainer_class.name == name


@pytest.mark.parametrize("spec", gradient.SPECS, ids=lambda spec: spec.name)
def test_every_spec_of_this_family_has_a_matching_explainer(spec) -> None:
    explainer_class = EXPLAINERS[spec.name]

    assert issubclass(explainer_class, CatalogueExplainer)
    assert explainer_class.needs_target_layer == spec.needs_target_layer
    assert CATALOGUE[spec.name] is spec
    for param in spec.params:
        assert param.validate(param.default) == param.default


def test_the_suite_covers_every_method_of_this_family() -> None:
    assert {case.method for case in CASES} == {spec.name for spec in gradient.SPECS}


def test_perturbation_methods_go_to_the_slow_queue() -> None:
    slow = {spec.name for spec in gradient.SPECS if spec.queue == "slow"}

    assert slow == {"occlusion", "feature_ablation", "shapley_value_sampling", "score_cam", "rise"}
