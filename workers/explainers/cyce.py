"""CyCE: the cyclic conditioned explanation (Charachon et al. 2021, section 5).

The simpler embodiment: the generator trained with cycle consistency only (no symmetry terms) maps
the input to a counterfactual ``G[s](x)`` that the classifier decides the other way, and the
explanation is ``|x - G[s](x)|`` averaged over channels (the reference code's ``"ori - adv"``).

Example:
    >>> explainer = CyCE(classifier, artifacts=store.artifact_path(manifest, "cyce"))
    >>> result = explainer.explain(images, [1], {})
    >>> result.images["counterfactual"].shape
    torch.Size([1, 1, 28, 28])
"""

from __future__ import annotations

from workers.explainers.syce import GenerativeExplainer


class CyCE(GenerativeExplainer):
    """Heatmap ``|x - G(x)|``; image "counterfactual" (G(x))."""

    name = "cyce"
    variant = "cyce"
    passes = ("counterfactual",)
