"""The canonical image every decoder produces, the limits it is decoded under, and the shared
rules that turn stored integers into intensities in [0, 1].

Intensity rules (one place, so PNG, TIFF and DICOM colour data agree):

* ``bool`` (1-bit) data: False -> 0, True -> 1.
* 8-bit containers: ``v / 255``.
* Wider unsigned integers (16 or 32 bit): ``v / (2**b - 1)``, where ``b`` is the number of
  significant bits. ``b`` is the value the file declares when it declares one (PNG ``sBIT``,
  DICOM (0028,0101) Bits Stored for colour data). Otherwise ``b`` is the bit length of the largest
  stored value rounded up to an even number and at least 8: 12-bit detector data in a 16-bit PNG
  (maximum 4095) maps to [0, 1] instead of [0, 0.06], and images from 10/12/14/16-bit detectors
  keep the same scale from image to image. Nothing is clipped: every stored value is at most
  ``2**b - 1`` by construction (a declared ``b`` smaller than the data falls back to the data).
* Signed integers with negative values: min-max over the frame (there is no natural zero).
* Floating point: kept as is when every value is already in [0, 1], else min-max over the frame.
  NaN or infinite values are refused: they have no place on a display scale.
* Min-max of a constant frame gives zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xai.errors import InvalidImage, InvalidInput, PayloadTooLarge, ServiceError, Unavailable


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on what one decode may cost. The gateway fills them from its settings.

    Attributes:
        max_bytes: Largest accepted encoded input, in bytes. Default 64 MiB.
        max_pixels: Largest accepted frame, as rows x columns. Checked from the header before any
            pixel is decoded, so a decompression bomb costs nothing. Default 40,000,000.
        max_frames: Largest accepted number of frames (multi-frame DICOM, multi-page TIFF).
            Default 2000.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_frames: int = 2000


@dataclass(frozen=True)
class DecodedImage:
    """A decoded input: canonical pixels plus safe, non-identifying metadata.

    Attributes:
        pixels: ``float32``, ``H x W`` (grey) or ``H x W x 3`` (RGB), values in [0, 1], after
            DICOM modality LUT, VOI LUT or window, and MONOCHROME1 inversion.
        format: The sniffed format: "png", "jpeg", "tiff" or "dicom".
        meta: JSON-safe facts about the decode (size, bit depth, which window was applied...).
            It never holds patient, study or institution data, nor any UID but the transfer
            syntax's.
        samples8: The upload's own 8-bit samples, shaped like ``pixels``, where ``pixels`` is exactly
            ``samples8 / 255`` (8-bit PNG, JPEG and Pillow-decoded TIFF); else None. The display copy
            is made from them (``xai.imaging.resize.display_copy``).
    """

    pixels: np.ndarray
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    samples8: np.ndarray | None = None


def check_frame_size(rows: int, columns: int, limits: DecodeLimits) -> None:
    """Refuse a frame larger than ``limits.max_pixels`` before it is decoded.

    Raises:
        PayloadTooLarge: code ``image_too_large`` (HTTP 413).
    """
    if rows * columns > limits.max_pixels:
        raise PayloadTooLarge(
            f"the image is {columns} x {rows} = {rows * columns:,} pixels, more than the "
            f"{limits.max_pixels:,} this service accepts; downsample it before uploading",
            code="image_too_large",
        )


def check_frame_count(number_of_frames: int, limits: DecodeLimits, *, source: str) -> None:
    """Refuse inputs with more frames than ``limits.max_frames``.

    Args:
        number_of_frames: Frames the input declares.
        limits: The limits in force.
        source: Where the count comes from, for the message ("(0028,0008) Number of Frames").

    Raises:
        PayloadTooLarge: code ``too_many_frames`` (HTTP 413).
    """
    if number_of_frames > limits.max_frames:
        raise PayloadTooLarge(
            f"{source} is {number_of_frames}, more than the {limits.max_frames} frames this service "
            "accepts; send the frame to explain as a single-frame file",
            code="too_many_frames",
        )


def resolve_frame(frame: int | None, number_of_frames: int, *, source: str) -> int:
    """Return the frame index to decode: ``frame``, or 0 when None.

    Raises:
        InvalidInput: code ``frame_out_of_range`` when the index is not in [0, number_of_frames).
    """
    index = 0 if frame is None else frame
    if not 0 <= index < number_of_frames:
        raise InvalidInput(
            f"frame {index} was requested but {source} is {number_of_frames}; "
            f"give a frame index from 0 to {number_of_frames - 1}",
            code="frame_out_of_range",
        )
    return index


def significant_bits(values: np.ndarray, declared: int | None = None) -> int:
    """The ``b`` of ``v / (2**b - 1)`` for unsigned integer data (see the module docstring)."""
    if values.dtype.itemsize == 1:
        return 8
    largest = int(values.max()) if values.size else 0
    if declared and largest < 2**declared:
        return declared
    bits = max(8, largest.bit_length())
    return bits + bits % 2


def to_unit_range(values: np.ndarray, *, declared_bits: int | None = None) -> tuple[np.ndarray, str]:
    """Map stored values to float32 in [0, 1] by the module's intensity rules.

    Args:
        values: Stored samples, any integer, bool or float dtype, any shape.
        declared_bits: Significant bits the file declares, if it declares them.

    Returns:
        The float32 array and a short name of the rule applied ("bit_range:12", "minmax", ...),
        for the metadata.

    Raises:
        InvalidImage: code ``corrupt_image`` for NaN or infinite values.
    """
    if values.dtype == np.bool_:
        return values.astype(np.float32), "binary"
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InvalidImage("the image holds NaN or infinite values", code="corrupt_image")
        if values.size and values.min() >= 0 and values.max() <= 1:
            return values.astype(np.float32), "unit_float"
        return min_max(values), "minmax"
    if np.issubdtype(values.dtype, np.signedinteger) and values.size and values.min() < 0:
        return min_max(values), "minmax"
    bits = significant_bits(values, declared_bits)
    if values.dtype.itemsize <= 2:
        # One float32 division: for every value 8 or 16 bits can hold it gives the float64 path's float32
        # result (tests/test_imaging.py checks each), in one pass (a 3000 px upload spent 0.2 s in float64,
        # and 15 ms in a table look-up).
        return np.true_divide(values, np.float32(2**bits - 1), dtype=np.float32), f"bit_range:{bits}"
    # float64 first: 32-bit data would lose its low bits in a float32 division.
    return (values.astype(np.float64) / (2**bits - 1)).astype(np.float32), f"bit_range:{bits}"


def min_max(values: np.ndarray, *, frame: np.ndarray | None = None) -> np.ndarray:
    """Stretch ``values`` linearly so the frame's minimum is 0 and maximum 1 (zeros if constant).

    ``frame`` holds the values whose range is stretched, when ``values`` is a table of every value a frame
    could hold rather than the frame itself (``xai.imaging.dicom``); by default ``values``.
    """
    values = values.astype(np.float64)
    frame = values if frame is None else frame
    low, high = (float(frame.min()), float(frame.max())) if frame.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def collapse_grey_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return ``H x W`` when an ``H x W x 3`` image has three equal channels everywhere.

    An X-ray saved as RGB (or through a grey palette) carries no colour; returning it as grey keeps
    one canonical form per content, and models convert grey to RGB themselves when they need it.
    """
    if (
        pixels.ndim == 3
        and np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 0], pixels[..., 2])
    ):
        return np.ascontiguousarray(pixels[..., 0])
    return pixels


