"""PNG, JPEG and TIFF bytes -> canonical image, with Pillow and tifffile.

What each layout becomes (intensity rules in ``xai.imaging.canonical``):

* grey (1, 8 or 16 bit) -> ``H x W``; grey + alpha -> ``H x W`` (alpha ignored);
* RGB, RGBA -> ``H x W x 3`` (alpha ignored: medical images use it, if at all, as an opaque
  channel, and compositing would change the intensities the model sees);
* palette -> ``H x W x 3`` through the palette (``H x W`` when the palette is grey);
* CMYK, YCbCr, LAB (JPEG, TIFF) -> RGB through Pillow.

A colour image whose three channels are equal everywhere is returned as ``H x W``.

TIFF is read with tifffile, which keeps 16-bit RGB and float samples exact and handles
MINISWHITE (inverted) and palette photometrics; pages it cannot decode without the optional
``imagecodecs`` package (LZW, JPEG or PackBits compression) and other photometrics go through
Pillow's libtiff instead. Each TIFF page is a frame.

Known loss: Pillow has no 16-bit colour mode, so 16-bit RGB, RGBA and grey+alpha PNGs are
reduced to their high 8 bits per channel (``meta["reduced_to_8_bit"]`` says so). 16-bit grey PNG
and every TIFF keep their full depth.
"""

from __future__ import annotations

import io
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from xai.errors import PayloadTooLarge, ServiceError
from xai.imaging.canonical import (
    DecodedImage,
    DecodeLimits,
    check_frame_count,
    check_frame_size,
    collapse_grey_rgb,
    corrupt_image,
    corrupt_on_failure,
    resolve_frame,
    to_unit_range,
)

