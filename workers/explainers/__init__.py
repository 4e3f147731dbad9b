"""The explainers, one module per method. ``EXPLAINERS`` maps each API name to its class.

To add a method: write ``workers/explainers/<name>.py`` with an ``Explainer`` subclass whose ``name`` is the
API name, add its spec to ``xai/methods/<family>.py``, then add one import and one entry below (sorted).
"""

from workers.explainers.base import Explainer
from workers.explainers.cyce import CyCE
from workers.explainers.deconvolution import Deconvolution
from workers.explainers.deeplift import DeepLift
from workers.explainers.feature_ablation import FeatureAblation
from workers.explainers.gad import GAD
from workers.explainers.grad_cam import GradCam
from workers.explainers.grad_cam_plus_plus import GradCamPlusPlus
from workers.explainers.gradient_shap import GradientShap
from workers.explainers.guided_backprop import GuidedBackprop
from workers.explainers.guided_grad_cam import GuidedGradCam
from workers.explainers.igos_pp import IgosPP
from workers.explainers.input_x_gradient import InputXGradient
from workers.explainers.integrated_gradients import IntegratedGradients
from workers.explainers.occlusion import Occlusion
from workers.explainers.rise import Rise
from workers.explainers.saliency import Saliency
from workers.explainers.score_cam import ScoreCam
from workers.explainers.shapley_value_sampling import ShapleyValueSampling
from workers.explainers.smoothgrad import SmoothGrad
from workers.explainers.syce import SyCE

EXPLAINERS: dict[str, type[Explainer]] = {
    "cyce": CyCE,
    "deconvolution": Deconvolution,
    "deeplift": DeepLift,
    "feature_ablation": FeatureAblation,
    "gad": GAD,
    "grad_cam": GradCam,
    "grad_cam_plus_plus": GradCamPlusPlus,
    "gradient_shap": GradientShap,
    "guided_backprop": GuidedBackprop,
    "guided_grad_cam": GuidedGradCam,
    "igos_pp": IgosPP,
    "input_x_gradient": InputXGradient,
    "integrated_gradients": IntegratedGradients,
    "occlusion": Occlusion,
    "rise": Rise,
    "saliency": Saliency,
    "score_cam": ScoreCam,
    "shapley_value_sampling": ShapleyValueSampling,
    "smoothgrad": SmoothGrad,
    "syce": SyCE,
}

__all__ = ["EXPLAINERS", "Explainer"]
