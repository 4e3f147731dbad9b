"""Tests for xai.imaging: every accepted format and DICOM transfer syntax decodes to known pixels,
the DICOM pixel pipeline gives known values, every bad input gets its stable 4xx code, and the
metadata never carries identifying data.

Fixtures: the NIH sample files in examples/ (built by scripts/make_dicom_samples.py), the DICOM
files bundled in the pydicom wheel, and small images built in the tests.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from xai.errors import ServiceError
from xai.imaging import ACCEPTED_FORMATS, DecodeLimits, decode_annotation, decode_image, sniff_format
from xai.imaging.canonical import min_max, to_unit_range
from xai.imaging.dicom import _grey_by_table, _grey_steps

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SOURCE_NAME = "00000211_019"
LIMITS = DecodeLimits()
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ---------------------------------------------------------------- helpers


def decode(data: bytes, **kwargs):
    kwargs.setdefault("limits", LIMITS)
    return decode_image(data, **kwargs)


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def bundled(name: str) -> bytes:
    """A DICOM file shipped inside the pydicom wheel (never downloaded)."""
    path = PYDICOM_FILES / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path.read_bytes()


def expect_error(code: str, status: int, call, *args, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert caught.value.http_status == status
    return caught.value


@pytest.fixture(scope="module")
def source_grey() -> np.ndarray:
    """The NIH image all single-frame DICOM samples were made from, as stored 8-bit values."""
    return np.asarray(Image.open(EXAMPLES / f"{SOURCE_NAME}.png"))


def pil_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_16_bit(samples: np.ndarray, colour_type: int, sbit: bytes | None = None) -> bytes:
    """A 16-bit PNG of any colour type (Pillow cannot write 16-bit colour), optional sBIT chunk."""
    rows, columns = samples.shape[:2]
    raw = b"".join(b"\x00" + samples[row].astype(">u2").tobytes() for row in range(rows))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", columns, rows, 16, colour_type, 0, 0, 0)
    extra = chunk(b"sBIT", sbit) if sbit else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def dicom_dataset(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements
) -> Dataset:
    """A minimal Secondary Capture dataset holding ``pixels``, plus any extra elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.set_pixel_data(
        pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False
    )
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    # pydicom needs the encoding spelled out for a transfer syntax it does not know.
    known = UID(ds.file_meta.TransferSyntaxUID).is_transfer_syntax
    ds.save_as(
        buffer, enforce_file_format=True, **({} if known else {"implicit_vr": False, "little_endian": True})
    )
    return buffer.getvalue()


def synthetic_dicom(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements
) -> bytes:
    return dicom_bytes(dicom_dataset(pixels, photometric, bits_stored, **elements))


def lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    """A Modality or VOI LUT item; US is spelled out since the LUT elements' VR is ambiguous."""
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


# ---------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (pil_bytes(Image.new("L", (4, 4))), "png"),
        (pil_bytes(Image.new("RGB", (4, 4)), "JPEG"), "jpeg"),
        (tiff_bytes(np.zeros((4, 4), np.uint8)), "tiff"),
        (tiff_bytes(np.zeros((4, 4), np.uint8), byteorder=">"), "tiff"),
        (tiff_bytes(np.zeros((4, 4), np.uint8), bigtiff=True), "tiff"),
        (synthetic_dicom(np.zeros((4, 4), np.uint8)), "dicom"),
    ],
)
def test_sniff_recognises_each_format_from_its_bytes(data, expected):
    assert sniff_format(data) == expected


def test_sniff_prefers_dicom_when_the_preamble_is_a_tiff_header():
    # CT_small.dcm's 128-byte preamble starts with "II*\0": a dual-personality DICOM/TIFF file.
    data = bundled("CT_small.dcm")
    assert data[:4] == b"II*\x00"
    assert sniff_format(data) == "dicom"
    assert decode(data).format == "dicom"


def test_sniff_accepts_a_bare_dataset_without_preamble():
    ds = dicom_dataset(np.arange(16, dtype=np.uint8).reshape(4, 4))
    del ds.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    assert sniff_format(data) == "dicom"
    image = decode(data)
    np.testing.assert_array_equal(image.pixels, min_max(np.arange(16).reshape(4, 4)))
    assert image.meta["transfer_syntax"]["uid"] == ImplicitVRLittleEndian
    # A bundled bare explicit-VR dataset is recognised too (it holds no image).
    assert sniff_format(bundled("ExplVR_LitEndNoMeta.dcm")) == "dicom"


def test_a_png_named_dcm_is_still_a_png(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(example(f"{SOURCE_NAME}.png"))
    image = decode(path.read_bytes())
    assert image.format == "png" and image.pixels.shape == (256, 256)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"%PDF-1.7 this is not an image",
        b"GIF89a\x01\x00\x01\x00",
        b"\x00" * 200,
    ],
    ids=["random", "pdf", "gif", "zeros"],
)
def test_unknown_bytes_are_refused_with_the_accepted_formats(data):
    error = expect_error("unsupported_format", 415, sniff_format, data)
    assert "PNG, JPEG, TIFF or DICOM" in error.message
    expect_error("unsupported_format", 415, decode, data)
    assert ACCEPTED_FORMATS == ("png", "jpeg", "tiff", "dicom")


def test_empty_file_is_refused():
    expect_error("empty_file", 422, sniff_format, b"")
    expect_error("empty_file", 422, decode, b"")


# ---------------------------------------------------------------- PNG / JPEG / TIFF

