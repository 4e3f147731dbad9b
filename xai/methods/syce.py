"""SyCE and CyCE: explanations from conditional generators trained once per classifier. Torch-free.

``SPECS`` are the request-time methods (fast queue: two generator passes per image). ``TRAINING_SPECS``
are the training jobs that produce their artifacts (train queue), with the paper's hyper-parameters
as defaults; their ``variant`` parameter tells ``models.training.syce.train`` which one it runs.
``PRESETS`` holds the loss weights and batch sizes of the paper's supplementary tables 3(a) (CyCE)
and 3(b) (SyCE), ResNet-50 rows, for its three problems; a training parameter left at ``None`` takes
the chosen preset's value.
"""

from __future__ import annotations

from xai.errors import InvalidInput
from xai.methods._params import choice
from xai.methods.spec import MethodSpec, Param

PAPER = "Charachon et al. 2021, Leveraging Conditional Generative Models in a General Explanation Framework"
VARIANTS = ("syce", "cyce")

# Loss-term names (also the training parameter names):
#   weight_symmetry        ||x - G(G(x))||, MSE + MAE            (SyCE only)
#   weight_cycle           ||x - G'(G(x))||, MSE + MAE
#   weight_adversarial     BCE(opposite side, f(G(x)))
#   weight_symmetry_class  BCE(own side, f(G(G(x))))             (SyCE only)
#   weight_cycle_class     BCE(own side, f(G'(G(x))))
#   weight_gan             generator's GAN term, BCE(real, D'(G(x)))
#   weight_discriminator   discriminators' real/fake BCE
#   weight_gradient_penalty  (||grad D(interpolate)|| - 1)^2 on the discriminators
#   weight_specificity     BCE(own side, f(x' + G(x) - x)) for another image x' of the batch (ours,
#                          not in the paper; default 0 = the paper's objective)
#   weight_smoothness      roughness of G(x) - x (and, SyCE, of G(G(x)) - G(x)) (ours, default 0)
#   weight_fold            folds of a warp generator's field, every pass (ours, default 0)
#   weight_displacement    mean length of a warp generator's field in pixels, every pass (ours, default 0)
# The paper's tables as printed: one row of values per problem, in the order of the variant's columns.
_PRESET_COLUMNS = {
    "syce": (
        "weight_symmetry", "weight_cycle", "weight_adversarial", "weight_symmetry_class",
        "weight_cycle_class", "weight_gan", "weight_discriminator", "weight_gradient_penalty", "batch_size",
    ),
    "cyce": (
        "weight_cycle", "weight_adversarial", "weight_cycle_class", "weight_gan", "weight_discriminator",
        "weight_gradient_penalty", "batch_size",
    ),
}
_PRESET_ROWS = {
    "syce": {
        "digits": (10.0, 2.0, 0.2, 0.01, 0.005, 0.25, 1.0, 1.0, 64),
        "pneumonia": (10.0, 2.0, 0.05, 0.01, 0.001, 0.05, 1.0, 1.0, 8),
        "brain_tumour": (20.0, 1.0, 0.2, 0.05, 0.01, 0.025, 1.0, 1.0, 8),
    },
    "cyce": {
        "digits": (10.0, 0.2, 0.005, 0.25, 1.0, 1.0, 64),
        "pneumonia": (10.0, 0.05, 0.01, 0.025, 1.0, 1.0, 8),
        "brain_tumour": (20.0, 0.1, 0.01, 0.05, 1.0, 1.0, 8),
    },
}
PRESETS: dict[str, dict[str, dict[str, float]]] = {
    variant: {
        problem: dict(zip(_PRESET_COLUMNS[variant], row, strict=True)) for problem, row in rows.items()
    }
    for variant, rows in _PRESET_ROWS.items()
}
PRESET_NAMES = ("auto", "digits", "pneumonia", "brain_tumour")


