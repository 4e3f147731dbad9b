"""GAD, Gradient Artificial Distancing (Mazini Rodrigues, Boutry, Najman; Pattern Recognition Letters 2024).

Training (``train`` queue, once per model version and class pair): fine-tune copies of the classifier
as regressors of its own logits with the other class's logit lowered by alpha, one support model per
alpha. Explaining (``slow`` queue): run a gradient method on the classifier and on every support
model and keep only the pixels important in all of them.

No public implementation exists (../shared/notes/reference-implementations.md, A3). The paper's
stated settings are the defaults here: alphas 2, 4, 6, 8 (its alpha 0 is the classifier itself),
Adam at 4e-5 for 10 epochs, and "the most important half" of the pixels for its convex-hull
metrics. Everything it leaves open is our choice, listed in ``DESIGN_CHOICES`` and repeated in every
artifact's config and every explanation's details.

Queue: ``slow``. A request runs the base method once per model (1 + number of alphas); with
integrated gradients that is 5 x 50 forward/backward passes per image, the cost class of iGOS++
rather than of a single gradient method.
"""

from __future__ import annotations

from collections.abc import Sequence

from xai.errors import InvalidInput
from xai.methods._params import choice
from xai.methods.spec import INTERNAL_BATCH, MethodSpec, Param

BASE_METHODS = ("saliency", "deconvolution", "input_x_gradient", "guided_backprop", "integrated_gradients")
DEFAULT_ALPHAS = "2,4,6,8"
MAX_ALPHAS = 8
REFERENCE = "Mazini Rodrigues, Boutry, Najman 2024, Pattern Recognition Letters, arXiv:2401.14434"

# The paper's open questions and how we answered them (copied into artifact configs and details).
DESIGN_CHOICES = {
    "sample_assignment": (
        "training images are assigned to a class by the classifier's own prediction (arg-max over all "
        "classes), not by labels, so any image folder works and the support models regress what the "
        "classifier decides; images predicted outside the class pair are not used"
    ),
    "regression_targets": (
        "all K logits of the classifier (the pre-softmax outputs), with the other pair class's logit "
        "lowered by alpha; MSE over the K outputs, the network's own output layer is already linear"
    ),
    "fine_tuning_mode": (
        "support copies are fine-tuned in eval mode (batch-norm statistics and dropout frozen), so the "
        "regression is deterministic and only the learned weights differ from the classifier"
    ),
    "importance": (
        "per-pixel importance = the attribution's magnitude summed over channels ('absolute'), or its "
        "signed channel sum clipped at 0 ('positive'): the reduction of the service's own gradient maps"
    ),
    "important_pixels": (
        "a pixel is important in a map when its importance is > 0 and it is among the "
        "ceil(importance_threshold * P) highest of the map's P pixels with importance > 0 (ties at the "
        "cut included)"
    ),
    "gad_map": (
        "the classifier's base-method importance on the pixels important in every map (classifier and "
        "all support models), 0 elsewhere; so GAD never adds a pixel the original map did not rank"
    ),
    "rc": (
        "area of the convex hull of the top hull_top_fraction pixels of the GAD map over that of the "
        "base map (workers.scoring.complexity, pixels as unit squares)"
    ),
    "rs": (
        "|p_t(I) - p_t(I * (1 - M))| / sum(M) with p_t the softmax probability of the target class, "
        "occluded pixels set to 0 (black), M the filled convex hull (pixel centres inside) of the GAD "
        "map's top pixels, or the supplementary mask = base hull minus GAD hull"
    ),
}


def parse_alphas(text: str) -> list[float]:
    """Parse a comma-separated list of distinct positive alphas, e.g. ``"2,4,6,8"``; returned sorted.

    Raises:
        InvalidInput: ``invalid_params`` for an empty list, a non-number, a value outside (0, 100],
            a repeated value or more than ``MAX_ALPHAS`` values.
    """
    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise InvalidInput(
            f"alphas must be comma-separated numbers such as {DEFAULT_ALPHAS!r}, got {text!r}",
            code="invalid_params",
        ) from error
    if not 1 <= len(alphas) <= MAX_ALPHAS or len(set(alphas)) != len(alphas):
        raise InvalidInput(
            f"alphas must list 1 to {MAX_ALPHAS} distinct values, got {text!r}", code="invalid_params"
        )
    if any(not 0 < alpha <= 100 for alpha in alphas):
        raise InvalidInput(f"every alpha must be in (0, 100], got {text!r}", code="invalid_params")
    return sorted(alphas)


