"""Training images from a folder: every PNG, JPEG, TIFF or DICOM file under it, as model-input tensors.

Files are decoded exactly as the gateway decodes an upload (``xai.imaging.decode_image``: format
sniffed from the bytes, DICOM LUTs and MONOCHROME1 applied) and resized as a worker resizes a
request (``models.preprocess.to_model_input``), so a model trained here sees what it will be served.

Example:
    >>> images, labels, paths = load_image_folder(Path("busi"), spec, ["benign", "malignant"])
    >>> regions = load_masks(Path("busi/masks"), Path("busi/images"), paths, spec)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.manifest import InputSpec
from models.preprocess import to_model_input
from xai.errors import InvalidInput, ServiceError
from xai.imaging import DecodeLimits, decode_image


def load_image_folder(
    folder: Path,
    input_spec: InputSpec,
    class_names: Sequence[str] | None = None,
    *,
    limits: DecodeLimits | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[Path]]:
    """Load every image under ``folder`` (recursively, sorted by path) at the model's input size.

    Files whose bytes are not an image format (a CSV, a README) are skipped; hidden files too.
    Multi-frame DICOM files give their first frame.

    Args:
        folder: The folder to read.
        input_spec: Size and channels of the returned tensors.
        class_names: When every image lies under a first-level sub-folder named after one of these,
            labels are the index of that name. Default: None (no labels).
        limits: Decoding limits per file. Default: ``DecodeLimits()``.

    Returns:
        ``N x C x H x W`` float32 images in [0, 1], ``N`` labels (LongTensor) or None, and the paths.

    Raises:
        InvalidInput: ``no_images`` when the folder holds no image.
        ServiceError: The decoding error of the first broken image file, its path in the message.
    """
    folder = Path(folder)
    limits = limits or DecodeLimits()
    tensors, paths = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))):
        pixels = read_image(path, limits)
        if pixels is not None:
            tensors.append(to_model_input(pixels, input_spec)[0])
            paths.append(path)
    if not tensors:
        raise InvalidInput(f"no PNG, JPEG, TIFF or DICOM image found under {folder}", code="no_images")
    return torch.stack(tensors), _labels(folder, paths, class_names), paths


def load_masks(folder: Path, images_folder: Path, paths: Sequence[Path], input_spec: InputSpec) -> torch.Tensor:
    """The mask of each image in ``paths`` (found under ``images_folder``), at the model's input size.

    Image ``images_folder/a/b.png`` takes its mask from ``folder/a/b.png`` (same relative path; any
    format ``load_image_folder`` reads). A mask pixel above half the intensity range marks the
    image's annotated finding.

    Returns:
        ``N x 1 x H x W`` float32, 1 on the finding and 0 elsewhere.

    Raises:
        InvalidInput: ``invalid_training_data`` when an image has no mask file or the file is not an image.
    """
    grey = InputSpec(height=input_spec.height, width=input_spec.width, channels=1)
    limits, masks = DecodeLimits(), []
    for path in paths:
        relative = Path(path).relative_to(images_folder)
        pixels = read_image(Path(folder) / relative, limits) if (Path(folder) / relative).is_file() else None
        if pixels is None:
            raise InvalidInput(f"training image {relative} has no mask image at {Path(folder) / relative}: every "
                               "image needs one, under its own relative path", code="invalid_training_data")
        masks.append((to_model_input(pixels, grey)[0] > 0.5).float())
    return torch.stack(masks)


def away_from(mask: torch.Tensor, margin_px: int) -> torch.Tensor:
    """``1 - `` the ``B x 1 x H x W`` ``mask`` grown by ``margin_px`` (chessboard distance, max pooling): 1
    where a pixel is farther than that from every pixel of the mask, for a 0 / 1 mask."""
    return 1 - F.max_pool2d(mask, 2 * margin_px + 1, stride=1, padding=margin_px)


def read_image(path: Path, limits: DecodeLimits) -> np.ndarray | None:
    """The canonical image of one file (first frame of a multi-frame DICOM), or None if not an image."""
    try:
        return decode_image(path.read_bytes(), limits=limits).pixels
    except ServiceError as error:
        # Bytes of no image format at all (a CSV, a README) are skipped; a broken image is an error.
        if error.code == "unsupported_format":
            return None
        raise type(error)(f"{path}: {error.message}", code=error.code) from error


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible first-level sub-folders of ``folder`` (the class names)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def _labels(folder: Path, paths: list[Path], class_names: Sequence[str] | None) -> torch.Tensor | None:
    if not class_names:
        return None
    first_parts = [p.relative_to(folder).parts for p in paths]
    if any(len(parts) < 2 or parts[0] not in class_names for parts in first_parts):
        return None
    return torch.tensor([list(class_names).index(parts[0]) for parts in first_parts], dtype=torch.long)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
