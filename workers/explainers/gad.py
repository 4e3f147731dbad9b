"""GAD: a gradient method filtered by class-distanced support models (Mazini Rodrigues et al., 2024).

Gradient Artificial Distancing, section 4.3 and Figure 3 of the paper: the base gradient method runs
on the classifier and on every support model (copies fine-tuned to push the two classes' logits
apart by alpha; trained by ``models.training.gad``, read through ``models.artifacts.gad``), and only
the pixels important in all of these maps are kept.

Our rules where the paper is silent (``xai.methods.gad.DESIGN_CHOICES`` states them in full):

- importance of a pixel = the attribution's magnitude summed over channels (or, with
  ``sign="positive"``, its signed channel sum clipped at 0), as the catalogue's gradient maps;
- a pixel is important in a map when it is among the ``importance_threshold`` share of that map's
  pixels with importance above 0, taken from the top (ties at the cut included);
- the GAD map is the classifier's importance on the pixels important in every map, 0 elsewhere.

Batched evaluation: the classifier and its support models share one architecture, so they run as
one model whose weights carry a leading model axis (``torch.func.stack_module_state`` layout, run by
``torch.vmap`` over ``torch.func.functional_call``). The images are tiled along the channel axis, one
copy per model, and the stacked model returns the sum of the models' logits: the gradient with
respect to copy j is then exactly model j's gradient, whatever way Captum chunks or expands the
batch (integrated-gradient steps included). Captum's guided backprop and deconvolution hook tensors
inside the forward pass, which ``vmap`` refuses, so the batched path applies the same ReLU rules as
autograd functions with a vmap rule and takes the plain gradient; a test checks both paths agree.
``support_evaluation="auto"`` (the default) batches on CUDA and runs the models one after another on
the CPU, where bench/bench_gad.py measured vmap's grouped convolutions 0.7-0.9x as fast for the
128 x 128 demo model; when ``vmap`` cannot run a model (an operation without a batching rule, device
memory), the models run one after another through Captum and the details say so.

Metrics in the details (paper, section 5): RC, the ratio of the convex-hull areas of the GAD map's and
the base map's top pixels (``workers.scoring.complexity``); RS (equation 2), the change of the
target's softmax probability when the pixels inside a hull are set to 0, per occluded pixel, for the
GAD hull and for the supplementary mask (base hull minus GAD hull).

Example:
    >>> explainer = GAD(classifier, artifacts=store.artifact_path(manifest, "gad"))
    >>> result = explainer.explain(images, [1], {"base_method": "saliency", ...})
    >>> result.details[0]["rc"], result.images["base_map"].shape
    (0.62, torch.Size([1, 1, 128, 128]))
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients, Saliency
from scipy.spatial import ConvexHull
from torch import nn
from torch.func import functional_call

from models.artifacts.gad import SupportArtifact, read_artifact
from workers import scoring
from workers.explainers._catalogue import ReportingModel, channel_heatmap, sub_progress
from workers.explainers.base import Explainer, Explanation, Progress, no_progress
from xai.errors import Conflict, InvalidInput
from xai.methods.gad import DESIGN_CHOICES


class _ReLURule(torch.autograd.Function):
    """A ReLU whose backward pass follows a propagation rule; subclasses give the rule as ``backward``.

    ``forward`` and ``setup_context`` are separate, as ``generate_vmap_rule`` requires.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass  # nothing to save for a rule that ignores the forward pass (deconvolution)