def resolve_preset(variant: str, preset: str, height: int, width: int) -> tuple[str, dict[str, float]]:
    """The preset to use and its values; ``"auto"`` is ``digits`` up to 32 px, else ``pneumonia``.

    Raises:
        InvalidInput: ``invalid_params`` for an unknown variant or preset.
    """
    if variant not in PRESETS:
        raise InvalidInput(
            f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}", code="invalid_params"
        )
    if preset == "auto":
        preset = "digits" if min(height, width) <= 32 else "pneumonia"
    if preset not in PRESETS[variant]:
        raise InvalidInput(
            f"unknown preset {preset!r}; valid: {', '.join(PRESET_NAMES)}", code="invalid_params"
        )
    return preset, PRESETS[variant][preset]


def _weight(name: str, description: str) -> Param:
    return Param(name, "float", None, f"{description}; null = the preset's value", 0.0, 1000.0)


def _training_params(variant: str) -> tuple[Param, ...]:
    symmetry = (
        (
            _weight("weight_symmetry", "Symmetry reconstruction ||x - G(G(x))|| (MSE + MAE)"),
            _weight("weight_symmetry_class", "Classification of G(G(x)) as the input's side"),
        )
        if variant == "syce"
        else ()
    )
    return (
        choice("variant", variant, "Which generators to train (set by the method trained)", (variant,)),
        choice("preset", "auto", "Paper's weight table to start from (auto: by input size)", PRESET_NAMES),
        Param("epochs", "int", 80, "Training epochs (the paper trains 80)", 1, 1000),
        Param(
            "batch_size", "int", None, "Images per decision side per step; null = preset (64 digits, 8 else)",
            1, 512,
        ),
        Param("lr_generator", "float", 1e-4, "Adam learning rate of the generators", 1e-7, 1.0),
        Param("lr_discriminator", "float", 2e-4, "Adam learning rate of the discriminators", 1e-7, 1.0),
        Param("discriminator_steps", "int", 1, "Discriminator updates per generator update", 1, 10),
        *symmetry,
        _weight("weight_cycle", "Cycle reconstruction ||x - G'(G(x))|| (MSE + MAE)"),
        _weight("weight_adversarial", "Classification of G(x) as the opposite side"),
        _weight("weight_cycle_class", "Classification of G'(G(x)) as the input's side"),
        _weight("weight_gan", "Generator GAN term"),
        _weight("weight_discriminator", "Discriminator real/fake term"),
        _weight("weight_gradient_penalty", "Gradient penalty on the discriminators"),
        Param(
            "weight_specificity", "float", 0.0,
            "Not in the paper: another image of the batch plus this image's change G(x) - x must keep "
            "its decision, so that the change is a counterfactual of x and not a universal adversarial "
            "pattern (which a fragile classifier admits); 0 = the paper's objective", 0.0, 1000.0,
        ),
        Param(
            "weight_smoothness", "float", 0.0,
            "Not in the paper: roughness (mean |change - its 3 x 3 box blur|) of the change G(x) - x "
            "plus, for SyCE, of G(G(x)) - G(x), against checkerboard and stripe textures that flip a "
            "fragile classifier; 0 = the paper's objective", 0.0, 1000.0,
        ),
        Param(
            "weight_proximity", "float", 0.0,
            "Not in the paper: the mean absolute change |G(x) - x| of the adversarial image, so the "
            "generator changes no more of the image than it needs to flip the decision (a "
            "counterfactual's proximity); 0 = the paper's objective", 0.0, 1000.0,
        ),
        Param(
            "weight_outside_finding", "float", 0.0,
            "Not in the paper: the mean change |G(x) - x| (and for SyCE |G(G(x)) - G(x)|) farther than "
            "finding_margin_px from each training image's annotated finding, so the generators learn to "
            "edit the finding and its surroundings; needs a mask per training image (masks); 0 = the "
            "paper's objective", 0.0, 1000.0,
        ),
        Param(
            "finding_margin_px", "int", 16,
            "How far around the finding weight_outside_finding lets the change reach, in pixels at the "
            "model's input size", 0, 256,
        ),
        Param(
            "weight_fold", "float", 0.0,
            "Not in the paper, warp generators only (warp_grid > 0): mean max(0, 0.5 - det J) of the "
            "Jacobian J of every pass's warp, against fields that fold the image or enlarge a spot of it "
            "over 2x in area, so a fine field moves tissue smoothly; 0 = the paper's objective", 0.0, 1000.0,
        ),
        Param(
            "weight_displacement", "float", 0.0,
            "Not in the paper, warp generators only (warp_grid > 0): mean |dx| + |dy| in pixels of every "
            "pass's warp, so the generator moves as little of the image as it can instead of shifting "
            "whole tissue layers; 0 = the paper's objective", 0.0, 1000.0,
        ),
        Param(
            "base_width", "int", 16, "Generator width at full resolution (doubles per level, max 4x)", 4, 64
        ),
        Param("dropout", "float", 0.0, "Generator channel dropout (the paper allows 0.1-0.2)", 0.0, 0.5),
        Param(
            "warp_grid", "int", 0,
            "Not in the paper: when above 0 the generators move the image's content by a smooth "
            "displacement field on this many cells a side instead of adding a change to it, so they "
            "cannot paint a pattern onto it; 0 = the paper's additive generator", 0, 64,
        ),
        Param(
            "change_grid", "int", 0,
            "Not in the paper: when above 0 the additive change is smooth on this many cells a side, so "
            "it can brighten or darken a region but not paint dots or stripes finer than a cell; 0 = the "
            "paper's pixel-wise change (excludes warp_grid)", 0, 64,
        ),
        Param("augment", "bool", False, "Random rotation (5 degrees) and zoom (0.8-1) of training images"),
        Param(
            "validation_fraction", "float", 0.1, "Images held out to measure the flip rate each epoch",
            0.0, 0.5,
        ),
        Param("seed", "int", 0, "Seed of initialisation, sampling and augmentation", 0, 2**31 - 1),
    )


