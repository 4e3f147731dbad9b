"""Explanation-quality metrics a caller can ask for: infidelity, max-sensitivity, model randomisation.

- ``infidelity`` (Yeh et al., 2019) through ``captum.metrics.infidelity``: how well the heatmap, read
  as a linear model of the classifier, predicts the change of the target logit under small noise.
- ``max_sensitivity`` (Yeh et al., 2019) through ``captum.metrics.sensitivity_max``: how much the
  heatmap changes when the image moves a little.
- ``randomisation_check`` (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): the heatmap of
  the trained model against that of a copy whose top layers are re-initialised, cascading downwards.

Methods are passed as plain callables so this module works for every explainer::

    explain_fn = lambda images, targets: explainer.explain(images, targets, params).heatmaps

``explain_fn(images: B x C x H x W, targets: list[int]) -> B x H x W heatmaps``. Each function takes one
image (``1 x C x H x W`` in [0, 1], on the model's device) and returns a JSON-safe dict with its
settings stated.

Example:
    >>> check = randomisation_check(model, lambda m: make_saliency(m), image, target=1, layers="all")
    >>> check["spearman"]  # near 1: the method ignores what the model learned
    0.12
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max
from scipy.stats import spearmanr
from torch import nn

from models.guard import model_left_as_found
from workers.scoring import _check_heatmap, _check_single_image

ExplainFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


def infidelity(
    model: nn.Module,
    image: torch.Tensor,
    heatmap: torch.Tensor,
    target: int,
    *,
    noise_std: float = 0.003,
    n_perturb_samples: int = 10,
    normalize: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Infidelity of a heatmap: ``E[(I . heatmap - (f(x) - f(x - I)))^2]`` over Gaussian perturbations I.

    The heatmap has one value per pixel, so the perturbation is one Gaussian value per pixel shared by
    all channels; then ``I . heatmap`` is exactly the heatmap's linear prediction of the logit change.
    Perturbed images are clipped to [0, 1] and I is recomputed as ``x - clip(x - noise)``, so the
    model only sees valid images and the formula stays exact.

    Args:
        model: a classifier taking ``B x C x H x W`` images in [0, 1] and returning ``B x K`` logits.
        image: ``1 x C x H x W`` in [0, 1], on the model's device.
        heatmap: ``H x W``.
        target: the class whose logit is followed.
        noise_std: standard deviation of the per-pixel noise (default 0.003).
        n_perturb_samples: perturbations averaged (default 10): that many extra forward passes.
        normalize: scale the heatmap by the least-squares optimal factor first (default True), since
            heatmaps come in arbitrary units (CAMs are rescaled to [0, 1]); the value then says how well
            the heatmap's *shape* predicts the model.
        seed: seed of the perturbations (default 0).

    Returns:
        ``{"infidelity": float (lower is better), "settings": {...}}``.

    Raises:
        ValueError: the image is not ``1 x C x H x W`` or the heatmap is not a finite ``H x W`` map.
    """
    _check_single_image(image)
    _check_heatmap(heatmap, tuple(image.shape[-2:]))
    generator = torch.Generator(device=image.device).manual_seed(seed)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise_shape = (inputs.shape[0], 1, *inputs.shape[2:])
        noise = torch.randn(noise_shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        perturbed = (inputs - noise_std * noise).clamp(0.0, 1.0)
        return inputs - perturbed, perturbed

    channels = image.shape[1]
    # Captum sums attribution * perturbation over channels too; a share of 1/C per channel keeps it exact.
    attributions = (heatmap.to(image) / channels).expand_as(image)
    with model_left_as_found(model):
        value = captum_infidelity(
            model, perturb, image, attributions,
            target=target, n_perturb_samples=n_perturb_samples, normalize=normalize,
        )
    return {
        "infidelity": float(value[0]),
        "settings": {
            "perturbation": f"x - clip(x - N(0, {noise_std}^2), 0, 1), one noise value per pixel",
            "n_perturb_samples": n_perturb_samples,
            "normalize": normalize,
            "output": "logit of the target class",
            "seed": seed,
            "direction": "lower is better",
        },
    }


def max_sensitivity(
    explain_fn: ExplainFn,
    image: torch.Tensor,
    target: int,
    *,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 5,
    seed: int = 0,
    max_examples_per_batch: int | None = None,
) -> dict[str, Any]:
    """Largest relative change of the heatmap, ``||E(x + d) - E(x)|| / ||E(x)||``, over random small d.

    d is uniform in the L-infinity ball of ``perturb_radius`` (Captum's default perturbation), each
    perturbed image clipped to [0, 1]; norms are Frobenius.

    Args:
        explain_fn: ``(images B x C x H x W, targets list[int]) -> B x H x W`` heatmaps. It runs with
            gradients enabled even though Captum calls it under ``torch.no_grad``.
        image: ``1 x C x H x W`` in [0, 1].
        target: the class explained.
        perturb_radius: L-infinity radius of the perturbation (default 0.02).
        n_perturb_samples: perturbations tried (default 5): that many extra explanations.
        seed: seed of the perturbations (default 0).
        max_examples_per_batch: perturbed images per ``explain_fn`` call (default: all at once).

    Returns:
        ``{"max_sensitivity": float (lower is better), "settings": {...}}``.

    Raises:
        ValueError: the image is not ``1 x C x H x W``.
    """
    _check_single_image(image)
    generator = torch.Generator(device=image.device).manual_seed(seed)

    def perturb(inputs: torch.Tensor, radius: float) -> torch.Tensor:
        noise = torch.empty_like(inputs).uniform_(-radius, radius, generator=generator)
        return (inputs + noise).clamp(0.0, 1.0)

    def explanation(inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        # Captum passes a tuple on the first call and iterates over what comes back, so always a tuple.
        images = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():
            return (explain_fn(images, [target] * images.shape[0]).detach(),)

    value = sensitivity_max(
        explanation, image, perturb_func=perturb, perturb_radius=perturb_radius,
        n_perturb_samples=n_perturb_samples, max_examples_per_batch=max_examples_per_batch,
    )
    return {
        "max_sensitivity": float(value[0]),
        "settings": {
            "perturbation": f"clip(x + U(-{perturb_radius}, {perturb_radius}), 0, 1), independent per value",
            "n_perturb_samples": n_perturb_samples,
            "norm": "frobenius, relative to the unperturbed heatmap",
            "seed": seed,
            "direction": "lower is better",
        },
    }


def randomisation_check(
    model: nn.Module,
    explain_fn_factory: Callable[[nn.Module], ExplainFn],
    image: torch.Tensor,
    target: int,
    *,
    layers: int | Literal["top", "all"] = "top",
    seed: int = 0,
    trained_heatmap: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Cascading model-parameter randomisation (Adebayo et al., 2018) on a deep copy of the model.

    Parametrised layers are the modules that own parameters and have ``reset_parameters`` (Linear,
    convolutions, normalisation layers), ordered from the output back to the input by registration
    order. Starting at the top, one more layer per stage is re-initialised with PyTorch's default
    initialisation (``reset_parameters``, which also resets batch-norm running statistics), and the
    heatmap of the copy is compared with that of the trained model by Spearman rank correlation over
    pixels. A correlation near 1 means the heatmap does not depend on what the model learned. The model
    passed in is never modified.

    Args:
        model: the trained classifier.
        explain_fn_factory: builds ``explain_fn(images, targets) -> B x H x W`` heatmaps for a model.
        image: ``1 x C x H x W`` in [0, 1], on the model's device.
        target: the class explained.
        layers: ``"top"`` (default: the last layer only), an int n (the top n layers, one stage each)
            or ``"all"`` (every parametrised layer): one extra explanation per stage.
        seed: seed of the re-initialisation (default 0); the global RNG state is left as found.
        trained_heatmap: the trained model's ``H x W`` heatmap, if already computed.

    Returns:
        ``spearman`` (after the last stage; ``None`` if a heatmap is constant), ``cascade`` (one
        ``{"layer", "spearman"}`` per stage, top first) and ``settings``.

    Raises:
        ValueError: the model has no parametrised layer, or ``layers`` is not "top", "all" or a
            positive int.
    """
    _check_single_image(image)
    randomised = copy.deepcopy(model)
    named_layers = _layers_to_randomise(randomised, layers)
    if trained_heatmap is None:
        trained_heatmap = _heatmap(explain_fn_factory(model), image, target)
    devices = sorted({p.device.index for p in randomised.parameters() if p.device.type == "cuda"})

    cascade = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, layer in named_layers:
            layer.reset_parameters()
            heatmap = _heatmap(explain_fn_factory(randomised), image, target)
            cascade.append({"layer": name, "spearman": _spearman(trained_heatmap, heatmap)})
    return {
        "spearman": cascade[-1]["spearman"],
        "cascade": cascade,
        "settings": {
            "layers": [name for name, _ in named_layers],
            "order": "cascading from the output layer down, one more layer per stage",
            "reinitialisation": "torch reset_parameters (PyTorch default initialisation)",
            "correlation": "Spearman rank correlation over pixels of the heatmaps as returned",
            "seed": seed,
            "direction": "near 1 means the method ignores the model; lower is better",
        },
    }


def _layers_to_randomise(model: nn.Module, layers: int | str) -> list[tuple[str, nn.Module]]:
    """The top parametrised layers of ``model``, output side first."""
    parametrised = [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))
    ]
    if not parametrised:
        raise ValueError("the model has no layer with parameters to randomise")
    if layers == "top":
        count = 1
    elif layers == "all":
        count = len(parametrised)
    elif isinstance(layers, int) and not isinstance(layers, bool) and layers > 0:
        count = min(layers, len(parametrised))
    else:
        raise ValueError(f"layers must be 'top', 'all' or a positive int, got {layers!r}")
    return parametrised[::-1][:count]


def _heatmap(explain_fn: ExplainFn, image: torch.Tensor, target: int) -> torch.Tensor:
    return explain_fn(image, [target])[0].detach()


def _spearman(first: torch.Tensor, second: torch.Tensor) -> float | None:
    a = first.float().cpu().numpy().ravel()
    b = second.float().cpu().numpy().ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # rank correlation is undefined for a constant map
    return float(spearmanr(a, b).statistic)
