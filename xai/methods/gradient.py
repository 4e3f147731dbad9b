"""Gradient and CAM methods (Captum, pytorch-grad-cam)."""

from xai.methods.spec import INTERNAL_BATCH, MethodSpec, Param

SPECS = (
    MethodSpec(
        "saliency",
        "Saliency (input gradient)",
        "fast",
        "Absolute gradient of the target class score with respect to the input pixels.",
        params=(Param("abs", "bool", True, "Take the absolute value of the gradient"),),
        references=("Simonyan et al. 2014, arXiv:1312.6034",),
    ),
    MethodSpec(
        "integrated_gradients",
        "Integrated Gradients",
        "fast",
        "Path integral of gradients from a baseline image to the input (Riemann/Gauss-Legendre).",
        params=(
            Param("n_steps", "int", 50, "Integration steps", 2, 1000),
            Param("baseline", "str", "black", "Path start image", choices=("black", "white", "blur")),
            Param(
                "method", "str", "gausslegendre", "Integration rule",
                choices=("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre"),
            ),
            INTERNAL_BATCH,
        ),
        references=("Sundararajan et al. 2017, arXiv:1703.01365",),
    ),
    MethodSpec(
        "grad_cam",
        "Grad-CAM",
        "fast",
        "Class activation map of the manifest's target layer weighted by pooled gradients, upsampled.",
        params=(Param("relu", "bool", True, "Keep only positive evidence"),),
        needs_target_layer=True,
        references=("Selvaraju et al. 2017, arXiv:1610.02391",),
    ),
)
