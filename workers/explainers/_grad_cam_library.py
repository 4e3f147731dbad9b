"""Running a pytorch-grad-cam method on a batch, with its hooks released whatever happens, and the base of
the explainers that do."""

from __future__ import annotations

import contextlib
import io
from typing import ClassVar

import torch
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from workers.explainers._catalogue import CatalogueExplainer


def library_cam(
    cam_class: type[BaseCAM],
    model: nn.Module,
    layer: nn.Module,
    images: torch.Tensor,
    targets: list[int],
    batch_size: int | None = None,
) -> torch.Tensor:
    """Run ``cam_class`` on ``images`` for per-image ``targets``; return ``B x H x W`` maps in [0, 1].

    Args:
        cam_class: A pytorch-grad-cam method (``GradCAMPlusPlus``, ``ScoreCAM``...).
        model: The model to run (it is put in eval mode by the library; the caller's guard restores it).
        layer: The target layer.
        images: ``B x C x H x W`` inputs; not modified.
        targets: One class index per image.
        batch_size: Masked copies per forward pass, for methods that make them (Score-CAM).

    The library object is released in ``finally`` rather than used as a context manager, because
    ``BaseCAM.__exit__`` prints and swallows ``IndexError`` (a target out of range would pass silently).
    """
    cam = cam_class(model=model, target_layers=[layer])
    if batch_size is not None:
        cam.batch_size = batch_size  # ScoreCAM reads this undeclared attribute, else uses 16
    # A clone that requires grad: the gradient reaches the layer even when every parameter is frozen.
    inputs = images.detach().clone().requires_grad_(cam.uses_gradients)
    try:
        # The library draws a tqdm bar per image on stderr; progress is reported through the model instead.
        with contextlib.redirect_stderr(io.StringIO()):
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(target) for target in targets])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(maps).to(images.device)


class LibraryCam(CatalogueExplainer):
    """A CAM method computed by pytorch-grad-cam on the manifest's target layer (maps scaled to [0, 1])."""

    needs_target_layer: ClassVar[bool] = True
    # The library converts activations to NumPy, which has no bfloat16.
    supports_autocast: ClassVar[bool] = False
