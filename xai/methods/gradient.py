"""Gradient, CAM and perturbation methods: the catalogue TorchEsegeta wraps, by Captum and pytorch-grad-cam.

Every heatmap is at the model input size, with high = important for the target class. Methods that give one
attribution per channel reduce it to one value per pixel as the ``sign`` parameter says; perturbation methods
report the signed change of the target score when a feature (all channels of a pixel block) is removed.
"""

from xai.methods._params import choice
from xai.methods.spec import INTERNAL_BATCH, MethodSpec, Param, Queue

SIGN = choice(
    "sign", "absolute",
    "How per-channel attributions become one value per pixel: absolute = sum of |a| over channels; "
    "positive = signed sum with negatives set to 0; all = signed sum (negative = evidence against the class)",
    ("absolute", "positive", "all"),
)
BASELINE = choice(
    "baseline", "black",
    "Reference image that stands for 'no information': black (0), white (1) or a Gaussian blur of the input "
    "(sigma = 1/10 of the larger side)",
    ("black", "white", "blur"),
)
SEED = Param("seed", "int", 0, "Seed of the random draws; the same seed gives the same heatmap", 0, 2**31 - 1)
IG_RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")
SMOOTHGRAD_BASES = ("saliency", "integrated_gradients", "input_x_gradient", "guided_backprop")


def _perturbation(
    name: str,
    title: str,
    description: str,
    params: tuple[Param, ...],
    *,
    references: tuple[str, ...],
    seeded: bool = False,
) -> MethodSpec:
    """A slow method that replaces features of the input by a baseline and scores the perturbed copies,
    ``internal_batch_size`` at a time; ``seeded`` when it draws random feature orderings."""
    tail = (BASELINE, SEED, INTERNAL_BATCH) if seeded else (BASELINE, INTERNAL_BATCH)
    return MethodSpec(name, title, "slow", description, params=(*params, *tail), references=references)


def _cam(
    name: str, title: str, queue: Queue, description: str, params: tuple[Param, ...], *, reference: str
) -> MethodSpec:
    """A class activation map: it reads the layer the model manifest names as its target layer."""
    return MethodSpec(
        name, title, queue, description, params=params, needs_target_layer=True, references=(reference,)
    )


