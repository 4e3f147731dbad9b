"""Running a model without leaving a trace on it: mode, grad flags and hooks restored afterwards.

Explainers, metrics and the training code that runs a classifier it must not change all use this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def model_left_as_found(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the duration and restore mode, grad flags and hooks after.

    Hooks are compared by handle id: any forward/backward hook a library forgot to remove is removed here.
    """
    modes = {module: module.training for module in model.modules()}
    grad_flags = {param: param.requires_grad for param in model.parameters()}
    hook_ids = {module: _hook_ids(module) for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for param, flag in grad_flags.items():
            param.requires_grad_(flag)
            param.grad = None
        for module, before in hook_ids.items():
            for hooks in _hook_dicts(module):
                for key in [k for k in hooks if k not in before]:
                    del hooks[key]


def _hook_dicts(module: nn.Module) -> list[dict]:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [getattr(module, name) for name in names if hasattr(module, name)]


def _hook_ids(module: nn.Module) -> set:
    return {key for hooks in _hook_dicts(module) for key in hooks}


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits for all images in eval mode, in chunks on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    with model_left_as_found(model), torch.inference_mode():
        return torch.cat([model(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])
