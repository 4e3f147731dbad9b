"""Build the sample inputs in examples/ from real NIH ChestX-ray14 PNGs.

Writes, next to copies of three NIH PNGs (256 x 256, 8-bit) and their expert boxes as JSON,
DICOM Secondary Capture files of the first image in every transfer syntax and pixel encoding the
service decodes, and one 3-frame file of all three images. The DICOM files carry a fake,
non-identifying patient ("ANON^DEMO"), no dates, and UIDs derived from the file name, so running
the script twice gives the same files.

Encoders: pydicom 3 (RLE; JPEG-LS via pyjpegls; JPEG 2000 via pylibjpeg-openjpeg; deflate), Pillow
(JPEG baseline, wrapped with ``pydicom.encaps``), GDCM (JPEG lossless, process 14 SV1) and, when the
optional ``imagecodecs`` package is importable, OpenJPH through it (HTJ2K lossless). A missing
optional encoder skips its file with a note.

Usage::

    python scripts/make_dicom_samples.py                       # ../shared/data/nih_cxr14_bbox -> examples/
    python scripts/make_dicom_samples.py --source DIR --out DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "nih_cxr14_bbox"
DEFAULT_OUT = REPO / "examples"
# Cardiomegaly (AP), atelectasis (PA), nodule (PA): three findings with expert boxes.
SAMPLE_IMAGES = ("00000211_019", "00000072_000", "00001555_002")
JPEG_QUALITY = 90


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="NIH folder with images/, labels.csv and bbox.csv (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in build_samples(args.source, args.out):
        print(f"{path.stat().st_size:>8,}  {path.relative_to(args.out)}")


def build_samples(source: Path, out: Path) -> list[Path]:
    """Copy the sample PNGs and boxes from ``source`` and write every DICOM variant into ``out``.

    Args:
        source: A folder with ``images/<name>.png`` and, optionally, ``labels.csv`` (view position)
            and ``bbox.csv`` (expert boxes) in the NIH data set's layout; a flat folder of the
            PNGs also works.
        out: Output folder, created if needed.

    Returns:
        The paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    images = source / "images" if (source / "images").is_dir() else source
    views = _view_positions(source / "labels.csv")
    written = []
    for name in SAMPLE_IMAGES:
        if images.resolve() != out.resolve():
            written.append(Path(shutil.copyfile(images / f"{name}.png", out / f"{name}.png")))
        written += _write_boxes(source / "bbox.csv", name, out)
    main_name = SAMPLE_IMAGES[0]
    grey = _load_grey(images / f"{main_name}.png")
    for variant, build in _VARIANTS.items():
        ds = build(_secondary_capture(main_name, variant, views.get(main_name)), grey)
        if ds is not None:
            written.append(_save(ds, out / f"{main_name}_{variant}.dcm"))
    frames = np.stack([_load_grey(images / f"{name}.png") for name in SAMPLE_IMAGES])
    multi = _secondary_capture("nih_cxr14", "3_frames", None)
    multi.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    written.append(_save(multi, out / "nih_cxr14_3_frames.dcm"))
    return written


def _load_grey(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _view_positions(labels_csv: Path) -> dict[str, str]:
    if not labels_csv.is_file():
        return {}
    with labels_csv.open(newline="") as f:
        return {Path(row["image"]).stem: row["view_position"] for row in csv.DictReader(f)}


def _write_boxes(bbox_csv: Path, name: str, out: Path) -> list[Path]:
    """``<name>_boxes.json``: the image's expert boxes as [[x, y, w, h], ...] in its 256-px pixels."""
    if not bbox_csv.is_file():
        return []
    with bbox_csv.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if Path(row["image"]).stem == name]
    boxes = [[round(float(row[key]), 3) for key in ("x_256", "y_256", "w_256", "h_256")] for row in rows]
    path = out / f"{name}_boxes.json"
    path.write_text(json.dumps(boxes) + "\n")
    return [path]


