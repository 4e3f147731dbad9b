"""A job's DICOM results, filed in the source's study: Secondary Capture, Parametric Map, Structured Report.

Built with highdicom from the source's filing attributes (``xai.imaging.dicom.FILING_ATTRIBUTES``:
patient and study modules, the source's UIDs and plane geometry), never from anything else of the
upload. Per method, three new instances, each in its own new series of the source's study (one
series per kind, since a series holds one modality), each referencing the source SOP instance:

- ``sc.dcm``: the overlay as an RGB Secondary Capture with a burned-in caption saying what it is and
  is not (``BurnedInAnnotation`` YES), at the display size;
- ``pm.dcm``: the heatmap as a Parametric Map on the source's pixel grid (enlarged bilinearly, as
  ``heatmap.npy``), 12-bit levels with a real-world value mapping back to the attribution values and
  the turbo palette for display. It is written for a source with a frame of reference and plane
  geometry; one without them (most CR and DX radiographs) gets none, and the job says why: the IOD
  would allow a map on the bare pixel grid, but highdicom 0.28.2 writes its frame index
  inconsistently there (an empty Dimension Index Values for a Frame Label dimension) and refuses it;
- ``sr.dcm``: a TID 1500 Measurement Report with the prediction, the target, the method and its
  parameters (as TID 4019 algorithm identification) and the faithfulness, complexity and
  localisation figures, referencing the source image.

Concepts DICOM has no code for use the private coding scheme ``99XAI`` (PS3.16 8.2: a "99" prefix
marks a local scheme).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.spatial import get_closest_patient_orientation
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import JPEGLSLossless

from xai.imaging import render
from xai.imaging.resize import resize

SCHEME = "99XAI"
MANUFACTURER = "xai-service"
SOFTWARE_VERSION = "0.1.0"
# Series numbers of the results, far from those a modality gives, so a viewer lists them after the source.
SERIES_NUMBERS = {"sc": 9001, "pm": 9002, "sr": 9003}
PM_LEVELS = 4095  # 12-bit levels: finer than any colour map shows, and a 4096-entry palette
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def _concept(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning)


PROCEDURE = _concept("XAI-EXPL", "Explanation of an image classifier's decision")
CONCEPTS = {
    "predicted": _concept("XAI-PRED", "Predicted class"),
    "target": _concept("XAI-TARGET", "Explained class"),
    "score": _concept("XAI-SCORE", "Classifier probability of the explained class"),
    "deletion_auc": _concept("XAI-DELAUC", "Deletion AUC"),
    "insertion_auc": _concept("XAI-INSAUC", "Insertion AUC"),
    "area_fraction": _concept("XAI-AREA", "Heatmap area fraction"),
    "iou_p90": _concept("XAI-IOU90", "IoU with annotation at 90th percentile"),
    "ncc": _concept("XAI-NCC", "Normalised cross-correlation with annotation"),
}


@dataclass
class Explained:
    """What one method's DICOM results say: the method, the model, the decision and the figures."""

    method: str
    params: dict[str, Any]
    model_id: str
    model_version: int
    class_names: list[str]
    predicted: int
    target: int
    target_probability: float
    metrics: dict[str, Any]  # the method's metrics block: faithfulness, complexity, localization
    frame: int = 0


@dataclass
class DicomResults:
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class SeriesUids:
    """The job's three new series, shared by its methods' instances."""

    sc: str = field(default_factory=hd.UID)
    pm: str = field(default_factory=hd.UID)
    sr: str = field(default_factory=hd.UID)


def write(source: Dataset, overlay_rgb: np.ndarray, heatmap: np.ndarray, explained: Explained,
          series: SeriesUids, instance_number: int) -> DicomResults:
    """The SC, PM (where the source's geometry allows it) and SR of one method, by file name."""
    results = DicomResults()
    results.files["sc.dcm"] = _bytes(secondary_capture(source, overlay_rgb, explained, series.sc, instance_number))
    pm_or_reason = parametric_map(source, heatmap, explained, series.pm, instance_number)
    if isinstance(pm_or_reason, str):
        results.notes.append(pm_or_reason)
    else:
        results.files["pm.dcm"] = _bytes(pm_or_reason)
    results.files["sr.dcm"] = _bytes(structured_report(source, explained, series.sr, instance_number))
    return results


def caption(explained: Explained) -> str:
    return (f"AI explanation, not for diagnosis: {explained.method}, {explained.model_id} "
            f"v{explained.model_version}, target {explained.class_names[explained.target]}")


def secondary_capture(source: Dataset, overlay_rgb: np.ndarray, explained: Explained, series_uid: str,
                      instance_number: int) -> hd.sc.SCImage:
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=_burn_in(overlay_rgb, caption(explained)),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=_patient_orientation(source) or ("L", "F"),
        transfer_syntax_uid=JPEGLSLossless,
        series_description="AI explanation overlay",
    )
    if _patient_orientation(source) is None:
        # highdicom asks for an orientation in the patient coordinate system; the source states none, so
        # none is claimed: Patient Orientation is type 2C, present and empty when unknown (PS3.3 C.7.6.1).
        image.PatientOrientation = ""
    image.BurnedInAnnotation = "YES"
    image.ImageComments = caption(explained)
    image.DerivationDescription = f"{explained.method} attribution heatmap blended over the source image"
    image.SourceImageSequence = [_reference(source, explained.frame)]
    return image