def parse_class_pair(text: str, class_names: Sequence[str]) -> tuple[int, int] | None:
    """Parse ``"a,b"`` (class names or indices) into two distinct class indices; ``""`` gives None.

    None means "the model's two classes" and is only valid for a two-class model (checked by training).

    Raises:
        InvalidInput: ``invalid_class_pair`` naming the valid classes.
    """
    if not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    indices = [_class_index(part, class_names) for part in parts]
    if len(indices) != 2 or indices[0] == indices[1]:
        raise InvalidInput(
            f"class_pair must name two different classes, e.g. {class_names[0]},{class_names[1]}; "
            f"got {text!r}",
            code="invalid_class_pair",
        )
    return indices[0], indices[1]


def _class_index(part: str, class_names: Sequence[str]) -> int:
    if part in class_names:
        return list(class_names).index(part)
    if part.isdigit() and int(part) < len(class_names):
        return int(part)
    raise InvalidInput(
        f"{part!r} is not a class of this model; valid: {', '.join(class_names)} "
        f"(or 0..{len(class_names) - 1})",
        code="invalid_class_pair",
    )


SPECS = (
    MethodSpec(
        "gad",
        "GAD (Gradient Artificial Distancing)",
        "slow",
        "Runs a gradient method on the classifier and on support models fine-tuned to push the two "
        "classes' logits apart by each alpha, and keeps only the pixels important in all of them: a "
        "sparser map of the regions that separate the classes. Needs support models trained first "
        "(xai train gad). Also returns the unfiltered base map (image 'base_map') and the RC/RS figures.",
        params=(
            choice(
                "base_method", "integrated_gradients", "Gradient method run on every model (Captum)",
                BASE_METHODS,
            ),
            Param(
                "importance_threshold", "float", 0.5,
                "Share of each map's pixels with non-zero importance counted as important, from the top; "
                "a pixel survives when important in every map (0.5: the paper's 'most important half')",
                0.01, 1.0,
            ),
            choice(
                "sign", "absolute",
                "How channel-summed attributions become importance: absolute value, or positive part only",
                ("absolute", "positive"),
            ),
            Param("n_steps", "int", 50, "Integration steps (integrated_gradients only)", 2, 1000),
            Param(
                "hull_top_fraction", "float", 0.5,
                "Share of pixels whose convex hull gives RC and the occlusion masks of RS (paper: 0.5)",
                0.01, 1.0,
            ),
            choice(
                "support_evaluation", "auto",
                "How the classifier and its support models run: 'batched' in one vectorised pass "
                "(torch.vmap over stacked weights), 'sequential' one after another (same result), or "
                "'auto': batched on CUDA, sequential on the CPU, where bench/bench_gad.py measured the "
                "vectorised (grouped) convolutions slower for 128 x 128 models",
                ("auto", "batched", "sequential"),
            ),
            INTERNAL_BATCH,
        ),
        needs_artifacts=True,
        references=(REFERENCE,),
    ),
)

TRAINING_SPECS = (
    MethodSpec(
        "gad",
        "GAD support models",
        "train",
        "Fine-tunes one copy of the classifier per alpha as a regressor of its own logits, with the other "
        "class's logit lowered by alpha for each class's images (classes as the classifier predicts them). "
        "Defaults are the paper's: alphas 2, 4, 6, 8, Adam, learning rate 4e-5, 10 epochs.",
        params=(
            Param(
                "alphas", "str", DEFAULT_ALPHAS, "Comma-separated distancing values, one support model each"
            ),
            Param("epochs", "int", 10, "Passes over the images per support model", 1, 1000),
            Param("learning_rate", "float", 4e-5, "Adam learning rate", 1e-8, 1.0),
            Param("batch_size", "int", 32, "Images per optimisation step", 1, 4096),
            Param(
                "class_pair", "str", "",
                "The two classes to distance, as 'name,name' or 'index,index'; empty = the two classes of "
                "a binary model (required for models with more classes)",
            ),
            Param("seed", "int", 0, "Seed of the batch order", 0, 2**31 - 1),
        ),
        references=(REFERENCE,),
    ),
)