def _secondary_capture(name: str, variant: str, view_position: str | None) -> Dataset:
    """A Secondary Capture dataset with a fake patient, no dates and UIDs derived from the names."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, variant, "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, variant, "series"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "ANON^DEMO"
    ds.PatientID = "DEMO0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "DX"
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = "CHEST"
    if view_position:
        ds.ViewPosition = view_position
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = variant.replace("_", " ")
    ds.DerivationDescription = f"Converted from NIH ChestX-ray14 {name}.png by scripts/make_dicom_samples.py"
    ds.BurnedInAnnotation = "NO"
    return ds


def _monochrome2(ds: Dataset, grey: np.ndarray) -> Dataset:
    ds.set_pixel_data(grey, "MONOCHROME2", 8, generate_instance_uid=False)
    return ds


def _with_syntax(syntax: UID) -> Callable[[Dataset, np.ndarray], Dataset]:
    """Uncompressed MONOCHROME2 written in another native syntax (pydicom encodes or deflates)."""

    def build(ds: Dataset, grey: np.ndarray) -> Dataset:
        _monochrome2(ds, grey).file_meta.TransferSyntaxUID = syntax
        return ds

    return build


def _compressed(syntax: UID) -> Callable[[Dataset, np.ndarray], Dataset]:
    """MONOCHROME2 compressed by pydicom's own encoders (RLE, JPEG-LS, JPEG 2000)."""

    def build(ds: Dataset, grey: np.ndarray) -> Dataset:
        _monochrome2(ds, grey).compress(syntax, generate_instance_uid=False)
        return ds

    return build


def _monochrome1(ds: Dataset, grey: np.ndarray) -> Dataset:
    # The same picture stored inverted: 0 is white in MONOCHROME1.
    ds.set_pixel_data(255 - grey, "MONOCHROME1", 8, generate_instance_uid=False)
    return ds


def _big_endian_12_bit(ds: Dataset, grey: np.ndarray) -> Dataset:
    # 8-bit values x 16 in 12 bits stored: more than one byte per pixel, so byte order matters.
    # pydicom writes Pixel Data bytes as given, so they are swapped here.
    stored = grey.astype(np.uint16) * 16
    ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = stored.astype(">u2").tobytes()
    return ds


def _rescale_and_window(ds: Dataset, grey: np.ndarray) -> Dataset:
    # CT-like storage: 12-bit values, Rescale Intercept -1024, and two windows of which the
    # first (full range) is the one a viewer, and the service, applies.
    ds.set_pixel_data(grey.astype(np.uint16) * 16, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = "US"
    ds.WindowCenter = [1016, 500]
    ds.WindowWidth = [4096, 1000]
    ds.WindowCenterWidthExplanation = ["FULL", "NARROW"]
    return ds


def _jpeg_baseline(ds: Dataset, grey: np.ndarray) -> Dataset:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=JPEG_QUALITY)
    _monochrome2(ds, grey)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = round(grey.size / len(buffer.getvalue()), 2)
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    return ds


def _jpeg_lossless_gdcm(ds: Dataset, grey: np.ndarray) -> Dataset | None:
    try:
        import gdcm
    except ImportError:
        print("note: python-gdcm is not installed; skipping JPEG lossless")
        return None
    from pydicom import dcmread

    with tempfile.TemporaryDirectory() as folder:
        plain, compressed = Path(folder) / "plain.dcm", Path(folder) / "jpeg_lossless.dcm"
        _monochrome2(ds, grey).save_as(plain, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(plain))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file it was given")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not encode JPEG lossless")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(compressed))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the JPEG lossless file")
        return dcmread(compressed)


def _htj2k_lossless(ds: Dataset, grey: np.ndarray) -> Dataset | None:
    try:
        import imagecodecs
    except ImportError:
        print("note: imagecodecs is not installed; skipping HTJ2K lossless")
        return None
    codestream = imagecodecs.htj2k_encode(grey, reversible=True)
    _monochrome2(ds, grey)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return ds


_VARIANTS: dict[str, Callable[[Dataset, np.ndarray], Dataset | None]] = {
    "explicit_vr_little_endian": _monochrome2,
    "implicit_vr_little_endian": _with_syntax(ImplicitVRLittleEndian),
    "deflated_explicit_vr_little_endian": _with_syntax(DeflatedExplicitVRLittleEndian),
    "explicit_vr_big_endian_12bit": _big_endian_12_bit,
    "monochrome1": _monochrome1,
    "12bit_rescale_window": _rescale_and_window,
    "rle_lossless": _compressed(RLELossless),
    "jpeg_ls_lossless": _compressed(JPEGLSLossless),
    "jpeg2000_lossless": _compressed(JPEG2000Lossless),
    "jpeg_lossless_sv1": _jpeg_lossless_gdcm,
    "htj2k_lossless": _htj2k_lossless,
    "jpeg_baseline": _jpeg_baseline,
}


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


if __name__ == "__main__":
    main()