SPECS = (
    MethodSpec(
        "saliency",
        "Saliency (input gradient)",
        "fast",
        "Gradient of the target class score with respect to the input pixels, summed over channels.",
        params=(
            Param("abs", "bool", True, "Take the absolute value of the gradient before summing channels"),
        ),
        references=("Simonyan et al. 2014, arXiv:1312.6034",),
    ),
    MethodSpec(
        "integrated_gradients",
        "Integrated Gradients",
        "fast",
        "Path integral of gradients from a baseline image to the input (Riemann/Gauss-Legendre). With "
        "sign=all the heatmap sums to f(input) - f(baseline); details report the gap as convergence_delta.",
        params=(
            Param("n_steps", "int", 50, "Integration steps", 2, 1000),
            BASELINE,
            choice("method", "gausslegendre", "Integration rule", IG_RULES),
            SIGN,
            INTERNAL_BATCH,
        ),
        references=("Sundararajan et al. 2017, arXiv:1703.01365",),
    ),
    MethodSpec(
        "smoothgrad",
        "SmoothGrad (noise tunnel)",
        "fast",
        "A gradient method averaged over noisy copies of the input (Captum NoiseTunnel).",
        params=(
            choice("base", "saliency", "Gradient method applied to each noisy copy", SMOOTHGRAD_BASES),
            choice(
                "nt_type", "smoothgrad", "Average of attributions, of their squares, or their variance",
                ("smoothgrad", "smoothgrad_sq", "vargrad"),
            ),
            Param("nt_samples", "int", 25, "Noisy copies per image", 1, 1000),
            Param(
                "stdev", "float", 0.15,
                "Standard deviation of the Gaussian noise, in image range units [0, 1]", 0.0, 1.0,
            ),
            Param("n_steps", "int", 20, "Integration steps when base is integrated_gradients", 2, 1000),
            SIGN,
            SEED,
            INTERNAL_BATCH,
        ),
        references=(
            "Smilkov et al. 2017, arXiv:1706.03825",
            "Adebayo et al. 2018, arXiv:1810.03307 (VarGrad)",
        ),
    ),
    MethodSpec(
        "input_x_gradient",
        "Gradient x Input",
        "fast",
        "Input times the gradient of the target class score.",
        params=(SIGN,),
        references=("Shrikumar et al. 2016, arXiv:1605.01713",),
    ),
    MethodSpec(
        "guided_backprop",
        "Guided Backpropagation",
        "fast",
        "Gradient in which every ReLU also passes only positive gradients back.",
        params=(SIGN,),
        references=("Springenberg et al. 2015, arXiv:1412.6806",),
    ),
    MethodSpec(
        "deconvolution",
        "Deconvolution",
        "fast",
        "Backpropagation in which ReLUs pass positive gradients regardless of their forward input. Known to "
        "depend little on the class and on upper layers (Adebayo et al. 2018); use it as a reference.",
        params=(SIGN,),
        references=("Zeiler and Fergus 2014, arXiv:1311.2901",),
    ),
    MethodSpec(
        "deeplift",
        "DeepLIFT (rescale rule)",
        "fast",
        "Contributions of each pixel's difference from a baseline, propagated with the rescale rule. Needs "
        "ReLU and other non-linearities as modules (nn.ReLU), not functional calls.",
        params=(BASELINE, SIGN),
        references=("Shrikumar et al. 2017, arXiv:1704.02685",),
    ),
    MethodSpec(
        "gradient_shap",
        "GradientSHAP",
        "fast",
        "Expected gradients: gradients at random points between the input and random baselines, times "
        "(input - baseline), averaged.",
        params=(
            choice(
                "baselines", "black_white",
                "Baseline distribution: black and white images, black only, or 8 uniform noise images",
                ("black_white", "black", "uniform_noise"),
            ),
            Param("n_samples", "int", 20, "Random samples per image", 1, 1000),
            Param(
                "stdev", "float", 0.0, "Gaussian noise added to each sample, in image range units", 0.0, 1.0
            ),
            SIGN,
            SEED,
            INTERNAL_BATCH,
        ),
        references=("Lundberg and Lee 2017, arXiv:1705.07874", "Erion et al. 2021, arXiv:1906.10670"),
    ),
    _perturbation(
        "occlusion",
        "Occlusion",
        "Drop of the target class score when a square window is replaced by the baseline, averaged over the "
        "windows that cover each pixel. Cost: one forward pass per window position.",
        (
            Param(
                "window", "int", 16, "Side of the occluding window in pixels (clipped to the image)", 1, 4096
            ),
            Param("stride", "int", 8, "Step between window positions in pixels", 1, 4096),
        ),
        references=("Zeiler and Fergus 2014, arXiv:1311.2901",),
    ),
    _perturbation(
        "feature_ablation",
        "Feature ablation (grid)",
        "Drop of the target class score when each cell of a regular grid is replaced by the baseline.",
        (Param("grid", "int", 16, "Cells per image side; each cell is one feature", 2, 256),),
        references=("Captum FeatureAblation; TorchEsegeta, Chatterjee et al. 2022, arXiv:2107.08257",),
    ),
    _perturbation(
        "shapley_value_sampling",
        "Shapley value sampling (grid)",
        "Shapley values of the cells of a coarse grid, estimated from random feature orderings. Cost: "
        "n_samples x grid^2 forward passes per image.",
        (
            Param("grid", "int", 8, "Cells per image side; each cell is one player", 2, 32),
            Param("n_samples", "int", 25, "Random orderings of the cells", 1, 1000),
        ),
        seeded=True,
        references=("Castro et al. 2009, doi:10.1016/j.cor.2008.04.004", "Strumbelj and Kononenko 2010"),
    ),
    _cam(
        "grad_cam",
        "Grad-CAM",
        "fast",
        "Class activation map of the manifest's target layer weighted by pooled gradients, upsampled "
        "bilinearly.",
        (Param("relu", "bool", True, "Keep only positive evidence"),),
        reference="Selvaraju et al. 2017, arXiv:1610.02391",
    ),
    _cam(
        "guided_grad_cam",
        "Guided Grad-CAM",
        "fast",
        "Guided backpropagation multiplied by the (positive) Grad-CAM map of the target layer.",
        (SIGN,),
        reference="Selvaraju et al. 2017, arXiv:1610.02391",
    ),
    _cam(
        "grad_cam_plus_plus",
        "Grad-CAM++",
        "fast",
        "Class activation map with weights from positive higher-order gradients; scaled to [0, 1] per image.",
        (),
        reference="Chattopadhyay et al. 2018, arXiv:1710.11063",
    ),
    _cam(
        "score_cam",
        "Score-CAM",
        "slow",
        "Class activation map weighted by the score of the input masked with each channel of the target "
        "layer; scaled to [0, 1] per image. Cost: one forward pass per channel of the target layer.",
        (INTERNAL_BATCH,),
        reference="Wang et al. 2020, arXiv:1910.01279",
    ),
    MethodSpec(
        "rise",
        "RISE (randomized input sampling)",
        "slow",
        "Average of random smooth masks weighted by the target class probability of the masked input.",
        params=(
            Param("n_masks", "int", 2000, "Random masks", 1, 20000),
            Param("grid", "int", 7, "Cells per side of each coarse random mask before upsampling", 2, 64),
            Param("keep_probability", "float", 0.5, "Probability that a coarse cell is kept", 0.05, 0.95),
            SEED,
            INTERNAL_BATCH,
        ),
        references=("Petsiuk et al. 2018, arXiv:1806.07421",),
    ),
)