RAMP = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
RGB = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _palette_image(grey_palette: bool) -> tuple[Image.Image, np.ndarray]:
    indices = (np.arange(48).reshape(6, 8) % 4).astype(np.uint8)
    colours = (
        [[i * 80] * 3 for i in range(4)]
        if grey_palette
        else [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]]
    )
    image = Image.fromarray(indices, "P")
    image.putpalette([v for colour in colours for v in colour])
    expected = np.asarray(colours, np.float32)[indices] / 255
    return image, (expected[..., 0] if grey_palette else expected)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(RAMP), RAMP / 255),
        (Image.fromarray(np.dstack([RAMP, 255 - RAMP]), "LA"), RAMP / 255),  # alpha ignored
        (Image.fromarray(RGB), RGB / 255),
        (Image.fromarray(np.dstack([RGB, np.full((6, 8), 7, np.uint8)]), "RGBA"), RGB / 255),
        (Image.fromarray(np.dstack([RAMP] * 3)), RAMP / 255),  # equal channels come back grey
        (Image.fromarray(RAMP > 100), (RAMP > 100).astype(np.float32)),
        _palette_image(grey_palette=False),
        _palette_image(grey_palette=True),
    ],
    ids=["L", "LA", "RGB", "RGBA", "RGB-grey", "1-bit", "palette", "palette-grey"],
)
def test_png_layouts_decode_to_known_values(image, expected):
    decoded = decode(pil_bytes(image))
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.meta["channels"] == (1 if expected.ndim == 2 else 3)


@pytest.mark.parametrize(
    ("largest", "bits"),
    [(4095, 12), (1000, 10), (1500, 12), (40000, 16), (200, 8)],
)
def test_16_bit_grey_png_is_scaled_by_its_bit_range(largest, bits):
    values = np.linspace(0, largest, 48).astype(np.uint16).reshape(6, 8)
    decoded = decode(pil_bytes(Image.fromarray(values)))
    np.testing.assert_allclose(decoded.pixels, values / (2**bits - 1), rtol=1e-6)
    assert decoded.meta["intensity"] == f"bit_range:{bits}"
    assert decoded.pixels.max() <= 1.0  # never clipped: the largest value maps to at most 1


def test_16_bit_png_uses_its_declared_significant_bits():
    values = np.linspace(0, 1000, 48).astype(np.uint16).reshape(6, 8)
    decoded = decode(png_16_bit(values, colour_type=0, sbit=b"\x0c"))  # sBIT = 12
    np.testing.assert_allclose(decoded.pixels, values / 4095, rtol=1e-6)


@pytest.mark.parametrize(("colour_type", "channels"), [(2, 3), (6, 4), (4, 2)], ids=["RGB", "RGBA", "LA"])
def test_16_bit_colour_png_is_reduced_to_its_high_byte(colour_type, channels):
    samples = np.random.default_rng(2).integers(0, 65536, (6, 8, channels), dtype=np.uint16)
    decoded = decode(png_16_bit(samples, colour_type))
    colour = samples[..., :3] if channels >= 3 else samples[..., 0]
    np.testing.assert_allclose(decoded.pixels, (colour >> 8) / 255, atol=1e-6)
    assert decoded.meta["reduced_to_8_bit"] is True


