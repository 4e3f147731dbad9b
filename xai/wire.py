"""Arrays on the wire between gateway and worker, and in the result store: zlib-compressed ``.npy``. Torch-free.

Three kinds travel: the canonical image (float32, what the model and patch mode read), the display
copy of the input (uint8, only ever drawn under an overlay) and a heatmap at the resolution its
explainer made it (float16: a heatmap is shown and thresholded, and 3 significant digits are more
than a display or a percentile threshold resolves; it halves what every finished job keeps).
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from xai.errors import ServiceError

# zlib level 3: a 1024 x 1024 float32 image takes ~17 ms and shrinks 4 MB to about 0.2-1 MB;
# level 6 halves that size again for twice the time, paid on every request.
_ZLIB_LEVEL = 3
NPY_MAGIC = b"\x93NUMPY"  # an uncompressed .npy starts so; a zlib stream never does (0x78 ...)


def encode_canonical(pixels: np.ndarray) -> bytes:
    """Serialise a canonical image: float32 ``H x W`` or ``H x W x 3`` in [0, 1].

    Raises:
        ValueError: if ``pixels`` is not a canonical image (a programming error, not the caller's).
    """
    if pixels.dtype != np.float32 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"not a canonical image: dtype {pixels.dtype}, shape {pixels.shape}")
    return _pack(pixels)


def decode_canonical(blob: bytes) -> np.ndarray:
    """Read back a canonical image stored by ``encode_canonical``.

    Raises:
        ServiceError: code ``corrupt_stored_input`` (HTTP 500) when the stored bytes are damaged;
            the input was validated when it was uploaded, so this is the server's fault.
    """
    return _unpack(blob, np.float32)


def encode_display(pixels: np.ndarray) -> bytes:
    """The display copy of an input (``xai.imaging.resize.display_copy``, uint8), not compressed.

    It lives only until its job ends, and at most ``display_max_side`` squared bytes (per channel):
    compressing it would cost more time on both sides than the Redis write it saves.

    Raises:
        ValueError: if ``pixels`` is not uint8 ``H x W`` or ``H x W x 3`` (a programming error).
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"not a display copy: dtype {pixels.dtype}, shape {pixels.shape}")
    return _pack(pixels, compress=False)


def decode_display(blob: bytes) -> np.ndarray:
    """The display copy, uint8."""
    return _unpack(blob, np.uint8)


# A display copy's .npy header (format 1.0, padded to a multiple of 64 bytes) fits in this many of its first bytes.
DISPLAY_HEADER_BYTES = 256
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def display_shape(head: bytes) -> tuple[int, ...]:
    """The shape of a display copy from the first ``DISPLAY_HEADER_BYTES`` of ``encode_display``'s bytes.

    Raises:
        ServiceError: code ``corrupt_stored_input`` when they are not a display copy's header.
    """
    try:
        stream = io.BytesIO(head)
        read_header = _NPY_HEADER_READERS[np.lib.format.read_magic(stream)]
        shape, _, dtype = read_header(stream)
    except (KeyError, ValueError, OSError, EOFError) as error:
        raise _damaged(error) from error
    _check_kind(dtype, len(shape), np.uint8)
    return tuple(shape)


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """An ``H x W`` heatmap at the explainer's resolution, stored as float16."""
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is H x W, got shape {heatmap.shape}")
    finite = np.nan_to_num(heatmap.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return _pack(np.clip(finite, -65504, 65504).astype(np.float16))


def decode_heatmap(blob: bytes) -> np.ndarray:
    """A stored heatmap as float32."""
    return _unpack(blob, np.float16).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    """A float32 ``.npy`` file, uncompressed, as callers download it (numpy.load reads it)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _pack(array: np.ndarray, *, compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return zlib.compress(buffer.getvalue(), _ZLIB_LEVEL) if compress else buffer.getvalue()


def _unpack(blob: bytes, dtype: type) -> np.ndarray:
    try:
        raw = blob if blob[:6] == NPY_MAGIC else zlib.decompress(blob)
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (zlib.error, ValueError, OSError, EOFError) as error:
        raise _damaged(error) from error
    _check_kind(array.dtype, array.ndim, dtype)
    return array


def _damaged(error: Exception) -> ServiceError:
    return ServiceError(f"the stored array is damaged ({type(error).__name__}); submit the job again",
                        code="corrupt_stored_input")


def _check_kind(dtype: np.dtype, ndim: int, expected: type) -> None:
    """An image or display copy is ``expected`` samples, ``H x W`` or ``H x W x 3``."""
    if dtype != expected or ndim not in (2, 3):
        raise ServiceError(f"the stored array is not of the expected kind ({dtype}, {ndim} dims); "
                           "submit the job again", code="corrupt_stored_input")
