"""iGOS++: bilateral mask optimisation with integrated gradients (Khorram et al., ACM-CHIL 2021).

Defaults are the paper's settings (supplementary section C) and the published code's hard-wired
constants (notes: reference-implementations.md, A2), with two of them restated in our units: the
explainer works on images in [0, 1] because the classifier normalises inside itself, whereas the
published code adds its path noise and measures image differences in ImageNet-normalised units
(std about 0.226). Noise std 0.2 there is 0.2 * 0.226 = 0.045 here; BTV sigma 0.01 there is
0.01 * 0.226**2 = 0.0005 here. The published CLI swaps its two iteration flags; these are the
function's own values (15 optimisation iterations, 20 integration steps), as the paper states.
"""

from xai.methods.spec import MethodSpec, Param

SPECS = (
    MethodSpec(
        "igos_pp",
        "iGOS++",
        "slow",
        "Optimises a deletion and an insertion mask with integrated gradients along blur-baseline paths, "
        "L1 and bilateral total variation, and a backtracking line search; the heatmap is 1 minus their "
        "product (high = important). Slow: thousands of forward passes per image at the defaults.",
        params=(
            Param(
                "mask_size", "int", 28,
                "Mask cells along the image's shorter side (e.g. 7, 14, 28, 56, 112, 224, or the input size "
                "for a full-resolution mask); the longer side gets proportionally more cells so cells stay "
                "square. At most the shorter side of the model input.",
                7, 4096,
            ),
            Param("iterations", "int", 15, "Mask update iterations (one progress report each)", 1, 500),
            Param("integration_steps", "int", 20, "Points on each integrated-gradient path", 1, 200),
            Param(
                "l1_weight", "float", 1.0,
                "Weight of the L1 term mean|1 - mask| when the mask is coarser than the input", 0.0, 1000.0,
            ),
            Param(
                "l1_weight_full_resolution", "float", 10.0,
                "Weight of the L1 term when the mask has the input's resolution (the paper raises it there "
                "to avoid a diffuse mask)", 0.0, 1000.0,
            ),
            Param("btv_weight", "float", 20.0, "Weight of the bilateral total variation term", 0.0, 10000.0),
            Param("btv_beta", "float", 2.0, "Exponent of the mask differences in (bilateral) TV", 1.0, 3.0),
            Param(
                "btv_sigma", "float", 0.0005,
                "Bilateral TV image-similarity scale: weight exp(-dI^2 / sigma), dI in [0, 1] pixel units "
                "(the paper's 0.01 in ImageNet-normalised units)",
                1e-6, 10.0,
            ),
            Param(
                "noise_std", "float", 0.045,
                "Std of the Gaussian noise added to every path image, in [0, 1] pixel units (the paper's 0.2 "
                "in ImageNet-normalised units; 0 disables)",
                0.0, 1.0,
            ),
            Param(
                "blur_kernel_fraction", "float", 0.228,
                "Blur baseline kernel side as a fraction of the image's shorter side (51/224 in the paper), "
                "Gaussian sigma = kernel - 1",
                0.01, 1.0,
            ),
            Param("step_size", "float", 1000.0, "Initial step of the backtracking line search", 1e-6, 1e6),
            Param("armijo_beta", "float", 1e-4, "Sufficient-decrease constant of the Armijo rule", 0.0, 1.0),
            Param("step_decay", "float", 0.2, "Factor the step shrinks by on each failed trial", 0.01, 0.99),
            Param("min_step_size", "float", 1e-5, "The line search stops shrinking below this", 1e-12, 1.0),
            Param(
                "line_search_start", "str", "warm",
                "Where each iteration's line search starts: 'warm', one step_decay above the step the "
                "image's last search accepted (capped at step_size; back to step_size after a search that "
                "ran below min_step_size); 'restart', step_size every iteration (the paper)",
                choices=("warm", "restart"),
            ),
            Param(
                "line_search_noise", "str", "shared",
                "Path noise of the line-search trials: 'shared', the noise the iteration's gradient pass "
                "drew, so the trials and the loss at the current mask (taken from the gradient pass's "
                "forward values) see the same noisy objective; 'fresh', a new draw for every evaluation, "
                "the current mask evaluated again first (the paper)",
                choices=("shared", "fresh"),
            ),
            Param(
                "line_search_points", "int", 5,
                "Path points per term in each line-search trial, evenly spaced among the integration "
                "steps and ending at the image (5 of 20: alpha 0.2, 0.4, ..., 1); integration_steps or "
                "more evaluates every point (the paper)", 1, 200,
            ),
            Param(
                "precision", "str", "auto",
                "Arithmetic of the model's forward and backward passes in each iteration's gradient pass: "
                "'auto', bfloat16 autocast on a CPU with AMX bfloat16 units (Intel Sapphire Rapids and later; "
                "about 2.8x faster on a ResNet-18 there) and float32 on any other CPU and on CUDA; 'float32' "
                "(the paper); 'bfloat16', autocast wherever the images are. The line search's evaluations, "
                "the probabilities, masks and their gradients stay float32",
                choices=("auto", "float32", "bfloat16"),
            ),
            Param("seed", "int", 0, "Seed of the path noise (per image, so batching does not change results)",
                  0, 2**31 - 1),
            Param(
                "metric_steps", "int", 50,
                "Steps of the deletion/insertion curves reported for the deletion mask, the insertion mask "
                "and their product (supplementary Table 6)", 2, 1000,
            ),
            Param(
                "internal_batch_size", "int", 64,
                "Most path images evaluated in one forward/backward pass (all integration steps of all "
                "images of one iteration are chunked by this)", 1, 4096,
            ),
        ),
        references=(
            "Khorram, Lawson, Fuxin. iGOS++: Integrated Gradient Optimized Saliency by Bilateral "
            "Perturbations. ACM-CHIL 2021, arXiv:2012.15783",
            "Qi, Khorram, Fuxin. Visualizing Deep Networks by Optimizing with Integrated Gradients. "
            "AAAI 2020",
        ),
    ),
)

# The published line-search schedule, every departure above undone: pass these parameters for it.
PAPER_SCHEDULE = {
    "line_search_start": "restart",
    "line_search_noise": "fresh",
    "line_search_points": 200,
    "precision": "float32",
}