def test_jpeg_grey_and_rgb_decode_close_to_their_source(source_grey):
    grey = decode(pil_bytes(Image.fromarray(source_grey), "JPEG", quality=95))
    assert grey.pixels.shape == (256, 256) and grey.format == "jpeg"
    assert np.abs(grey.pixels - source_grey / 255).mean() < 0.01
    colour = np.dstack([source_grey, 255 - source_grey, source_grey // 2])
    rgb = decode(pil_bytes(Image.fromarray(colour), "JPEG", quality=95))
    assert rgb.pixels.shape == (256, 256, 3)
    assert np.abs(rgb.pixels - colour / 255).mean() < 0.02


@pytest.mark.parametrize(
    ("array", "options", "expected"),
    [
        (RAMP, {}, RAMP / 255),
        (RAMP.astype(np.uint16) * 16, {}, RAMP * 16.0 / 4095),  # 12-bit data in 16-bit samples
        (RGB.astype(np.uint16) * 257, {"photometric": "rgb"}, RGB / 255),  # 16-bit RGB, exact
        (RAMP / 255.0, {}, RAMP / 255),  # float already in [0, 1]
        (RAMP * 10.0 - 3, {}, min_max(RAMP)),  # float outside [0, 1]
        (RAMP.astype(np.int16) - 100, {}, min_max(RAMP)),  # signed with negatives
        (RAMP, {"photometric": "miniswhite"}, 1 - RAMP / 255),
        (RAMP, {"compression": "zlib"}, RAMP / 255),
    ],
    ids=["u8", "u16-12bit", "rgb16", "float-unit", "float-wide", "int16", "miniswhite", "zlib"],
)
def test_tiff_layouts_decode_to_known_values(array, options, expected):
    decoded = decode(tiff_bytes(array, **options))
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.format == "tiff"


def test_palette_tiff_goes_through_its_colour_map():
    indices = (np.arange(48).reshape(6, 8) % 3).astype(np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :3] = [[65535, 0, 0], [0, 65535, 0], [0, 0, 32768]]
    decoded = decode(tiff_bytes(indices, photometric="palette", colormap=colormap))
    np.testing.assert_allclose(decoded.pixels, colormap[:, indices].transpose(1, 2, 0) / 65535, atol=1e-6)


def test_lzw_tiff_falls_back_to_pillow():
    # tifffile needs the optional imagecodecs package for LZW; Pillow's libtiff decodes it.
    decoded = decode(pil_bytes(Image.fromarray(RAMP), "TIFF", compression="tiff_lzw"))
    np.testing.assert_allclose(decoded.pixels, RAMP / 255, atol=1e-6)


def test_multi_page_tiff_pages_are_frames():
    stack = np.stack([RAMP, 255 - RAMP, RAMP // 2])
    data = tiff_bytes(stack, photometric="minisblack")
    np.testing.assert_allclose(decode(data, frame=1).pixels, (255 - RAMP) / 255, atol=1e-6)
    assert decode(data, frame=2).meta["number_of_frames"] == 3
    expect_error("frame_out_of_range", 422, decode, data, frame=3)
    expect_error("too_many_frames", 413, decode, data, limits=DecodeLimits(max_frames=2))


def test_non_finite_float_tiff_is_refused():
    expect_error("corrupt_image", 422, decode, tiff_bytes(np.array([[0.5, np.nan]], np.float32)))


def test_single_frame_png_refuses_another_frame():
    expect_error("frame_out_of_range", 422, decode, pil_bytes(Image.fromarray(RAMP)), frame=1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_raster_is_corrupt(fmt, source_grey):
    data = pil_bytes(Image.fromarray(source_grey), fmt)
    expect_error("corrupt_image", 422, decode, data[: len(data) // 2])


def test_png_bomb_is_refused_from_its_header():
    # A header claiming 7000 x 7000 (49 Mpx, above the 40 Mpx default) over a few bytes of data:
    # refused before decoding, and above Pillow's own guard (200 000 x 200 000) too.
    for side in (7000, 200_000):
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        body = zlib.compress(b"\x00" * 100)
        data = (
            b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", 13)
            + b"IHDR"
            + header
            + struct.pack(">I", zlib.crc32(b"IHDR" + header))
            + struct.pack(">I", len(body))
            + b"IDAT"
            + body
            + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        )
        expect_error("image_too_large", 413, decode, data)


def test_payload_over_max_bytes_is_refused_before_sniffing():
    expect_error("payload_too_large", 413, decode, b"x" * 101, limits=DecodeLimits(max_bytes=100))


@pytest.mark.parametrize("frame", [-1, "0", 1.0, True])
def test_frame_must_be_a_non_negative_integer(frame):
    expect_error("frame_out_of_range", 422, decode, pil_bytes(Image.fromarray(RAMP)), frame=frame)


# ---------------------------------------------------------------- DICOM samples from examples/

LOSSLESS_SAMPLES = [
    "explicit_vr_little_endian",
    "implicit_vr_little_endian",
    "deflated_explicit_vr_little_endian",
    "explicit_vr_big_endian_12bit",
    "rle_lossless",
    "jpeg_ls_lossless",
    "jpeg2000_lossless",
    "jpeg_lossless_sv1",
    "htj2k_lossless",
]
SAMPLE_SYNTAXES = {
    "explicit_vr_little_endian": "1.2.840.10008.1.2.1",
    "implicit_vr_little_endian": "1.2.840.10008.1.2",
    "deflated_explicit_vr_little_endian": "1.2.840.10008.1.2.1.99",
    "explicit_vr_big_endian_12bit": "1.2.840.10008.1.2.2",
    "rle_lossless": "1.2.840.10008.1.2.5",
    "jpeg_ls_lossless": "1.2.840.10008.1.2.4.80",
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "htj2k_lossless": "1.2.840.10008.1.2.4.201",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
}


@pytest.mark.parametrize("variant", LOSSLESS_SAMPLES)
def test_lossless_dicom_samples_equal_their_source_png(variant, source_grey):
    image = decode(example(f"{SOURCE_NAME}_{variant}.dcm"))
    # No window in these files: min-max over the frame, which the 12-bit (x16) copy shares.
    np.testing.assert_allclose(image.pixels, min_max(source_grey), atol=1e-6)
    assert image.meta["window"] == "minmax"
    assert image.meta["transfer_syntax"]["uid"] == SAMPLE_SYNTAXES[variant]
    assert (image.meta["modality"], image.meta["body_part_examined"], image.meta["view_position"]) == (
        "DX",
        "CHEST",
        "AP",
    )


def test_monochrome1_sample_decodes_to_the_same_picture_as_monochrome2():
    mono1 = decode(example(f"{SOURCE_NAME}_monochrome1.dcm"))
    mono2 = decode(example(f"{SOURCE_NAME}_explicit_vr_little_endian.dcm"))
    # Stored inverted (255 - v) and inverted back on decode: high = bright in both.
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    assert mono1.meta["inverted"] is True and mono2.meta["inverted"] is False


def test_jpeg_baseline_sample_is_close_to_its_source(source_grey):
    image = decode(example(f"{SOURCE_NAME}_jpeg_baseline.dcm"))
    error = np.abs(image.pixels - min_max(source_grey))
    assert error.mean() < 0.01 and error.max() < 0.15
    assert image.meta["transfer_syntax"]["uid"] == SAMPLE_SYNTAXES["jpeg_baseline"]


def test_rescale_and_first_window_sample_gives_the_linear_window(source_grey):
    image = decode(example(f"{SOURCE_NAME}_12bit_rescale_window.dcm"))
    hounsfield = source_grey.astype(np.float64) * 16 - 1024  # stored x16, intercept -1024
    center, width = 1016, 4096  # the first of two windows
    expected = np.clip((hounsfield - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.meta["window"] == {"center": 1016.0, "width": 4096.0, "function": "LINEAR"}
    assert image.meta["rescale"] == {"slope": 1.0, "intercept": -1024.0}


def test_multi_frame_sample_decodes_each_frame():
    data = example("nih_cxr14_3_frames.dcm")
    for frame, name in enumerate(["00000211_019", "00000072_000", "00001555_002"]):
        image = decode(data, frame=frame)
        np.testing.assert_array_equal(image.pixels, min_max(np.asarray(Image.open(EXAMPLES / f"{name}.png"))))
        assert (image.meta["frame"], image.meta["number_of_frames"]) == (frame, 3)
    error = expect_error("frame_out_of_range", 422, decode, data, frame=3)
    assert "(0028,0008) Number of Frames is 3" in error.message
    expect_error("too_many_frames", 413, decode, data, limits=DecodeLimits(max_frames=2))


# ---------------------------------------------------------------- DICOM files bundled with pydicom

MR_SMALL_TWINS = [
    "MR_small_RLE.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # MR_small_padded has excess padding on purpose
@pytest.mark.parametrize("name", MR_SMALL_TWINS)
def test_bundled_mr_small_in_every_syntax_equals_the_uncompressed_one(name):
    reference = decode(bundled("MR_small.dcm"))
    np.testing.assert_array_equal(decode(bundled(name)).pixels, reference.pixels)
    assert reference.meta["window"] == {"center": 600.0, "width": 1600.0, "function": "LINEAR"}


# SC_rgb test pattern (pydicom's own tests use the same rows): stripes of known colours.
RGB_STRIPES = {
    5: (255, 0, 0),
    15: (255, 128, 128),
    25: (0, 255, 0),
    35: (128, 255, 128),
    45: (0, 0, 255),
    55: (128, 128, 255),
    65: (0, 0, 0),
    75: (64, 64, 64),
    85: (192, 192, 192),
    95: (255, 255, 255),
}


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_32bit.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_rle_2frame.dcm",
    ],
)
def test_bundled_lossless_rgb_files_show_the_known_colours(name):
    pixels = decode(bundled(name)).pixels
    assert pixels.shape == (100, 100, 3)
    for row, colour in RGB_STRIPES.items():
        np.testing.assert_allclose(pixels[row, 50] * 255, colour, atol=1e-3)


@pytest.mark.parametrize(
    "name",
    [
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
        "SC_rgb_dcmtk_+eb+cr.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_gdcm_KY.dcm",
        "SC_rgb_jls_lossy_line.dcm",
    ],
)
def test_bundled_ybr_and_lossy_rgb_files_convert_to_rgb(name):
    pixels = decode(bundled(name)).pixels
    # Lossy and chroma-subsampled: edges between stripes blur, stripe centres keep their colour.
    assert np.abs(pixels - decode(bundled("SC_rgb_rle.dcm")).pixels).mean() < 0.02
    for row, colour in RGB_STRIPES.items():
        np.testing.assert_allclose(pixels[row, 50] * 255, colour, atol=8)


def test_bundled_two_frame_rgb_second_frame_is_the_negative():
    first = decode(bundled("SC_rgb_rle_2frame.dcm"), frame=0).pixels
    second = decode(bundled("SC_rgb_rle_2frame.dcm"), frame=1).pixels
    np.testing.assert_allclose(second, 1 - first, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "shape", "window"),
    [
        ("CT_small.dcm", (128, 128), "minmax"),
        ("JPGExtended.dcm", (1024, 256), "minmax"),  # 12-bit JPEG extended
        ("JPEG2000.dcm", (1024, 256), "minmax"),
        ("693_J2KI.dcm", (512, 512), {"center": 40.0, "width": 100.0, "function": "LINEAR"}),
        ("image_dfl.dcm", (512, 512), "minmax"),  # deflated
        ("liver_1frame.dcm", (512, 512), "minmax"),  # 1 bit allocated
        ("rtdose_rle.dcm", (10, 10), "minmax"),  # 32-bit, 15 frames
        ("JPEGLSNearLossless_16.dcm", (50, 10), "minmax"),
        ("examples_jpeg2k.dcm", (480, 640, 3), None),  # YBR_RCT
        ("examples_palette.dcm", (350, 800, 3), None),
        ("examples_ybr_color.dcm", (240, 320, 3), None),  # JPEG baseline, 30 frames
    ],
)
def test_bundled_images_decode_to_the_canonical_contract(name, shape, window):
    image = decode(bundled(name))
    assert image.pixels.shape == shape and image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0 and image.pixels.max() > image.pixels.min()
    assert image.meta["window"] == window


def test_bundled_ct_small_applies_its_rescale():
    image = decode(bundled("CT_small.dcm"))
    ds = pydicom.dcmread(io.BytesIO(bundled("CT_small.dcm")))
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image.pixels, min_max(hounsfield), atol=1e-6)
    assert image.meta["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert image.meta["pixel_spacing"] == pytest.approx([0.661468, 0.661468])


def test_bundled_multi_frame_colour_file_picks_frames_and_counts_them():
    data = bundled("examples_ybr_color.dcm")
    assert decode(data, frame=29).meta["number_of_frames"] == 30
    expect_error("frame_out_of_range", 422, decode, data, frame=30)
    expect_error("too_many_frames", 413, decode, data, limits=DecodeLimits(max_frames=10))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("JPEG-lossy.dcm", "corrupt_image"),  # a JPEG stream no decoder accepts
        ("JPEG2000-embedded-sequence-delimiter.dcm", "corrupt_image"),
        ("MR_truncated.dcm", "dicom_truncated_pixel_data"),
        ("rtplan.dcm", "dicom_no_pixel_data"),
        ("test-SR.dcm", "dicom_no_pixel_data"),
        ("ExplVR_LitEndNoMeta.dcm", "dicom_no_pixel_data"),
    ],
)
def test_bundled_broken_or_non_image_files_get_their_code(name, code):
    error = expect_error(code, 422, decode, bundled(name))
    assert "(7FE0,0010) Pixel Data" in error.message


# ---------------------------------------------------------------- DICOM pixel pipeline on known arrays


def test_rescale_then_window_gives_known_values():
    stored = np.array([[0, 100, 200, 300, 400]], np.uint16)
    data = synthetic_dicom(
        stored,
        bits_stored=16,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=[300, 0],
        WindowWidth=[401, 10],
    )
    image = decode(data)
    # Rescaled: -100, 100, 300, 500, 700. Window 300/401 (the first of two): PS3.3 C.11.2.1.2.1.
    np.testing.assert_allclose(image.pixels, [[0.0, 0.00125, 0.50125, 1.0, 1.0]], atol=1e-6)
    assert image.meta["window"]["center"] == 300.0


def test_sigmoid_window_gives_known_values():
    stored = np.array([[0, 50, 100]], np.uint16)
    image = decode(
        synthetic_dicom(stored, bits_stored=16, WindowCenter=50, WindowWidth=50, VOILUTFunction="SIGMOID")
    )
    expected = 1 / (1 + np.exp(-4 * (stored.astype(float) - 50) / 50))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_voi_lut_sequence_wins_over_the_window():
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    data = synthetic_dicom(
        stored,
        bits_stored=16,
        VOILUTSequence=[lut_item([4, 0, 8], [0, 50, 200, 255])],
        WindowCenter=1,
        WindowWidth=2,
    )
    image = decode(data)
    np.testing.assert_allclose(image.pixels, [[0, 50 / 255, 200 / 255, 1]], atol=1e-6)
    assert image.meta["window"] == "voi_lut"


def test_modality_lut_sequence_is_applied_before_min_max():
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    image = decode(
        synthetic_dicom(
            stored, bits_stored=16, ModalityLUTSequence=[lut_item([4, 0, 16], [0, 1000, 2000, 4000])]
        )
    )
    np.testing.assert_allclose(image.pixels, [[0, 0.25, 0.5, 1]], atol=1e-6)
    assert image.meta["rescale"] == "modality_lut"


def test_monochrome1_is_inverted_after_the_window():
    stored = np.array([[0, 100, 200, 300, 400]], np.uint16)
    window = {"WindowCenter": 200, "WindowWidth": 399}
    mono2 = decode(synthetic_dicom(stored, "MONOCHROME2", 16, **window)).pixels
    mono1 = decode(synthetic_dicom(stored, "MONOCHROME1", 16, **window)).pixels
    np.testing.assert_allclose(mono1, 1 - mono2, atol=1e-6)
    assert mono1[0, 0] == 1.0  # the lowest stored value is white in MONOCHROME1


def test_signed_pixels_and_constant_frames_use_min_max():
    signed = np.array([[-1000, 0, 1000]], np.int16)
    np.testing.assert_allclose(decode(synthetic_dicom(signed, bits_stored=16)).pixels, [[0, 0.5, 1]])
    constant = np.full((4, 4), 7, np.uint8)
    np.testing.assert_array_equal(decode(synthetic_dicom(constant)).pixels, np.zeros((4, 4)))


def test_invalid_window_width_falls_back_to_min_max():
    stored = np.array([[0, 5, 10]], np.uint16)
    image = decode(synthetic_dicom(stored, bits_stored=16, WindowCenter=5, WindowWidth=0))
    np.testing.assert_allclose(image.pixels, [[0, 0.5, 1]])
    assert image.meta["window"] == "minmax"


def test_a_modality_lut_out_of_order_stretches_only_the_values_the_frame_holds():
    # Entries 4000, 0, 3000, 1000; the frame holds stored 1 and 2 only, so min-max runs over 0..3000,
    # not over the whole table's 0..4000 (the table path must not read entries the frame lacks).
    stored = np.array([[1, 2, 1]], np.uint16)
    lut = [lut_item([4, 0, 16], [4000, 0, 3000, 1000])]
    data = synthetic_dicom(stored, bits_stored=16, ModalityLUTSequence=lut)
    np.testing.assert_array_equal(decode(data).pixels, [[0, 1, 0]])
    ds = pydicom.dcmread(io.BytesIO(data))
    np.testing.assert_array_equal(_grey_by_table(ds.pixel_array, ds, "MONOCHROME2")[0], [[0, 1, 0]])


_NOISY = np.random.default_rng(7)
GREY_CASES = {
    "12-bit, rescale and window": (
        _NOISY.integers(0, 4096, (40, 50)).astype(np.uint16), "MONOCHROME2", 12,
        {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 500, "WindowWidth": 1200}),
    "signed, min-max": (_NOISY.integers(-1024, 3000, (40, 50)).astype(np.int16), "MONOCHROME2", 16, {}),
    "signed, falling rescale": (
        _NOISY.integers(-500, 500, (40, 50)).astype(np.int16), "MONOCHROME2", 16,
        {"RescaleSlope": -0.5, "RescaleIntercept": 10}),
    "MONOCHROME1, sigmoid window": (
        _NOISY.integers(0, 1024, (40, 50)).astype(np.uint16), "MONOCHROME1", 10,
        {"WindowCenter": 400, "WindowWidth": 300, "VOILUTFunction": "SIGMOID"}),
    "VOI LUT": (_NOISY.integers(0, 4, (40, 50)).astype(np.uint16), "MONOCHROME2", 16,
                {"VOILUTSequence": [lut_item([4, 0, 8], [0, 50, 200, 255])]}),
    "modality LUT out of order": (
        _NOISY.integers(1, 3, (40, 50)).astype(np.uint16), "MONOCHROME2", 16,
        {"ModalityLUTSequence": [lut_item([4, 0, 16], [4000, 0, 3000, 1000])]}),
    "8-bit, window too narrow": (_NOISY.integers(0, 256, (40, 50)).astype(np.uint8), "MONOCHROME2", 8,
                                 {"WindowCenter": 5, "WindowWidth": 0}),
}


@pytest.mark.parametrize("case", GREY_CASES, ids=list(GREY_CASES))
def test_grey_frames_through_the_value_table_equal_the_steps_on_every_pixel(case):
    stored, photometric, bits, elements = GREY_CASES[case]
    data = synthetic_dicom(stored, photometric, bits, **elements)
    ds = pydicom.dcmread(io.BytesIO(data))
    expected, processing = _grey_steps(ds.pixel_array, ds, photometric)
    looked_up, table_processing = _grey_by_table(ds.pixel_array, ds, photometric)
    np.testing.assert_array_equal(looked_up, np.asarray(expected, dtype=np.float32))
    assert table_processing == processing
    np.testing.assert_array_equal(decode(data).pixels, looked_up)  # whichever path decode takes
    assert len(np.unique(looked_up)) > 1  # a case that stretched nothing would prove nothing


def test_rgb_is_scaled_by_bits_stored_and_ybr_full_is_converted():
    rgb = np.random.default_rng(3).integers(0, 4096, (8, 8, 3), dtype=np.uint16)
    np.testing.assert_allclose(decode(synthetic_dicom(rgb, "RGB", 12)).pixels, rgb / 4095, atol=1e-6)
    colours = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ybr = convert_color_space(colours, "RGB", "YBR_FULL")
    decoded = decode(synthetic_dicom(ybr, "YBR_FULL", 8))
    assert np.abs(decoded.pixels - colours / 255).max() <= 2 / 255  # YCbCr rounding both ways


def test_rle_multi_frame_synthetic_picks_the_frame():
    frames = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30)])
    frames[:, 0, 0] = 0
    ds = dicom_dataset(frames)
    ds.compress(RLELossless, generate_instance_uid=False)
    image = decode(dicom_bytes(ds), frame=2)
    np.testing.assert_allclose(image.pixels, min_max(frames[2]))


# ---------------------------------------------------------------- DICOM errors


def test_dicom_without_pixel_data_names_the_tag():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    del ds.PixelData
    error = expect_error("dicom_no_pixel_data", 422, decode, dicom_bytes(ds))
    assert "(7FE0,0010) Pixel Data" in error.message and "Secondary Capture Image Storage" in error.message


@pytest.mark.parametrize("keep", [0.3, 0.75, 0.999])
def test_truncated_pixel_data_is_reported_as_truncated(keep, source_grey):
    data = synthetic_dicom(source_grey)
    header_end = data.index(b"\xe0\x7f\x10\x00")
    cut = header_end + 2 + int((len(data) - header_end) * keep)
    error = expect_error("dicom_truncated_pixel_data", 422, decode, data[:cut])
    assert "(7FE0,0010) Pixel Data" in error.message


def test_bogus_transfer_syntax_is_refused_with_its_uid():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    error = expect_error("dicom_unsupported_transfer_syntax", 415, decode, dicom_bytes(ds))
    assert "'1.2.3.4.5.6.7'" in error.message and "(0002,0010) Transfer Syntax UID" in error.message


def test_known_transfer_syntax_without_a_decoder_is_refused_by_name():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3"])
    ds["PixelData"].VR = "OB"
    error = expect_error("dicom_unsupported_transfer_syntax", 415, decode, dicom_bytes(ds))
    assert "'MPEG2 Main Profile / Main Level' (1.2.840.10008.1.2.4.100)" in error.message


def test_transfer_syntax_whose_plugin_is_not_installed_lists_what_is_missing(monkeypatch):
    # Simulate an install without pylibjpeg-openjpeg by emptying the real HTJ2K decoder's plugins.
    decoder = get_decoder(HTJ2KLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.4")})
    error = expect_error(
        "dicom_unsupported_transfer_syntax", 415, decode, example(f"{SOURCE_NAME}_htj2k_lossless.dcm")
    )
    assert "High-Throughput JPEG 2000" in error.message and "pylibjpeg-openjpeg" in error.message


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("photometric", ["HSV", "CMYK", "DOE^JOHN"])
def test_unsupported_photometric_interpretation_is_refused(photometric):
    ds = dicom_dataset(np.zeros((4, 4, 3), np.uint8), "RGB")
    ds.PhotometricInterpretation = photometric
    error = expect_error("dicom_unsupported_photometric", 415, decode, dicom_bytes(ds))
    assert "(0028,0004) Photometric Interpretation" in error.message and "MONOCHROME2" in error.message
    assert "DOE" not in error.message  # a malformed value is not echoed


def test_inconsistent_or_missing_header_elements_name_the_tag():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    ds.SamplesPerPixel = 3
    assert (
        "(0028,0002) Samples per Pixel" in expect_error("corrupt_image", 422, decode, dicom_bytes(ds)).message
    )
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    del ds.Rows
    assert "(0028,0010) Rows" in expect_error("corrupt_image", 422, decode, dicom_bytes(ds)).message


def test_dicom_bomb_is_refused_from_its_header():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8))
    ds.Rows, ds.Columns = 60000, 60000
    expect_error("image_too_large", 413, decode, dicom_bytes(ds))
    expect_error(
        "image_too_large",
        413,
        decode,
        synthetic_dicom(np.zeros((10, 10), np.uint8)),
        limits=DecodeLimits(max_pixels=99),
    )


def test_single_frame_dicom_refuses_frame_one():
    error = expect_error(
        "frame_out_of_range", 422, decode, synthetic_dicom(np.zeros((4, 4), np.uint8)), frame=1
    )
    assert "(0028,0008) Number of Frames is 1" in error.message


SEEDED_MUTATIONS = 40


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damage we made
@pytest.mark.parametrize(
    "name",
    [
        f"{SOURCE_NAME}.png",
        f"{SOURCE_NAME}_explicit_vr_little_endian.dcm",
        f"{SOURCE_NAME}_jpeg2000_lossless.dcm",
        f"{SOURCE_NAME}_jpeg_ls_lossless.dcm",
        f"{SOURCE_NAME}_rle_lossless.dcm",
        f"{SOURCE_NAME}_jpeg_baseline.dcm",
        f"{SOURCE_NAME}_deflated_explicit_vr_little_endian.dcm",
        "nih_cxr14_3_frames.dcm",
    ],
)
def test_damaged_files_raise_only_service_errors(name):
    """Truncations and byte flips anywhere: the result is a canonical image or a 4xx ServiceError."""
    data = example(name)
    rng = np.random.default_rng(5)
    for _ in range(SEEDED_MUTATIONS):
        damaged = bytearray(data[: rng.integers(1, len(data))] if rng.random() < 0.5 else data)
        for position in rng.integers(0, len(damaged), rng.integers(1, 8)):
            damaged[position] = rng.integers(0, 256)
        try:
            image = decode(bytes(damaged))
        except ServiceError as error:
            assert 400 <= error.http_status < 500, (error.code, error.message)
        else:
            assert image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()


# ---------------------------------------------------------------- metadata never identifies anyone

IDENTIFYING = {
    "PatientName": "DOE^JOHNATHAN",
    "PatientID": "PID-998877",
    "OtherPatientIDs": "ALT-443322",
    "PatientBirthDate": "19450317",
    "PatientAddress": "12 Elm Street Springfield",
    "PatientTelephoneNumbers": "555-0199",
    "AccessionNumber": "ACC55501",
    "InstitutionName": "St Elsewhere General",
    "InstitutionAddress": "1 Hospital Road Boston",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "GREY^MEREDITH",
    "OperatorsName": "TECH^TINA",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-31415926",
    "StudyDate": "20240229",
    "SeriesDate": "20240301",
    "AcquisitionDateTime": "20240302101112",
    "ContentDate": "20240303",
    "StudyTime": "101112",
    "StudyID": "STUDY-777",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.111222333",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.444555666",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.777888999",
    "StudyDescription": "Chest pain in Mr Doe",
    "ImageComments": "Patient John Doe, bed 12",
}


def test_metadata_holds_none_of_the_identifying_values():
    ds = dicom_dataset(
        np.arange(64, dtype=np.uint8).reshape(8, 8),
        Modality="DX",
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        PixelSpacing=[0.5, 0.5],
        **IDENTIFYING,
    )
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123123123"
    ds.private_block(0x0011, "ACME HOSPITAL", create=True).add_new(0x10, "LO", "PRIVATE-SECRET-42")
    image = decode(dicom_bytes(ds))
    dumped = json.dumps(image.meta)
    for value in [
        *IDENTIFYING.values(),
        "1.2.826.0.1.3680043.8.498.123123123",
        "PRIVATE-SECRET-42",
        "ACME",
        "DOE",
        "JOHN",
    ]:
        assert value not in dumped, value
    assert set(image.meta) == {
        "format",
        "rows",
        "columns",
        "channels",
        "bits_stored",
        "photometric_interpretation",
        "transfer_syntax",
        "number_of_frames",
        "frame",
        "modality",
        "body_part_examined",
        "view_position",
        "pixel_spacing",
        "window",
        "rescale",
        "inverted",
    }
    assert (image.meta["modality"], image.meta["view_position"], image.meta["pixel_spacing"]) == (
        "DX",
        "PA",
        [0.5, 0.5],
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns when the test writes bad CS values
@pytest.mark.parametrize(
    ("modality", "body_part", "view", "kept"),
    [
        ("DX", "John Doe's chest", "pa", (None, None)),
        ("DX", "WARD 7", "LATERAL", (None, None)),  # valid Code Strings, but not defined terms
        ("DX", "DOE JOHN", "PA", (None, "PA")),
        ("DX", "CHEST", "AP", ("CHEST", "AP")),
        ("DX", "SKULL", "RLO", ("SKULL", "RLO")),
    ],
)
def test_only_defined_terms_of_coded_fields_are_kept(modality, body_part, view, kept):
    ds = dicom_dataset(np.zeros((4, 4), np.uint8), Modality=modality, BodyPartExamined=body_part, ViewPosition=view)
    meta = decode(dicom_bytes(ds)).meta
    assert (meta["body_part_examined"], meta["view_position"]) == kept


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("modality", "kept"), [("CT", "CT"), ("DX", "DX"), ("MRN123", None), ("SMITH", None)])
def test_only_defined_modalities_are_kept(modality, kept):
    ds = dicom_dataset(np.zeros((4, 4), np.uint8), Modality=modality)
    assert decode(dicom_bytes(ds)).meta["modality"] == kept


def test_error_messages_hold_none_of_the_identifying_values():
    ds = dicom_dataset(np.zeros((4, 4), np.uint8), **IDENTIFYING)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    message = expect_error("dicom_unsupported_transfer_syntax", 415, decode, dicom_bytes(ds)).message
    assert not any(value in message for value in IDENTIFYING.values())


# ---------------------------------------------------------------- annotations


def test_boxes_become_a_mask_covering_every_overlapped_pixel():
    mask = decode_annotation(b"[[1, 0, 2, 1], [0.5, 2.5, 1, 1]]", shape=(4, 5))
    expected = np.zeros((4, 5), bool)
    expected[0, 1:3] = True
    expected[2:4, 0:2] = True  # [0.5, 1.5) x [2.5, 3.5) overlaps rows 2-3 and columns 0-1
    np.testing.assert_array_equal(mask, expected)


def test_example_boxes_match_the_nih_box_list():
    mask = decode_annotation(example(f"{SOURCE_NAME}_boxes.json"), shape=(256, 256))
    x, y, width, height = json.loads(example(f"{SOURCE_NAME}_boxes.json"))[
        0
    ]  # 85.017, 105.695, 125.288, 101.695
    assert mask.sum() == (int(np.ceil(x + width)) - int(x)) * (int(np.ceil(y + height)) - int(y))


@pytest.mark.parametrize(
    "data",
    [
        b"[[1, 2, 3]]",
        b"[[1, 2, 3, 4, 5]]",
        b"[[-1, 0, 2, 2]]",
        b"[[0, 0, 0, 2]]",
        b"[[0, 0, 6, 1]]",
        b"[[0, 0, 1, 5]]",
        b"[]",
        b'{"boxes": []}',
        b"[[true, 0, 1, 1]]",
        b'[["1", 0, 1, 1]]',
        b"[[NaN, 0, 1, 1]]",
        b"[1, 2, 3, 4]",
        b"[[0, 0, 1, 1]",
        b"[[0, 0, 1, 1]]\xff",
        b"[" * 100_000,
    ],
    ids=[
        "three",
        "five",
        "negative",
        "zero-width",
        "too-wide",
        "too-tall",
        "empty",
        "object",
        "bool",
        "string",
        "nan",
        "flat",
        "unclosed",
        "not-utf8",
        "deep",
    ],
)
def test_invalid_boxes_are_refused(data):
    expect_error("invalid_annotation", 422, decode_annotation, data, shape=(4, 5))


def test_mask_images_use_non_zero_as_inside():
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 1  # a 0/1 label map: 1/255 after scaling is still inside
    np.testing.assert_array_equal(decode_annotation(pil_bytes(Image.fromarray(mask)), shape=(6, 8)), mask > 0)
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[1, 1, 2] = 200
    assert decode_annotation(pil_bytes(Image.fromarray(colour)), shape=(6, 8)).sum() == 1


def test_mask_of_another_size_is_resized_nearest_neighbour():
    small = np.zeros((4, 4), np.uint8)
    small[1, 2] = 255
    mask = decode_annotation(pil_bytes(Image.fromarray(small)), shape=(16, 16))
    np.testing.assert_array_equal(mask, np.kron(small > 0, np.ones((4, 4), bool)))


def test_mask_with_another_aspect_ratio_is_refused():
    error = expect_error(
        "invalid_annotation",
        422,
        decode_annotation,
        pil_bytes(Image.fromarray(np.full((4, 8), 255, np.uint8))),
        shape=(8, 8),
    )
    assert "aspect" in error.message


def test_jpeg_mask_is_thresholded_at_half_its_maximum():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    decoded = decode_annotation(pil_bytes(Image.fromarray(mask), "JPEG", quality=75), shape=(64, 64))
    assert (decoded != (mask > 0)).sum() < 20  # only a few edge pixels may flip, not a halo


def test_empty_mask_and_unknown_bytes_are_refused():
    expect_error(
        "invalid_annotation",
        422,
        decode_annotation,
        pil_bytes(Image.fromarray(np.zeros((4, 4), np.uint8))),
        shape=(4, 4),
    )
    error = expect_error("unsupported_format", 415, decode_annotation, b"GIF89a not a mask", shape=(4, 4))
    assert "JSON boxes" in error.message


# ---------------------------------------------------------------- the sample-building script


def test_sample_script_rebuilds_the_committed_examples(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_dicom_samples", REPO / "scripts" / "make_dicom_samples.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # The copied PNGs and the one label column the script reads stand in for the NIH data set.
    source = tmp_path / "nih"
    (source / "images").mkdir(parents=True)
    for name in script.SAMPLE_IMAGES:
        (source / "images" / f"{name}.png").write_bytes(example(f"{name}.png"))
    (source / "labels.csv").write_text("image,view_position\n00000211_019.png,AP\n")
    written = script.build_samples(source, tmp_path / "out")
    dicom_files = [path for path in written if path.suffix == ".dcm"]
    assert len(dicom_files) >= 11  # HTJ2K and JPEG lossless need optional encoders
    for path in dicom_files:
        # Deterministic UIDs and no dates: the script reproduces the committed files byte for byte.
        assert path.read_bytes() == example(path.name), path.name


@pytest.mark.parametrize("bits", range(1, 17))
def test_the_float32_division_of_stored_values_equals_the_float64_path_for_every_value(bits):
    """to_unit_range divides in float32 for speed; for every value of every bit depth the result is the
    float32 rounding of the exact (float64) quotient, so the shortcut changes no pixel."""
    values = np.arange(2**bits, dtype=np.uint16)
    pixels, rule = to_unit_range(values, declared_bits=bits)
    assert rule == f"bit_range:{bits}"
    assert np.array_equal(pixels, (values.astype(np.float64) / (2**bits - 1)).astype(np.float32))


def test_8_bit_values_divide_by_255_exactly():
    values = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_unit_range(values)[0], (values / 255.0).astype(np.float32))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_plain_png_decodes_to_exactly_pillows_samples(mode):
    """8-bit grey and RGB PNGs are decoded by libpng straight into an array; the samples are Pillow's."""
    rng = np.random.default_rng(3)
    shape = (37, 53) if mode == "L" else (37, 53, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    data = buffer.getvalue()
    decoded = decode_image(data, limits=DecodeLimits())
    assert np.array_equal(np.round(decoded.pixels * 255).astype(np.uint8), np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("make, has_samples", [
    (lambda grey: pil_bytes(Image.fromarray(grey)), True),  # 8-bit grey PNG (libpng's path)
    (lambda grey: pil_bytes(Image.fromarray(np.stack([grey] * 3, -1))), True),  # RGB of grey pixels
    (lambda grey: pil_bytes(Image.fromarray(grey).convert("P")), True),  # palette: Pillow's path
    (lambda grey: pil_bytes(Image.fromarray(grey), "JPEG", quality=95), True),
    (lambda grey: png_16_bit(grey.astype(np.uint16) * 257, colour_type=0), False),
    (lambda grey: example(f"{SOURCE_NAME}_explicit_vr_little_endian.dcm"), False),  # DICOM: its modality and VOI rules made the floats
])
def test_the_8_bit_samples_are_kept_exactly_where_the_pixels_are_them_over_255(source_grey, make, has_samples):
    decoded = decode(make(source_grey))
    if not has_samples:
        assert decoded.samples8 is None
        return
    assert decoded.samples8.dtype == np.uint8 and decoded.samples8.shape == decoded.pixels.shape
    assert np.array_equal(decoded.samples8 / np.float32(255), decoded.pixels)