_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# Pillow modes that hold one grey sample per pixel (first band), alpha bands aside.
_PILLOW_GREY_MODES = frozenset({"L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_TIFF_FRAMES = "the number of TIFF pages"


def decode_raster(data: bytes, fmt: str, *, frame: int | None, limits: DecodeLimits) -> DecodedImage:
    """Decode PNG, JPEG or TIFF bytes (see the module docstring for the rules).

    Args:
        data: The encoded bytes.
        fmt: "png", "jpeg" or "tiff", as sniffed.
        frame: Page of a multi-page TIFF (or frame of an animated PNG); None means 0.
        limits: Size limits, checked from the header before decoding.

    Raises:
        PayloadTooLarge: codes ``image_too_large``, ``too_many_frames``.
        InvalidInput: code ``frame_out_of_range``.
        InvalidImage: code ``corrupt_image``.
    """
    if fmt == "tiff":
        return _decode_tiff(data, frame=frame, limits=limits)
    return _decode_with_pillow(data, fmt, frame=frame, limits=limits)


def _decode_tiff(data: bytes, *, frame: int | None, limits: DecodeLimits) -> DecodedImage:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            number_of_frames = len(tif.pages)
            if number_of_frames == 0:
                raise ValueError("a TIFF without pages")
            check_frame_count(number_of_frames, limits, source=_TIFF_FRAMES)
            index = resolve_frame(frame, number_of_frames, source=_TIFF_FRAMES)
            page = tif.pages[index]
            check_frame_size(page.imagelength, page.imagewidth, limits)
            pixels, intensity = _tiff_page_pixels(page)
    except ServiceError:
        raise
    except Exception:  # noqa: BLE001 - any tifffile failure gets a second chance with Pillow
        # tifffile needs imagecodecs for LZW, JPEG, PackBits... and refuses rare photometrics;
        # Pillow's libtiff decodes those. A truly corrupt file fails there too.
        return _decode_with_pillow(data, "tiff", frame=frame, limits=limits)
    return _result(pixels, "tiff", number_of_frames, index, bits=page.bitspersample, intensity=intensity)


def _tiff_page_pixels(page: tifffile.TiffPage) -> tuple[np.ndarray, str]:
    """Decode one TIFF page with tifffile; ValueError for what Pillow should handle instead."""
    photometric = tifffile.PHOTOMETRIC(page.photometric)
    stored = page.asarray()
    if "S" in page.axes:
        stored = np.moveaxis(stored, page.axes.index("S"), -1)
    if photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE):
        grey = stored[..., 0] if stored.ndim == 3 else stored
        pixels, intensity = to_unit_range(grey)
        if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
            return 1.0 - pixels, intensity + ",inverted"
        return pixels, intensity
    if photometric == tifffile.PHOTOMETRIC.RGB:
        return to_unit_range(stored[..., :3])
    if photometric == tifffile.PHOTOMETRIC.PALETTE:
        # TIFF colour maps are 3 x 2**bits entries of 16 bits each (TIFF 6.0, section 5).
        rgb = np.moveaxis(page.colormap[:, stored], 0, -1)
        return (rgb / 65535.0).astype(np.float32), "palette"
    raise ValueError(f"photometric {photometric.name} is left to Pillow")


def _decode_with_pillow(data: bytes, fmt: str, *, frame: int | None, limits: DecodeLimits) -> DecodedImage:
    what = f"{fmt.upper()} image"
    try:
        image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(
            "the image header declares more pixels than Pillow's decompression-bomb guard allows; "
            "downsample it before uploading",
            code="image_too_large",
        ) from error
    except Exception as error:
        raise corrupt_image(what, error) from error
    with image, corrupt_on_failure(what):
        check_frame_size(image.height, image.width, limits)
        number_of_frames = getattr(image, "n_frames", 1)
        check_frame_count(number_of_frames, limits, source="the number of frames")
        index = resolve_frame(frame, number_of_frames, source="the number of frames")
        image.seek(index)
        stored = _plain_png_samples(data, image) if fmt == "png" and number_of_frames == 1 else None
        if stored is None:
            image.load()
            stored = _pillow_samples(image)
        declared = _png_significant_bits(data) if fmt == "png" else None
        pixels, intensity = to_unit_range(stored, declared_bits=declared)
        meta: dict[str, Any] = {}
        if fmt == "png" and data[24] == 16 and stored.dtype.itemsize == 1:
            meta["reduced_to_8_bit"] = True
        bits = data[24] if fmt == "png" else (8 if fmt == "jpeg" else None)
        samples8 = stored if stored.dtype == np.uint8 else None  # to_unit_range divided them by 255
        return _result(pixels, fmt, number_of_frames, index, bits=bits, intensity=intensity,
                       samples8=samples8, **meta)


def _plain_png_samples(data: bytes, image: Image.Image) -> np.ndarray | None:
    """An 8-bit grey or RGB PNG's samples decoded by libpng straight into an array (Pillow decodes into its
    own buffer and then copies it: 9 ms more on a 3000 px upload); None for any other PNG, or one libpng
    refuses, which Pillow then decodes (and names what is wrong with it)."""
    if image.mode not in ("L", "RGB") or "transparency" in image.info:
        return None
    try:
        samples = imagecodecs.png_decode(data)
    except Exception:  # noqa: BLE001 - Pillow's decode gives the caller's error
        return None
    expected = (image.height, image.width) if image.mode == "L" else (image.height, image.width, 3)
    return samples if samples.dtype == np.uint8 and samples.shape == expected else None


def _pillow_samples(image: Image.Image) -> np.ndarray:
    """Stored samples of the current frame: ``H x W`` for grey modes, ``H x W x 3`` otherwise."""
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode in _PILLOW_GREY_MODES:
        stored = np.asarray(image)
        stored = stored[..., 0] if stored.ndim == 3 else stored
        return stored.astype(stored.dtype.newbyteorder("="))
    # RGB(A/X), palette (with or without transparency), CMYK, YCbCr, LAB: Pillow's conversion
    # applies the palette or colour transform and drops alpha.
    return np.asarray(image.convert("RGB"))


def _png_significant_bits(data: bytes) -> int | None:
    """The largest value of the PNG ``sBIT`` chunk (PNG spec 11.3.3.4), if the file has one."""
    offset = 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"sBIT":
            return max(data[offset + 8 : offset + 8 + length], default=0) or None
        if kind == b"IDAT":
            return None
        offset += 12 + length
    return None


def _result(
    pixels: np.ndarray,
    fmt: str,
    number_of_frames: int,
    frame: int,
    *,
    bits: int | None,
    intensity: str,
    samples8: np.ndarray | None = None,
    **extra: Any,
) -> DecodedImage:
    pixels = collapse_grey_rgb(np.ascontiguousarray(pixels, dtype=np.float32))
    if samples8 is not None and samples8.ndim > pixels.ndim:  # an RGB file of grey pixels
        samples8 = np.ascontiguousarray(samples8[..., 0])
    meta: dict[str, Any] = {
        "format": fmt,
        "rows": int(pixels.shape[0]),
        "columns": int(pixels.shape[1]),
        "channels": 1 if pixels.ndim == 2 else 3,
        "bits_stored": None if bits is None else int(bits),
        "number_of_frames": int(number_of_frames),
        "frame": int(frame),
        "intensity": intensity,
        **extra,
    }
    return DecodedImage(pixels=pixels, format=fmt, meta=meta, samples8=samples8)