class _GuidedReLU(_ReLURule):
    """ReLU whose backward passes only positive gradients through active units (Springenberg et al.)."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad.clamp(min=0) * (output > 0)


class _DeconvolutionReLU(_ReLURule):
    """ReLU whose backward passes the positive part of the gradient, whatever the input (Zeiler & Fergus)."""

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


class _RuleReLU(nn.Module):
    def __init__(self, rule: type[torch.autograd.Function]):
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rule.apply(x)


# base method -> (Captum class for the one-after-another path, ReLU rule for the batched path)
BASE_METHODS: dict[str, tuple[type, type[torch.autograd.Function] | None]] = {
    "saliency": (Saliency, None),
    "input_x_gradient": (InputXGradient, None),
    "integrated_gradients": (IntegratedGradients, None),
    "guided_backprop": (GuidedBackprop, _GuidedReLU),
    "deconvolution": (Deconvolution, _DeconvolutionReLU),
}


class ModelStack(nn.Module):
    """Several models of one architecture as one: input ``N x (M*C) x H x W`` (one copy per model along
    channels), output ``N x K`` = the sum of the models' logits, each model on its own copy."""

    n_models: int

    def per_model(self, images: torch.Tensor) -> torch.Tensor:
        """``M x N x C x H x W`` (model j's images at j) -> ``M x N x K`` logits."""
        raise NotImplementedError

    def forward(self, tiled: torch.Tensor) -> torch.Tensor:
        return self.per_model(untile(tiled, self.n_models)).sum(dim=0)


class VmapStack(ModelStack):
    """All models in one vectorised pass: stacked weights, ``torch.vmap`` over ``functional_call``.

    Args:
        skeleton_source: The classifier; a deep copy provides the architecture and the buffers that
            are not in state_dicts (normalisation). ReLU modules of the copy become ``relu_rule``.
        states: One state_dict per model, the classifier's first.
        relu_rule: Backward rule for ReLUs (guided backprop, deconvolution), or None for plain ReLU.
    """

    def __init__(self, skeleton_source: nn.Module, states: list[dict[str, torch.Tensor]], relu_rule=None):
        super().__init__()
        self.n_models = len(states)
        self.skeleton = copy.deepcopy(skeleton_source).eval()
        if relu_rule is not None:
            _replace_relus(self.skeleton, relu_rule)
        self.stacked = {name: torch.stack([state[name] for state in states]).detach() for name in states[0]}

    def per_model(self, images: torch.Tensor) -> torch.Tensor:
        def run(state: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, state, (batch,))

        return torch.vmap(run)(self.stacked, images)


