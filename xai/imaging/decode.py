"""One entry point for every accepted format: sniff the bytes, dispatch, check the contract."""

from __future__ import annotations

from xai.errors import InvalidInput, PayloadTooLarge
from xai.imaging.canonical import DecodedImage, DecodeLimits, corrupt_on_failure
from xai.imaging.dicom import decode_dicom
from xai.imaging.raster import decode_raster
from xai.imaging.sniff import sniff_format


def decode_image(data: bytes, *, frame: int | None = None, limits: DecodeLimits) -> DecodedImage:
    """Decode PNG, JPEG, TIFF or DICOM bytes to the canonical image.

    The format is sniffed from the bytes (never from a file name). Limits are checked from the
    header before any pixel is decoded. Nothing but ``xai.errors.ServiceError`` subclasses leaves
    this function, whatever the bytes.

    Args:
        data: The encoded image.
        frame: Frame of a multi-frame DICOM or page of a multi-page TIFF; None means frame 0.
        limits: Largest accepted input size, frame size and frame count.

    Returns:
        ``DecodedImage`` with float32 pixels in [0, 1], ``H x W`` or ``H x W x 3``, and safe metadata.

    Raises:
        PayloadTooLarge: ``payload_too_large``, ``image_too_large``, ``too_many_frames`` (413).
        UnsupportedMediaType: ``unsupported_format``, ``dicom_unsupported_transfer_syntax``,
            ``dicom_unsupported_photometric`` (415).
        InvalidImage: ``empty_file``, ``corrupt_image``, ``dicom_no_pixel_data``,
            ``dicom_truncated_pixel_data`` (422).
        InvalidInput: ``frame_out_of_range`` (422).

    Example:
        >>> image = decode_image(open("examples/00000211_019.png", "rb").read(), limits=DecodeLimits())
        >>> image.pixels.shape, image.meta["format"]
        ((256, 256), 'png')
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the upload is {len(data):,} bytes, more than the {limits.max_bytes:,} this service "
            "accepts; compress or downsample the image",
            code="payload_too_large",
        )
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
        raise InvalidInput(f"frame must be a non-negative integer, not {frame!r}", code="frame_out_of_range")
    fmt = sniff_format(data)
    # Last line of defence: the decoders wrap what they expect; anything else is still the input's fault.
    with corrupt_on_failure(f"{fmt.upper()} image"):
        if fmt == "dicom":
            return decode_dicom(data, frame=frame, limits=limits)
        return decode_raster(data, fmt, frame=frame, limits=limits)
