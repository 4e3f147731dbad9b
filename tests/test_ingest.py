"""Tests for service.ingest: the size check comes first, decoding is xai.imaging's, the canonical
image survives its storage encoding exactly, and neither module pulls in torch."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.ingest import ingest_upload, limits_from_settings
from xai.errors import ServiceError
from xai.imaging import DecodeLimits, decode_image
from xai.settings import Settings
from xai.wire import DISPLAY_HEADER_BYTES, decode_canonical, display_shape, encode_canonical, encode_display

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LIMITS = DecodeLimits()


def test_upload_over_max_bytes_is_refused_before_it_is_parsed():
    # Garbage that would be a 415 if it were parsed: the size check wins.
    with pytest.raises(ServiceError) as caught:
        ingest_upload(b"\x00" * 2048, limits=DecodeLimits(max_bytes=1024))
    assert (caught.value.code, caught.value.http_status) == ("payload_too_large", 413)
    assert "1,024" in caught.value.message


def test_upload_decodes_like_xai_imaging_and_passes_the_frame():
    data = (EXAMPLES / "nih_cxr14_3_frames.dcm").read_bytes()
    image = ingest_upload(data, frame=2, limits=LIMITS)
    np.testing.assert_array_equal(image.pixels, decode_image(data, frame=2, limits=LIMITS).pixels)
    assert image.meta["frame"] == 2


def test_upload_errors_are_service_errors_with_their_code():
    with pytest.raises(ServiceError) as caught:
        ingest_upload(b"not an image at all", limits=LIMITS)
    assert (caught.value.code, caught.value.http_status) == ("unsupported_format", 415)


def test_limits_come_from_the_settings_object():
    settings = Settings(max_upload_bytes=1000, max_pixels=2000, max_frames=3)
    assert limits_from_settings(settings) == DecodeLimits(max_bytes=1000, max_pixels=2000, max_frames=3)


@pytest.mark.parametrize("name", ["00000211_019.png", "00000211_019_jpeg_baseline.dcm"])
def test_canonical_image_round_trips_exactly_and_compresses(name):
    pixels = ingest_upload((EXAMPLES / name).read_bytes(), limits=LIMITS).pixels
    blob = encode_canonical(pixels)
    restored = decode_canonical(blob)
    assert restored.dtype == np.float32 and restored.shape == pixels.shape
    np.testing.assert_array_equal(restored, pixels)
    assert len(blob) < pixels.nbytes / 2


def test_rgb_canonical_image_round_trips():
    pixels = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    np.testing.assert_array_equal(decode_canonical(encode_canonical(pixels)), pixels)


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((4, 4), np.float64), np.zeros((4, 4, 4), np.float32), np.zeros(4, np.float32)],
    ids=["float64", "four-channels", "one-dimensional"],
)
def test_only_canonical_images_are_encoded(pixels):
    with pytest.raises(ValueError, match="not a canonical image"):
        encode_canonical(pixels)


@pytest.mark.parametrize("blob", [b"", b"garbage", encode_canonical(np.zeros((2, 2), np.float32))[:-3]])
def test_damaged_stored_image_is_a_server_error(blob):
    with pytest.raises(ServiceError) as caught:
        decode_canonical(blob)
    assert (caught.value.code, caught.value.http_status) == ("corrupt_stored_input", 500)


def test_imaging_and_ingest_never_import_torch():
    script = (
        "import sys\n"
        "import xai.imaging, service.ingest\n"
        "data = open('examples/00000211_019_jpeg2000_lossless.dcm', 'rb').read()\n"
        "image = service.ingest.ingest_upload(data, limits=xai.imaging.DecodeLimits())\n"
        "import xai.wire\n"
        "xai.wire.decode_canonical(xai.wire.encode_canonical(image.pixels))\n"
        "xai.imaging.decode_annotation(b'[[0, 0, 4, 4]]', shape=image.pixels.shape)\n"
        "heavy = {'torch', 'torchvision', 'captum'}\n"
        "heavy = sorted(name for name in sys.modules if name.split('.')[0] in heavy)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


@pytest.mark.parametrize(("head", "shape"), [
    (encode_display(np.zeros((1024, 768), np.uint8))[:DISPLAY_HEADER_BYTES], (1024, 768)),
    (encode_display(np.zeros((5, 7, 3), np.uint8))[:DISPLAY_HEADER_BYTES], (5, 7, 3)),
    (b"not a display copy", None),
    (encode_canonical(np.zeros((4, 4), np.float32))[:DISPLAY_HEADER_BYTES], None),  # compressed, not raw
    (b"", None),  # the key is gone
])
def test_a_display_copy_shape_is_read_from_its_header_alone(head, shape):
    if shape is not None:
        assert display_shape(head) == shape
    else:
        with pytest.raises(ServiceError) as caught:
            display_shape(head)
        assert caught.value.code == "corrupt_stored_input"


def test_a_float_array_is_not_a_display_copy():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 4), np.float32))
    with pytest.raises(ServiceError, match="float32, 2 dims"):
        display_shape(buffer.getvalue()[:DISPLAY_HEADER_BYTES])