class LoopStack(ModelStack):
    """The same models run one after another (the reference for ``VmapStack`` and its fallback)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.n_models = len(models)
        self.models = nn.ModuleList(models)

    def per_model(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(batch) for model, batch in zip(self.models, images)])


def tile(images: torch.Tensor, n_models: int) -> torch.Tensor:
    """``N x C x H x W`` -> ``N x (n_models*C) x H x W``, one copy of each image per model."""
    return images.repeat(1, n_models, 1, 1)


def untile(tiled: torch.Tensor, n_models: int) -> torch.Tensor:
    """``N x (n_models*C) x H x W`` -> ``n_models x N x C x H x W``."""
    return tiled.unflatten(1, (n_models, -1)).transpose(0, 1)


def build_stack(
    classifier: nn.Module, states: list[dict[str, torch.Tensor]], base_method: str, *, batched: bool
) -> ModelStack:
    """The classifier (``states[0]``, its own weights) and its support models as one ``ModelStack``.

    Args:
        classifier: The classifier; copies of it carry the support weights.
        states: One state_dict per model, the classifier's own first.
        base_method: A key of ``BASE_METHODS``; guided backprop and deconvolution put their ReLU rule
            into the batched stack.
        batched: ``VmapStack`` when true, else ``LoopStack`` (the classifier itself plus deep copies).

    Raises:
        InvalidInput: ``base_method_unsupported`` for guided backprop or deconvolution on a model
            without ``nn.ReLU`` modules, where both would silently be the plain gradient.
    """
    relu_rule = BASE_METHODS[base_method][1]
    if relu_rule is not None and not any(isinstance(module, nn.ReLU) for module in classifier.modules()):
        raise InvalidInput(
            f"{base_method} changes the backward pass of nn.ReLU modules and this model has none (a "
            "TorchScript network, or ReLUs called as functions); choose another base_method",
            code="base_method_unsupported",
        )
    if batched:
        return VmapStack(classifier, states, relu_rule)
    supports = []
    for state in states[1:]:
        support = copy.deepcopy(classifier).eval()
        support.load_state_dict(state)
        supports.append(support)
    return LoopStack([classifier, *supports])


def attribute(
    stack: ModelStack,
    images: torch.Tensor,
    targets: list[int],
    base_method: str,
    params: dict[str, Any],
    progress: Progress = no_progress,
) -> torch.Tensor:
    """Run ``base_method`` (Captum) on every model of ``stack`` at once: ``models x B x C x H x W``.

    Args:
        stack: From ``build_stack``.
        images: ``B x C x H x W`` in [0, 1].
        targets: The class explained for each image.
        base_method: A key of ``BASE_METHODS``.
        params: ``n_steps`` and ``internal_batch_size`` (integrated gradients, black baseline, Captum's
            default Gauss-Legendre rule).
        progress: Called after every forward pass of the stack; may raise ``JobCancelled``.
    """
    captum_class, relu_rule = BASE_METHODS[base_method]
    kwargs: dict[str, Any] = {"target": targets}
    rows = len(targets)
    if isinstance(stack, VmapStack) and relu_rule is not None:
        # The rule lives in the stack's ReLUs: the plain (signed) gradient is the rule's attribution.
        captum_class, kwargs["abs"] = Saliency, False
    elif captum_class is Saliency:
        kwargs["abs"] = True
    if captum_class is IntegratedGradients:
        # Captum cannot split a pass below one row per image (it warns and uses the batch size).
        chunk = max(params["internal_batch_size"], rows)
        kwargs |= {"n_steps": params["n_steps"], "internal_batch_size": chunk}
        rows *= params["n_steps"]
    reporting = ReportingModel(stack, progress, rows, f"{base_method} on {stack.n_models} models")
    tiled = tile(images, stack.n_models).detach().requires_grad_(True)
    return untile(captum_class(reporting).attribute(tiled, **kwargs).detach(), stack.n_models)


def pixel_importance(attributions: torch.Tensor, sign: str) -> torch.Tensor:
    """``models x B x C x H x W`` attributions -> ``models x B x H x W`` importance, reduced over channels
    as the catalogue's maps are (``channel_heatmap``: ``absolute`` = sum of |a|, ``positive`` = signed
    sum clipped at 0), so GAD's base map equals what the plain method returns."""
    return channel_heatmap(attributions.flatten(0, 1), sign).unflatten(0, attributions.shape[:2])


