"""Gateway ingest: uploaded bytes -> canonical image.

A thin layer over ``xai.imaging`` (which holds every decoding rule): it enforces the upload size
first, so an oversized body never reaches a decoder. The storage encoding of the canonical image,
shared with the workers, is ``xai.wire``. Decoding is CPU work: the gateway
calls ``ingest_upload`` off the event loop (``starlette.concurrency.run_in_threadpool``).
Torch is never imported here.
"""

from __future__ import annotations

from xai.errors import PayloadTooLarge
from xai.imaging import DecodedImage, DecodeLimits, decode_image
from xai.settings import Settings

def limits_from_settings(settings: Settings) -> DecodeLimits:
    """The decode limits configured by ``XAI_MAX_UPLOAD_BYTES``, ``XAI_MAX_PIXELS``, ``XAI_MAX_FRAMES``."""
    return DecodeLimits(
        max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, max_frames=settings.max_frames
    )


def ingest_upload(data: bytes, *, frame: int | None = None, limits: DecodeLimits) -> DecodedImage:
    """Check the upload's size, then decode it to the canonical image.

    Args:
        data: The uploaded bytes (PNG, JPEG, TIFF or DICOM; sniffed, never trusted from a name).
        frame: Frame of a multi-frame DICOM or page of a multi-page TIFF; None means 0.
        limits: Size limits, usually ``limits_from_settings(get_settings())``.

    Returns:
        float32 pixels in [0, 1] (``H x W`` or ``H x W x 3``) and non-identifying metadata.

    Raises:
        PayloadTooLarge: code ``payload_too_large`` (HTTP 413) before anything is parsed, and the
            413 codes of ``xai.imaging.decode_image``.
        ServiceError: every 4xx of ``xai.imaging.decode_image``; nothing else escapes.
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the upload is {len(data):,} bytes, more than the {limits.max_bytes:,} this service accepts; "
            "compress or downsample the image",
            code="payload_too_large",
        )
    return decode_image(data, frame=frame, limits=limits)