def _burn_in(overlay_rgb: np.ndarray, text: str) -> np.ndarray:
    """The overlay with ``text`` on a dark band along its top, large enough to read at the image's size."""
    image = Image.fromarray(np.ascontiguousarray(overlay_rgb))
    size = max(10, image.width // 48)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    lines = _wrap(text, font, image.width - 2 * size // 2, draw)
    band = (size + size // 3) * len(lines) + size // 2
    draw.rectangle((0, 0, image.width, band), fill=(0, 0, 0))
    for index, line in enumerate(lines):
        draw.text((size // 2, size // 4 + index * (size + size // 3)), line, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current]


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation, or the one its Image Orientation (Patient) implies; None if neither."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(value):
        return tuple(value)
    cosines = source.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return None
    row, column = np.array(cosines[:3], float), np.array(cosines[3:], float)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = column, row, np.cross(row, column)
    return tuple(v.value for v in get_closest_patient_orientation(affine)[:2])


def parametric_map(source: Dataset, heatmap: np.ndarray, explained: Explained, series_uid: str,
                   instance_number: int) -> hd.pm.ParametricMap | str:
    """The heatmap on the source's pixel grid, or the reason the source allows no Parametric Map."""
    missing = [k for k in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                           "SliceThickness")
               if not source.get(k)]
    if missing or int(source.get("NumberOfFrames", 1) or 1) > 1:
        why = f"it has no {', '.join(missing)}" if missing else "it is a multi-frame instance"
        return (f"no Parametric Map for {explained.method}: it is written on the source's frame of reference and "
                f"plane, and the source has none ({why}; projection radiographs such as CR and DX usually do not); "
                "the heatmap is in the Secondary Capture and in heatmap.npy")
    values = resize(heatmap.astype(np.float32), int(source.Rows), int(source.Columns))
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    levels = np.rint((values - low) / span * PM_LEVELS).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ATTRIBUTION", lut_explanation=f"{explained.method} attribution (unitless)", unit=NO_UNITS,
        value_range=(0, PM_LEVELS), slope=span / PM_LEVELS, intercept=low,
    )
    return hd.pm.ParametricMap(
        source_images=[source], pixel_array=levels, series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["pm"], sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=f"{explained.model_id} v{explained.model_version}",
        software_versions=SOFTWARE_VERSION, device_serial_number="0",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=PM_LEVELS / 2, window_width=PM_LEVELS + 1)],
        palette_color_lut_transformation=_turbo_palette(),
        transfer_syntax_uid=JPEGLSLossless, content_label="ATTRIBUTION",
        content_description=caption(explained)[:64], series_description="AI explanation heatmap",
    )


def _turbo_palette() -> hd.PaletteColorLUTTransformation:
    """The overlay's turbo colour map over the 4096 levels, so a viewer shows the map as the PNG does."""
    # 16-bit entries: a table of 8-bit ones may hold at most 256 (PS3.3 C.7.6.3.1.5).
    colours = render.TURBO_LUT[np.rint(np.linspace(0, 255, PM_LEVELS + 1)).astype(np.int64)].astype(np.uint16) * 257
    return hd.PaletteColorLUTTransformation.from_combined_lut(colours, first_mapped_value=0,
                                                             palette_color_lut_uid=hd.UID())


def structured_report(source: Dataset, explained: Explained, series_uid: str,
                      instance_number: int) -> hd.sr.Comprehensive3DSR:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MANUFACTURER, model_name=f"{explained.model_id} v{explained.model_version}"),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{explained.method} explanation"),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=_measurements(explained),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(CONCEPTS["predicted"], _class_concept(explained, explained.predicted)),
            hd.sr.QualitativeEvaluation(CONCEPTS["target"], _class_concept(explained, explained.target)),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE, imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid, series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
        series_description="AI explanation report", is_complete=True,
    )


def _class_concept(explained: Explained, index: int) -> hd.sr.CodedConcept:
    return _concept(f"XAI-CLASS-{index}", explained.class_names[index][:64])


def _measurements(explained: Explained) -> list[hd.sr.Measurement]:
    figures = {"score": explained.target_probability}
    faithfulness = explained.metrics.get("faithfulness", {})
    figures |= {k: faithfulness[k] for k in ("deletion_auc", "insertion_auc") if k in faithfulness}
    if "area_fraction" in explained.metrics.get("complexity", {}):
        figures["area_fraction"] = explained.metrics["complexity"]["area_fraction"]
    localization = explained.metrics.get("localization", {})
    figures |= {k: localization[k] for k in ("iou_p90", "ncc") if k in localization}
    algorithm = hd.sr.AlgorithmIdentification(
        name=explained.method, version=f"{explained.model_id} v{explained.model_version}",
        parameters=[f"{key}={json.dumps(value)}"[:64] for key, value in sorted(explained.params.items())] or None,
    )
    return [hd.sr.Measurement(name=CONCEPTS[name], value=float(value), unit=NO_UNITS, algorithm_id=algorithm)
            for name, value in figures.items()]


def _reference(source: Dataset, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = frame + 1
    return item


def _bytes(dataset: Dataset) -> bytes:
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