def important_pixels(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """GAD's importance rule: the ``ceil(fraction * P)`` highest of each map's P pixels with importance
    > 0, ties at the cut included. Counting only pixels with some importance keeps the rule meaningful
    for sparse maps (input x gradient on a black background, guided backprop), where a share of all
    pixels would take every non-zero pixel of every map and leave nothing to filter."""
    flat = importance.flatten(-2)
    positive = (flat > 0).sum(dim=-1, keepdim=True)
    keep = torch.ceil(fraction * positive).long().clamp(min=1)
    cut = flat.sort(dim=-1, descending=True).values.gather(-1, keep - 1)
    return ((flat >= cut) & (flat > 0)).view_as(importance)


def top_pixels(importance: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ``ceil(fraction * H * W)`` highest pixels of each ``H x W`` map, ties at the cut included, minus
    pixels <= 0 (the selection rule of ``workers.scoring.complexity``)."""
    flat = importance.flatten(-2)
    keep = max(1, int(np.ceil(fraction * flat.shape[-1])))
    cut = flat.kthvalue(flat.shape[-1] - keep + 1, dim=-1, keepdim=True).values
    return ((flat >= cut) & (flat > 0)).view_as(importance)


def hull_mask(selected: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the selected pixels (each a unit square), boundary
    included: the filled ``CH`` mask GAD occludes. Empty selection -> empty mask."""
    rows = np.flatnonzero(selected.any(axis=1))
    if rows.size == 0:
        return np.zeros_like(selected, dtype=bool)
    height, width = selected.shape
    # The hull of a set of squares is the hull of each row's first and last square.
    first = selected[rows].argmax(axis=1)
    last = width - 1 - selected[rows, ::-1].argmax(axis=1)
    xs = np.concatenate([first, first, last + 1, last + 1])
    ys = np.concatenate([rows, rows + 1, rows, rows + 1])
    equations = ConvexHull(np.column_stack([xs, ys]).astype(np.float64)).equations
    centre_y, centre_x = np.mgrid[0:height, 0:width] + 0.5
    centres = np.stack([centre_x.ravel(), centre_y.ravel()], axis=1)
    inside = (centres @ equations[:, :2].T + equations[:, 2] <= 1e-9).all(axis=1)
    return inside.reshape(height, width)


def hull_masks(selected: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` selections -> ``B x H x W`` filled convex-hull masks (on the CPU)."""
    return torch.from_numpy(np.stack([hull_mask(s) for s in selected.cpu().numpy()]))


def region_sensitivity(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, targets: list[int]
) -> list[float | None]:
    """RS of the paper's equation 2: ``|p_t(I) - p_t(I * (1 - M))| / sum(M)`` per image.

    Args:
        model: The classifier (images in [0, 1] -> logits).
        images: ``B x C x H x W``.
        masks: ``B x H x W`` occlusion masks (1 = occluded, set to 0).
        targets: The class t of each image; p_t is its softmax probability.

    Returns:
        One value per image; None where the mask is empty (RS is undefined).
    """
    masks = masks.to(images.device, images.dtype)
    with torch.inference_mode():
        before = model(images).float().softmax(dim=1)
        after = model(images * (1 - masks[:, None])).float().softmax(dim=1)
    rows = torch.arange(len(targets))
    change = (before[rows, targets] - after[rows, targets]).abs().cpu()
    areas = masks.flatten(1).sum(dim=1).cpu()
    return [float(c / a) if a > 0 else None for c, a in zip(change, areas)]


def complexity_ratio(gad_map: torch.Tensor, base_map: torch.Tensor, top_fraction: float) -> dict[str, Any]:
    """RC (equation 1): hull area of the GAD map's top pixels over the base map's; None if the latter is 0."""
    gad_area = scoring.complexity(gad_map.cpu(), top_fraction)["area_fraction"]
    base_area = scoring.complexity(base_map.cpu(), top_fraction)["area_fraction"]
    rc = gad_area / base_area if base_area > 0 else None
    return {"rc": rc, "gad_area": gad_area, "base_area": base_area}


class GAD(Explainer):
    """Gradient Artificial Distancing (Mazini Rodrigues, Boutry, Najman, arXiv:2401.14434).

    Args:
        model: The ``Classifier``.
        target_layer: Unused (GAD works on input gradients).
        artifacts: The model version's GAD artifact folder (``models.artifacts.gad.write_artifact``).

    Raises:
        Conflict: ``gad_not_trained`` without artifacts; ``gad_artifact_mismatch`` when the artifact
            was trained for other weights or classes; ``gad_artifact_unreadable``.

    Example:
        >>> GAD(classifier, artifacts=folder).explain(images, [0], params).heatmaps.shape
        torch.Size([1, 28, 28])
    """

    name: ClassVar[str] = "gad"

    def __init__(
        self, model: nn.Module, *, target_layer: nn.Module | None = None, artifacts: Path | None = None
    ):
        super().__init__(model, target_layer=target_layer, artifacts=artifacts)
        if artifacts is None:
            raise Conflict(
                "this model has no GAD support models yet; train them with `xai train gad --model ID --data "
                "FOLDER` or POST /v1/models/{model_id}/train/gad",
                code="gad_not_trained",
            )
        self.device = next(model.parameters()).device
        self.support = _cached_artifact(Path(artifacts), self.device)
        _check_artifact_fits(model, self.support)

    def _explain(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> Explanation:
        self._check_targets(targets)
        images = images.to(self.device)
        models = 1 + len(self.support.states)
        progress(0.0, f"{params['base_method']} on the classifier and its support models ({models} models)")
        attributions, stack, batched_note = self._attributions(
            images, targets, params, sub_progress(progress, 0.0, 0.8)
        )
        progress(0.8, "filtering and measuring")
        importance = pixel_importance(attributions, params["sign"])  # models x B x H x W
        important = important_pixels(importance, params["importance_threshold"])
        kept = important.all(dim=0)
        base_map = importance[0]
        gad_map = base_map * kept
        margins = self._margins(stack, images, targets)
        details = [
            self._details(base, gad, marks, params, batched_note) | {"logit_margin": margin}
            for base, gad, marks, margin in zip(base_map, gad_map, important.unbind(1), margins, strict=True)
        ]
        self._add_sensitivity(details, images, targets, base_map, gad_map, params["hull_top_fraction"])
        peak = base_map.flatten(1).amax(dim=1).clamp(min=torch.finfo(base_map.dtype).tiny)[:, None, None]
        extra = {"base_map": (base_map / peak)[:, None], "gad_mask": kept[:, None].float()}
        progress(1.0, None)
        return Explanation(heatmaps=gad_map, details=details, images=extra)

    def _attributions(
        self, images: torch.Tensor, targets: list[int], params: dict[str, Any], progress: Progress
    ) -> tuple[torch.Tensor, ModelStack, str]:
        """Base-method attributions of every model (``models x B x C x H x W``), the stack that ran them
        and how."""
        states = [self.model.state_dict(), *self.support.states]
        base_method = params["base_method"]
        mode = params["support_evaluation"]
        if mode == "batched" or (mode == "auto" and self.device.type == "cuda"):
            try:
                stack = build_stack(self.model, states, base_method, batched=True)
                attributions = attribute(stack, images, targets, base_method, params, progress)
                return attributions, stack, "batched (torch.vmap)"
            except (RuntimeError, NotImplementedError) as error:  # vmap unsupported here, or out of memory
                fallback = f"sequential (batched evaluation failed: {str(error)[:200]})"
        else:
            reason = "requested" if mode == "sequential" else f"auto on {self.device.type}"
            fallback = f"sequential ({reason})"
        stack = build_stack(self.model, states, base_method, batched=False)
        return attribute(stack, images, targets, base_method, params, progress), stack, fallback

    def _check_targets(self, targets: list[int]) -> None:
        pair = self.support.class_pair
        outside = sorted({t for t in targets if t not in pair})
        if outside:
            names = self.model.manifest.class_names
            raise InvalidInput(
                f"GAD support models of this model distance classes {names[pair[0]]!r} and "
                f"{names[pair[1]]!r}; target(s) {outside} are not one of them: pick one, or train GAD "
                "with another class_pair",
                code="target_not_in_class_pair",
            )

    def _margins(self, stack: ModelStack, images: torch.Tensor, targets: list[int]) -> list[dict[str, float]]:
        """Target logit minus the other pair class's logit, for the classifier and each support model.

        The ReLU rules of guided backprop and deconvolution change only the backward pass, so any stack
        gives the models' true logits.
        """
        first, second = self.support.class_pair
        others = [second if target == first else first for target in targets]
        with torch.no_grad():
            logits = stack.per_model(images.expand(stack.n_models, *images.shape))  # models x B x K
        rows = torch.arange(len(targets))
        margins = (logits[:, rows, targets] - logits[:, rows, others]).T.tolist()  # B x models
        names = ["classifier"] + [f"alpha_{alpha:g}" for alpha in self.support.alphas]
        return [{name: round(value, 4) for name, value in zip(names, row)} for row in margins]

    def _details(
        self, base_map: torch.Tensor, gad_map: torch.Tensor, important: torch.Tensor, params: dict[str, Any],
        batched_note: str,
    ) -> dict[str, Any]:
        """One image's details, from its H x W maps and its models x H x W important pixels."""
        counts = important.flatten(1).sum(dim=1).tolist()
        kept = int((gad_map > 0).sum())
        pair = self.support.class_pair
        summary = self.support.config["summary"]
        return {
            "alphas": self.support.alphas,
            "class_pair": {
                "indices": list(pair), "names": [self.model.manifest.class_names[i] for i in pair]
            },
            "base_method": params["base_method"],
            "n_steps": params["n_steps"] if params["base_method"] == "integrated_gradients" else None,
            "importance_threshold": params["importance_threshold"],
            "sign": params["sign"],
            "threshold_rule": DESIGN_CHOICES["important_pixels"],
            "important_pixels": {"base": counts[0], "per_support_model": counts[1:], "gad": kept},
            "retained_fraction": kept / counts[0] if counts[0] else None,
            **complexity_ratio(gad_map, base_map, params["hull_top_fraction"]),
            "hull_top_fraction": params["hull_top_fraction"],
            "support_evaluation": batched_note,
            "training": {key: summary.get(key) for key in ("epochs", "learning_rate", "margin_shift")},
            "design_choices": DESIGN_CHOICES,
        }

    def _add_sensitivity(
        self,
        details: list[dict[str, Any]],
        images: torch.Tensor,
        targets: list[int],
        base_map: torch.Tensor,
        gad_map: torch.Tensor,
        top_fraction: float,
    ) -> None:
        """RS of the GAD hull and of the supplementary mask (base hull minus GAD hull) for every image."""
        gad_hulls = hull_masks(top_pixels(gad_map, top_fraction))
        base_hulls = hull_masks(top_pixels(base_map, top_fraction))
        supplementary = base_hulls & ~gad_hulls
        rs_gad = region_sensitivity(self.model, images, gad_hulls, targets)
        rs_supplementary = region_sensitivity(self.model, images, supplementary, targets)
        for b, detail in enumerate(details):
            detail["rs"] = {
                "gad": rs_gad[b],
                "supplementary": rs_supplementary[b],
                "gad_mask_pixels": int(gad_hulls[b].sum()),
                "supplementary_mask_pixels": int(supplementary[b].sum()),
                "score": "softmax probability of the target class",
                "occlusion": "pixels inside the mask set to 0 (black)",
            }


def _replace_relus(module: nn.Module, rule: type[torch.autograd.Function]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, _RuleReLU(rule))
        else:
            _replace_relus(child, rule)


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, stamp: int, device: str) -> SupportArtifact:
    return read_artifact(Path(folder), map_location=device)


def _cached_artifact(folder: Path, device: torch.device) -> SupportArtifact:
    """Support state_dicts stay resident per (folder, config mtime, device): jobs build an explainer
    per request, and reading the weights from disk each time would dominate small models' cost."""
    config = folder / "config.json"
    stamp = config.stat().st_mtime_ns if config.exists() else 0
    return _load_cached(str(folder), stamp, str(device))


def _check_artifact_fits(model: nn.Module, support: SupportArtifact) -> None:
    """Refuse an artifact trained for other weights, other classes or another architecture."""
    manifest = model.manifest
    trained_for = support.config.get("model", {}).get("weights_sha256", "")
    problems = []
    if support.config.get("class_names") != list(manifest.class_names):
        problems.append(f"classes {support.config.get('class_names')} vs the model's {manifest.class_names}")
    if trained_for and manifest.weights_sha256 and trained_for != manifest.weights_sha256:
        problems.append("the support models were trained from other classifier weights")
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if any({name: tuple(t.shape) for name, t in state.items()} != expected for state in support.states):
        problems.append("the support models' layers do not match the classifier's architecture")
    if problems:
        raise Conflict(
            f"the GAD artifact does not belong to model {manifest.key}: {'; '.join(problems)}; "
            "train GAD again",
            code="gad_artifact_mismatch",
        )