def _explanation_spec(variant: str, title: str, description: str, images: str) -> MethodSpec:
    """The request-time method of ``variant``: it needs that variant's trained artifact."""
    return MethodSpec(
        variant,
        title,
        "fast",
        f"{description} Needs a trained {variant!r} artifact.",
        params=(Param("return_images", "bool", True, f"Return the {images}"),),
        needs_artifacts=True,
        references=(PAPER, "github.com/martinCharachon/cGANsExplainer"),
    )


SPECS = (
    _explanation_spec(
        "syce",
        "SyCE (symmetrically conditioned explanation)",
        "Two trained generators: x_a = G(x) is classified the other way, x_st = G(x_a) returns to the "
        "input's side; the explanation is |x_st - x_a| (channel mean).",
        "adversarial and stable images",
    ),
    _explanation_spec(
        "cyce",
        "CyCE (cyclic conditioned explanation)",
        "A trained generator makes a counterfactual G(x) classified the other way; the explanation is "
        "|x - G(x)| (channel mean).",
        "counterfactual image",
    ),
)

TRAINING_SPECS = tuple(
    MethodSpec(
        variant,
        f"Train {variant.upper()} generators",
        "train",
        "Train two U-Net generators and two discriminators against the registered classifier, on images "
        "split by the classifier's own decisions (one class against the rest for multi-class models).",
        params=_training_params(variant),
        takes_masks=True,
        references=(PAPER,),
    )
    for variant in VARIANTS
)


def training_spec(variant: str) -> MethodSpec:
    """The training spec of "syce" or "cyce".

    Raises:
        InvalidInput: ``invalid_params`` for another name.
    """
    for spec in TRAINING_SPECS:
        if spec.name == variant:
            return spec
    raise InvalidInput(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}", code="invalid_params")
