"""Every method on real architectures (random weights, nothing downloaded): residual blocks that reuse one
in-place ReLU module (ResNet) and dense concatenations (DenseNet), as medical classifiers commonly are."""

from __future__ import annotations

import pytest
import torch
import torchvision

from workers.explainers import EXPLAINERS
from xai.errors import InvalidInput

from .cases import CASES, Case

pytestmark = pytest.mark.slow

ARCHITECTURES = {"resnet18": "layer4", "densenet121": "features.denseblock4"}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def network(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = getattr(torchvision.models, request.param)(weights=None, num_classes=2)
    return model, dict(model.named_modules())[ARCHITECTURES[request.param]]


@pytest.mark.parametrize(
    "case", [case for case in CASES if case.method != "deeplift"], ids=lambda case: case.id
)
def test_every_method_explains_torchvision_networks(case: Case, network) -> None:
    model, layer = network
    images = torch.rand(2, 3, 32, 32)

    explanation = case.explainer_class(model, target_layer=layer).explain(images, [0, 1], case.params())

    assert explanation.heatmaps.shape == (2, 32, 32) and torch.isfinite(explanation.heatmaps).all()


def test_deeplift_names_the_reused_relu_of_a_resnet() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=2)

    with pytest.raises(InvalidInput) as error:
        EXPLAINERS["deeplift"](model).explain(torch.rand(1, 3, 32, 32), [1], Case("deeplift").params())

    assert error.value.code == "method_unsupported_by_model"
    assert "layer1.0.relu" in error.value.message


def test_deeplift_explains_a_densenet_completely() -> None:
    model = torchvision.models.densenet121(weights=None, num_classes=2).eval()
    images = torch.rand(1, 3, 32, 32)

    explanation = EXPLAINERS["deeplift"](model).explain(
        images, [1], Case("deeplift", {"sign": "all"}).params()
    )

    assert abs(explanation.details[0]["convergence_delta"]) < 1e-3 * float(explanation.heatmaps.abs().sum())
