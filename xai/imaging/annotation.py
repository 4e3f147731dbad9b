"""Ground-truth annotations (a mask image or JSON boxes) -> a boolean mask at the image's size.

Two forms are accepted:

* **JSON boxes**, UTF-8: ``[[x, y, w, h], ...]`` in pixel coordinates of the uploaded image, origin
  top-left, as the NIH ChestX-ray14 box list writes them. Each box needs four finite,
  non-negative numbers with ``w, h > 0`` and ``x + w <= columns``, ``y + h <= rows``. A box covers
  every pixel it overlaps (rows ``floor(y)`` to ``ceil(y + h) - 1``). At most 1000 boxes.
* **A mask image** in any format ``decode_image`` reads: inside = non-zero (any channel). JPEG is
  lossy and leaves faint non-zero halos, so a JPEG mask is thresholded at half its maximum
  instead. A mask of another size is resized with nearest-neighbour sampling (pixel centres) when
  its aspect ratio is within 2 % of the image's (a mask drawn on a downsampled copy); a larger
  aspect difference means the mask belongs to another image or was cropped, and is refused.

An annotation with no inside pixel is refused: localisation figures are undefined for it.
"""

from __future__ import annotations

import json
import math

import numpy as np

from xai.errors import InvalidInput, UnsupportedMediaType
from xai.imaging.canonical import DecodeLimits
from xai.imaging.decode import decode_image

MAX_BOXES = 1000
ASPECT_TOLERANCE = 0.02


def decode_annotation(
    data: bytes, *, shape: tuple[int, int], limits: DecodeLimits | None = None
) -> np.ndarray:
    """Decode a ground-truth mask image or JSON boxes to a boolean ``rows x columns`` mask.

    Args:
        data: The annotation bytes (mask image or UTF-8 JSON, see the module docstring).
        shape: ``(rows, columns)`` of the decoded input image the annotation belongs to.
        limits: Limits for decoding a mask image. Default: ``DecodeLimits()``.

    Returns:
        ``bool`` array of ``shape``, True inside the annotated region.

    Raises:
        InvalidInput: code ``invalid_annotation`` for malformed JSON, a bad box, a mask whose
            aspect ratio differs from the image's, or an empty annotation.
        UnsupportedMediaType: code ``unsupported_format`` for bytes that are neither.
        ServiceError: any error of ``decode_image`` for a mask image that cannot be decoded.

    Example:
        >>> decode_annotation(b"[[1, 0, 2, 1]]", shape=(2, 4)).astype(int).tolist()
        [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    rows, columns = _checked_shape(shape)
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{"):
        mask = _boxes_to_mask(_parse_boxes(data, rows, columns), rows, columns)
    else:
        mask = _fit_to_shape(_mask_image(data, limits or DecodeLimits()), rows, columns)
    if not mask.any():
        raise InvalidInput(
            "the annotation marks no pixel; send a mask or boxes that cover the finding",
            code="invalid_annotation",
        )
    return mask


def _checked_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(
        isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0 for n in shape
    ):
        raise ValueError(f"shape must be (rows, columns) of positive integers, not {shape!r}")
    return int(shape[0]), int(shape[1])


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_annotation")


def _parse_boxes(data: bytes, rows: int, columns: int) -> list[list[float]]:
    """Validated boxes from UTF-8 JSON ``[[x, y, w, h], ...]``."""
    try:
        boxes = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid("the annotation is not valid UTF-8 JSON; send [[x, y, w, h], ...] boxes") from None
    if not isinstance(boxes, list) or not boxes:
        raise _invalid("the annotation JSON must be a non-empty list of [x, y, w, h] boxes")
    if len(boxes) > MAX_BOXES:
        raise _invalid(f"the annotation has {len(boxes)} boxes; at most {MAX_BOXES} are accepted")
    for number, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
            raise _invalid(f"box {number} must be a list of four numbers [x, y, w, h], got {str(box)[:60]}")
        x, y, width, height = box
        if min(box) < 0 or width == 0 or height == 0:
            raise _invalid(f"box {number} {box}: x and y must be >= 0, and w and h > 0")
        if x + width > columns or y + height > rows:
            raise _invalid(
                f"box {number} {box} reaches ({x + width}, {y + height}), outside the {columns} x {rows} "
                "image; boxes are in pixels of the uploaded image, origin top-left"
            )
    return boxes


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _boxes_to_mask(boxes: list[list[float]], rows: int, columns: int) -> np.ndarray:
    mask = np.zeros((rows, columns), dtype=bool)
    for x, y, width, height in boxes:
        mask[math.floor(y) : math.ceil(y + height), math.floor(x) : math.ceil(x + width)] = True
    return mask


def _mask_image(data: bytes, limits: DecodeLimits) -> np.ndarray:
    try:
        image = decode_image(data, limits=limits)
    except UnsupportedMediaType as error:
        if error.code != "unsupported_format":
            raise
        raise UnsupportedMediaType(
            "the annotation is neither a mask image (PNG, JPEG, TIFF, DICOM) "
            "nor JSON boxes [[x, y, w, h], ...]",
            code="unsupported_format",
        ) from None
    pixels = image.pixels if image.pixels.ndim == 2 else image.pixels.max(axis=2)
    if image.format == "jpeg":
        return pixels > 0.5 * pixels.max()
    return pixels > 0


def _fit_to_shape(mask: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Nearest-neighbour resize of ``mask`` to ``rows x columns``; refuse a different aspect ratio."""
    mask_rows, mask_columns = mask.shape
    if (mask_rows, mask_columns) == (rows, columns):
        return mask
    mask_aspect, image_aspect = mask_columns / mask_rows, columns / rows
    if abs(mask_aspect - image_aspect) > ASPECT_TOLERANCE * image_aspect:
        raise _invalid(
            f"the mask is {mask_columns} x {mask_rows} but the image is {columns} x {rows}: their aspect "
            f"ratios differ by more than {ASPECT_TOLERANCE:.0%}; send a mask drawn on this image"
        )
    # Sample the mask at the centre of each output pixel, as Pillow's NEAREST does.
    row_index = np.floor((np.arange(rows) + 0.5) * mask_rows / rows).astype(int)
    column_index = np.floor((np.arange(columns) + 0.5) * mask_columns / columns).astype(int)
    return mask[np.ix_(row_index, column_index)]
