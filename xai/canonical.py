"""The canonical image on the wire between gateway and worker: a compressed float32 .npy. Torch-free."""

from __future__ import annotations

import io
import zlib

import numpy as np


def encode_canonical(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels, dtype=np.float32), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level=3)


def decode_canonical(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
