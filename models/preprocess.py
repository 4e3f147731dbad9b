"""Canonical image -> model input tensor, and heatmap at model size -> heatmap at image size.

The canonical image (what ingest produces) is ``float32``, ``H x W`` (grey) or ``H x W x 3`` (RGB),
in [0, 1]. The model input is ``1 x C x H' x W'`` at the manifest's size. The image is stretched to
that size (no crop, no padding: aspect ratio is not kept), which is what the demo models were
trained on; a model trained on letterboxed or cropped images should be given images prepared that
way. Both resizes are bilinear; shrinking is antialiased, so a large DICOM does not alias.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.manifest import InputSpec
from xai.errors import InvalidInput

# ITU-R BT.601 luma weights, the grey conversion of PIL ("L") and of DICOM viewers.
LUMA_601 = (0.299, 0.587, 0.114)


def to_model_input(image: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Resize a canonical image to the model's size and channel count.

    Grey -> RGB repeats the grey channel; RGB -> grey takes ITU-R 601 luma. Channels are converted
    on whichever side of the resize is smaller (both steps are linear, so the order does not change
    the result).

    Args:
        image: ``H x W`` or ``H x W x 3`` array in [0, 1] (converted to float32).
        spec: The manifest's input spec (height, width, channels).

    Returns:
        ``1 x C x height x width`` float32 tensor in [0, 1], on the CPU.

    Raises:
        InvalidInput: ``invalid_image_shape`` for any other array shape.
    """
    if image.ndim == 2:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    elif image.ndim == 3 and image.shape[2] == 3:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    else:
        raise InvalidInput(
            f"expected a grey (H x W) or RGB (H x W x 3) image, got an array of shape {image.shape}",
            code="invalid_image_shape",
        )
    if tensor.shape[0] == 3 and spec.channels == 1:
        tensor = torch.einsum("chw,c->hw", tensor, torch.tensor(LUMA_601))[None]
    batch = _resize(tensor[None], (spec.height, spec.width))
    if batch.shape[1] == 1 and spec.channels == 3:
        batch = batch.expand(-1, 3, -1, -1)
    return batch.contiguous()


def heatmap_to_input_size(heatmap: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Bring a heatmap at model input size back to the resolution of the image the caller sent.

    Args:
        heatmap: ``H x W`` map at the model's input size (any device, any float dtype).
        shape: The canonical image's shape (``H x W`` or ``H x W x 3``); the first two are used.

    Returns:
        ``shape[0] x shape[1]`` float32 array (bilinear, antialiased when shrinking).
    """
    resized = _resize(heatmap.detach().float()[None, None], (shape[0], shape[1]))
    return resized[0, 0].cpu().numpy()


def _resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == size:
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