@contextmanager
def corrupt_on_failure(what: str) -> Iterator[None]:
    """Turn any decoder exception inside the block into ``InvalidImage(code="corrupt_image")``.

    Third-party decoders raise whatever they like (OSError, ValueError, struct.error, RuntimeError,
    SyntaxError..., and a panic in a Rust decoder such as pylibjpeg-rle arrives as pyo3's
    PanicException, which derives from BaseException, not Exception). Only the exception's type is reported, never its text: decoder messages can
    quote element values, and a DICOM element value may identify a patient.

    Args:
        what: What was being decoded, for the message ("PNG image", "DICOM header").
    """
    try:
        yield
    except ServiceError:
        raise
    except MemoryError as error:
        # Not the input's fault once the size limits passed: a 503 the caller may retry.
        raise Unavailable(
            f"not enough memory to decode the {what} now; retry later", code="out_of_memory"
        ) from error
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # noqa: BLE001 - Rust decoders' panics (pyo3 PanicException) are BaseExceptions
        raise corrupt_image(what, error) from error


def corrupt_image(what: str, error: BaseException) -> InvalidImage:
    """The ``corrupt_image`` error for a decoder exception, naming only its type (see above)."""
    return InvalidImage(
        f"the {what} could not be decoded ({type(error).__name__}): the file is truncated, "
        "corrupt or not what its header says; re-export it from the source system",
        code="corrupt_image",
    )
