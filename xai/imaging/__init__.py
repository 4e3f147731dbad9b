"""Image and DICOM decoding (encoded bytes -> canonical image) and result rendering, torch-free and environment-free.

The gateway's ingest and the training code on image folders both use this package, so an image
is read the same way everywhere. Public API::

    sniff_format(data) -> "png" | "jpeg" | "tiff" | "dicom"
    decode_image(data, *, frame=None, limits) -> DecodedImage(pixels, format, meta)
    decode_annotation(data, *, shape, limits=None) -> bool mask

Canonical image: float32, ``H x W`` or ``H x W x 3``, values in [0, 1] (intensity rules in
``canonical``, DICOM processing in ``dicom``, PNG/JPEG/TIFF in ``raster``). ``meta`` only holds an
allow-list of non-identifying fields. ``render`` turns a heatmap into the PNGs a caller downloads (the
worker's DICOM Secondary Capture and the gateway's PNGs, rendered on first download, share it).

Errors are ``xai.errors.ServiceError`` with a code of ``xai.errors.ErrorCode`` (which holds each HTTP status).
"""

from xai.imaging.annotation import decode_annotation
from xai.imaging.canonical import DecodedImage, DecodeLimits
from xai.imaging.decode import decode_image
from xai.imaging.sniff import ACCEPTED_FORMATS, sniff_format

__all__ = [
    "ACCEPTED_FORMATS",
    "DecodeLimits",
    "DecodedImage",
    "decode_annotation",
    "decode_image",
    "sniff_format",
]
