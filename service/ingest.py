"""Gateway ingest: uploaded bytes -> canonical image.

A thin layer over ``xai.imaging`` (which holds every decoding rule): it enforces the upload size
first, so an oversized body never reaches a decoder. The storage encoding of the canonical image,
shared with the workers, is ``xai.wire``. Decoding is CPU work: the gateway
calls ``ingest_upload`` off the event loop (``starlette.concurrency.run_in_threadpool``).
Torch is never imported here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models.manifest import InputSpec
from xai.errors import PayloadTooLarge
from xai.imaging import DecodedImage, DecodeLimits, decode_image
from xai.imaging.resize import display_copy, fit_within, resize
from xai.jobs import annotation_key, display_key, input_key, native_key
from xai.settings import Settings
from xai.wire import encode_canonical, encode_display


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


PARALLEL_RESIZE_PIXELS = 1024 * 1024


def job_inputs(
    job_id: str, decoded: DecodedImage, spec: InputSpec, *, display_max_side: int, keep_native: bool,
    annotation: np.ndarray | None = None,
) -> dict[str, bytes]:
    """What a job keeps of its upload until it ends, by Redis key, none of it larger than the display cap.

    - the image at the model's input size, resized here exactly as the worker's torch resize would
      (``xai.imaging.resize``), so the classifier sees what it would have seen of the full upload;
    - a uint8 display copy at most ``display_max_side`` on the long side, for the overlay, from the
      upload's own 8-bit samples where it has them (``display_copy``: it is only looked at);
    - the upload itself only for patch mode (``keep_native``), which explains it at its own resolution;
    - the annotation at the model's input size, where localisation is scored.
    """
    pixels = decoded.pixels
    display_source = pixels if decoded.samples8 is None else decoded.samples8
    display_size = fit_within(*pixels.shape[:2], display_max_side)
    # A thread pool costs a small upload more than it saves, and one whose display copy is not shrunk
    # (a 1024 px upload under the default cap) has nothing to run beside the model-size shrink.
    if pixels.shape[0] * pixels.shape[1] < PARALLEL_RESIZE_PIXELS or display_size == pixels.shape[:2]:
        model_size = resize(pixels, spec.height, spec.width)
        display = display_copy(display_source, *display_size)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:  # two passes over a large upload, side by side (no GIL)
            display_future = pool.submit(display_copy, display_source, *display_size)
            model_size = resize(pixels, spec.height, spec.width)
            display = display_future.result()
    inputs = {input_key(job_id): encode_canonical(model_size), display_key(job_id): encode_display(display)}
    if keep_native:
        inputs[native_key(job_id)] = encode_canonical(pixels)
    if annotation is not None:
        inputs[annotation_key(job_id)] = encode_canonical(resize(annotation.astype(np.float32), spec.height, spec.width))
    return inputs
