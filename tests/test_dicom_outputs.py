"""DICOM results (Secondary Capture, Parametric Map, Structured Report), the identifier decision, and STOW-RS in.

Through the real gateway (TestClient), a real Redis and an in-process burst worker. The results are read
back with pydicom and highdicom and checked against the source (study linkage, new UIDs, references,
geometry) and against the job's own metrics and heatmap.npy.
"""

from __future__ import annotations

import io
import json
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)
from redis import Redis

from service.stow import CANNOT_UNDERSTAND
from tests.test_api import MODEL, _every_value, client, error_code, mnist_digit, png, store, submit, work  # noqa: F401
from xai.jobs import source_key
from xai.settings import Settings

# One marker per identifying attribute of the source: each may appear only where the issue allows it.
FILED_MARKERS = {  # the DICOM results carry these, to be filed in the source's study
    "PatientName": "MARKNAME^PATIENT", "PatientID": "MARKPID4711", "PatientBirthDate": "19010203",
    "AccessionNumber": "MARKACC0815", "ReferringPhysicianName": "MARKREF^DOCTOR", "StudyID": "MARKSTID",
}
DROPPED_MARKERS = {  # nothing keeps these
    "InstitutionName": "MARKINSTITUTION", "StudyDescription": "MARKSTUDYDESC", "OperatorsName": "MARKOPERATOR",
    "PatientAddress": "MARKADDRESS", "OtherPatientIDs": "MARKOTHERID", "InstitutionalDepartmentName": "MARKDEPT",
}
MARKERS = FILED_MARKERS | DROPPED_MARKERS


def dx_instance() -> Dataset:
    """An empty DX For Presentation instance: file meta, new SOP, study and series UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def radiograph(*, geometry: bool = True, digit: int = 3, syntax=ExplicitVRLittleEndian, photometric="MONOCHROME2",
               modality: str = "DX", markers: bool = True) -> tuple[bytes, Dataset]:
    """A real MNIST digit as a DX instance with marker strings in every identifying attribute; with
    ``geometry`` it has the frame of reference and plane a Parametric Map needs."""
    pixels = mnist_digit(digit).astype(np.uint16) * 16
    ds = dx_instance()
    ds.Modality, ds.BodyPartExamined, ds.PatientSex, ds.StudyDate, ds.StudyTime = modality, "CHEST", "F", "", ""
    for keyword, value in (MARKERS if markers else {}).items():
        setattr(ds, keyword, value)
    if geometry:
        ds.FrameOfReferenceUID = generate_uid()
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 28, 28, 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if photometric == "MONOCHROME1":
        pixels = 4095 - pixels
    ds.PixelData = pixels.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def _finished(client, job_id: str) -> dict:
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    return job


def _multipart_parts(response) -> list[bytes]:
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
    boundary = content_type.split("boundary=")[1].encode()
    pieces = response.content.split(b"--" + boundary)[1:-1]
    return [piece.split(b"\r\n\r\n", 1)[1][:-2] for piece in pieces]


@pytest.mark.parametrize("syntax, photometric", [(ExplicitVRLittleEndian, "MONOCHROME2"),
                                                 (JPEGLSLossless, "MONOCHROME1")])
def test_dicom_results_are_filed_in_the_source_study_and_say_what_the_job_says(client, settings, syntax, photometric):
    data, source = radiograph(syntax=syntax, photometric=photometric)
    job_id = submit(client, data, method="saliency", outputs="png,dicom", faithfulness="true").json()["job_id"]
    work(settings)
    job = _finished(client, job_id)
    assert {"sc.dcm", "pm.dcm", "sr.dcm", "overlay.png", "heatmap.npy"} <= set(job["result"]["files"])
    parts = _multipart_parts(client.get(f"/v1/jobs/{job_id}/dicom"))
    one_by_one = [client.get(f"/v1/jobs/{job_id}/dicom/{n}") for n in (1, 2, 3)]
    assert [r.headers["content-type"] for r in one_by_one] == ["application/dicom"] * 3
    assert parts == [r.content for r in one_by_one]
    assert error_code(client.get(f"/v1/jobs/{job_id}/dicom/4")) == "unknown_file"
    by_class = {pydicom.dcmread(io.BytesIO(p)).SOPClassUID.name: pydicom.dcmread(io.BytesIO(p)) for p in parts}
    sc, pm, sr = by_class["Secondary Capture Image Storage"], by_class["Parametric Map Storage"], \
        by_class["Comprehensive 3D SR Storage"]
    series = {sc.SeriesInstanceUID, pm.SeriesInstanceUID, sr.SeriesInstanceUID}
    assert len(series) == 3 and source.SeriesInstanceUID not in series
    assert job["result"]["metrics"]["dicom"]["series"]["parametric_map"] == pm.SeriesInstanceUID
    for result in (sc, pm, sr):
        assert result.StudyInstanceUID == source.StudyInstanceUID
        assert result.SOPInstanceUID != source.SOPInstanceUID
        for keyword, value in FILED_MARKERS.items():
            assert str(result.get(keyword, "")) == value, keyword
        assert not any(str(result.get(k, "")) for k in DROPPED_MARKERS)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageComments == f"AI explanation, not for diagnosis: saliency, {MODEL} v1, target " \
        f"{job['result']['metrics']['target']['class_name']}"
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (28, 28, 3)
    # The Parametric Map: on the source's pixel grid and frame of reference, its real-world values the heatmap's.
    assert (pm.Rows, pm.Columns, pm.FrameOfReferenceUID) == (28, 28, source.FrameOfReferenceUID)
    assert pm.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0] \
        .ReferencedSOPInstanceUID == source.SOPInstanceUID
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    real = pm.pixel_array * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    heatmap = np.load(io.BytesIO(client.get(job["result"]["files"]["heatmap.npy"]).content))
    # Within one 12-bit level, plus the float16 rounding of the stored heatmap heatmap.npy is made from.
    assert np.abs(real - heatmap).max() <= float(mapping.RealWorldValueSlope) + 1e-3 * np.abs(heatmap).max()
    assert np.corrcoef(real.ravel(), heatmap.ravel())[0, 1] > 0.999
    # The report: the figures of the job's metrics, about the source image.
    metrics = job["result"]["metrics"]
    assert hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    values = _sr_numbers(sr)
    assert values["Deletion AUC"] == pytest.approx(metrics["faithfulness"]["deletion_auc"], abs=1e-6)
    assert values["Insertion AUC"] == pytest.approx(metrics["faithfulness"]["insertion_auc"], abs=1e-6)
    assert values["Heatmap area fraction"] == pytest.approx(metrics["complexity"]["area_fraction"], abs=1e-6)
    target = metrics["target"]["class_name"]
    assert values["Classifier probability of the explained class"] == pytest.approx(
        metrics["prediction"]["probabilities"][target], abs=1e-6)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def _sr_numbers(sr: Dataset) -> dict[str, float]:
    """Every NUM item of an SR by its concept name's meaning."""
    found = {}

    def walk(items):
        for item in items:
            if item.ValueType == "NUM":
                found[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def test_a_source_without_geometry_gets_no_parametric_map_and_the_job_says_why(client, settings):
    data, _ = radiograph(geometry=False)
    job = _finished(client, _submit_and_work(client, settings, data, outputs="dicom"))
    files = job["result"]["files"]
    assert {"sc.dcm", "sr.dcm"} <= set(files) and "pm.dcm" not in files
    assert "overlay.png" not in files  # outputs=dicom alone: no PNGs
    [note] = job["result"]["metrics"]["dicom"]["notes"]
    assert "no Parametric Map" in note and "FrameOfReferenceUID" in note and "heatmap.npy" in note


def _submit_and_work(client, settings, data, **fields) -> str:
    response = submit(client, data, method="saliency", **fields)
    assert response.status_code == 202, response.text
    work(settings)
    return response.json()["job_id"]


def test_identifiers_reach_only_the_dicom_results(client, settings, caplog):
    """Marker strings in every identifying attribute: after the job none is in Redis outside the DICOM result
    files, nor in the job's JSON, its other files, the logs or /metrics; the source's attributes are gone."""
    caplog.set_level(logging.DEBUG)
    data, _ = radiograph()
    job_id = submit(client, data, method="saliency", outputs="png,dicom").json()["job_id"]
    redis = Redis.from_url(settings.redis_url)
    assert redis.exists(source_key(job_id))  # kept with the input while the job waits
    work(settings)
    job = _finished(client, job_id)
    assert not redis.exists(source_key(job_id))
    dicom_keys = {f"xai:result:{job_id}:{name}".encode() for name in ("sc.dcm", "pm.dcm", "sr.dcm")}
    elsewhere = b"".join(value for key in redis.keys("*") if key not in dicom_keys
                         for value in _every_value_of(redis, key))
    texts = [json.dumps(job), caplog.text, client.get("/metrics").text, client.get("/v1/jobs").text]
    files = [client.get(url).content for name, url in job["result"]["files"].items() if not name.endswith(".dcm")]
    for marker in MARKERS.values():
        assert marker.encode() not in elsewhere, marker
        assert not any(marker in text for text in texts), marker
        assert not any(marker.encode() in blob for blob in files), marker
    dicom = b"".join(redis.get(key) for key in dicom_keys)
    assert all(m.encode() in dicom for m in FILED_MARKERS.values())
    assert not any(m.encode() in dicom for m in DROPPED_MARKERS.values())


def _every_value_of(redis: Redis, key: bytes):
    yield from _every_value(_OneKey(redis, key))


class _OneKey:
    """The slice of a Redis client ``_every_value`` uses, seeing one key."""

    def __init__(self, redis: Redis, key: bytes):
        self.redis, self.key = redis, key

    def keys(self, pattern):
        return [self.key]

    def __getattr__(self, name):
        return getattr(self.redis, name)


def test_png_jobs_keep_no_identifier_even_while_queued(client, settings):
    data, _ = radiograph()
    job_id = submit(client, data, method="saliency").json()["job_id"]
    redis = Redis.from_url(settings.redis_url)
    assert not redis.exists(source_key(job_id))
    dump = b"".join(_every_value(redis))
    assert not any(m.encode() in dump for m in MARKERS.values())


@pytest.mark.parametrize("upload, fields, code", [
    ("png", {"outputs": "dicom"}, "dicom_output_needs_dicom_input"),
    ("dicom", {"outputs": "dicom,pdf"}, "invalid_outputs"),
    ("dicom", {"outputs": "png,png"}, "invalid_outputs"),
    ("dicom", {"outputs": "dicom", "destination": "nowhere"}, "unknown_destination"),
    ("dicom", {"destination": "nowhere"}, "unknown_destination"),
])
def test_bad_dicom_output_requests_get_a_stable_code(client, upload, fields, code):
    data = png(mnist_digit(3)) if upload == "png" else radiograph()[0]
    response = submit(client, data, method="saliency", **fields)
    assert response.status_code == 422 and error_code(response) == code, response.text


def test_an_instance_without_uids_cannot_ask_for_dicom_results(client):
    _, ds = radiograph()
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert error_code(submit(client, buffer.getvalue(), outputs="dicom")) == "dicom_output_needs_uids"


def test_a_raw_dicom_body_is_one_job(client, settings):
    data, source = radiograph()
    response = client.post("/v1/explanations", content=data, headers={"Content-Type": "application/dicom"},
                           params={"model_id": MODEL, "method": "saliency", "outputs": "dicom"})
    assert response.status_code == 202, response.text
    work(settings)
    job = _finished(client, response.json()["job_id"])
    sc = pydicom.dcmread(io.BytesIO(client.get(f"/v1/jobs/{job['job_id']}/dicom/2").content))
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    missing = client.post("/v1/explanations", content=data, headers={"Content-Type": "application/dicom"},
                          params={"method": "saliency"})
    assert missing.status_code == 422 and error_code(missing) == "invalid_request"


def stow_body(instances: list[bytes]) -> tuple[bytes, str]:
    boundary = "stowboundary42"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in instances) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow(client, path: str, instances: list[bytes], **params):
    body, content_type = stow_body(instances)
    return client.post(path, content=body, headers={"Content-Type": content_type}, params=params)


def test_stow_to_a_model_and_method_answers_each_instance(client, settings):
    (good_a, a), (good_b, b) = radiograph(), radiograph(digit=8)
    broken = good_a[: len(good_a) // 2]  # the second half of its pixel data is missing
    response = _stow(client, f"/dicomweb/models/{MODEL}/methods/saliency/studies", [good_a, broken, good_b])
    assert response.status_code == 202 and response.headers["content-type"] == "application/dicom+json"
    answer = Dataset.from_json(response.json())
    stored = {item.ReferencedSOPInstanceUID: item for item in answer.ReferencedSOPSequence}
    assert set(stored) == {a.SOPInstanceUID, b.SOPInstanceUID}
    [failed] = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == a.SOPInstanceUID and failed.FailureReason == CANNOT_UNDERSTAND
    assert failed[0x0009, 0x1002].value == "dicom_truncated_pixel_data"
    work(settings)
    for item in stored.values():
        job_id = item[0x0009, 0x1001].value
        assert item.RetrieveURL.endswith(f"/v1/jobs/{job_id}")
        assert "sr.dcm" in _finished(client, job_id)["result"]["files"]  # outputs default to dicom here
    again = _stow(client, f"/dicomweb/models/{MODEL}/methods/saliency/studies", [good_a])  # a PACS retrying
    assert Dataset.from_json(again.json()).ReferencedSOPSequence[0][0x0009, 0x1001].value == \
        stored[a.SOPInstanceUID][0x0009, 0x1001].value


@pytest.fixture
def routed_client(settings, store):
    from fastapi.testclient import TestClient

    from service.main import create_app

    routes = [{"modality": "CR", "model_id": MODEL, "methods": ["grad_cam"], "outputs": ["dicom", "png"]},
              {"modality": "DX", "body_part_examined": "CHEST", "model_id": MODEL, "methods": ["saliency"]}]
    routed = Settings(**settings.model_dump(exclude={"dicom_routes"}), dicom_routes=routes)
    with TestClient(create_app(routed)) as client:
        yield client, routed


def test_stow_to_studies_routes_each_instance_by_the_first_matching_rule(routed_client):
    client, settings = routed_client
    (dx, _), (cr, _), (mr, _) = radiograph(), radiograph(modality="CR"), radiograph(modality="MR")
    response = _stow(client, "/dicomweb/studies", [dx, cr, mr])
    assert response.status_code == 202
    answer = Dataset.from_json(response.json())
    assert [f[0x0009, 0x1002].value for f in answer.FailedSOPSequence] == ["no_dicom_route"]
    work(settings)
    jobs = [_finished(client, item[0x0009, 0x1001].value) for item in answer.ReferencedSOPSequence]
    assert [job["request"]["methods"] for job in jobs] == [["saliency"], ["grad_cam"]]
    assert "overlay.png" not in jobs[0]["result"]["files"] and "overlay.png" in jobs[1]["result"]["files"]


def test_stow_of_nothing_usable_is_a_conflict_and_of_no_multipart_a_415(client):
    response = _stow(client, f"/dicomweb/models/{MODEL}/methods/saliency/studies", [b"not dicom at all"])
    assert response.status_code == 409
    assert Dataset.from_json(response.json()).FailedSOPSequence[0].FailureReason == CANNOT_UNDERSTAND
    plain = client.post("/dicomweb/studies", content=radiograph()[0], headers={"Content-Type": "application/dicom"})
    assert plain.status_code == 415 and error_code(plain) == "invalid_stow_request"


def test_a_comparison_writes_each_methods_instances_into_the_same_three_series(client, settings):
    data, _ = radiograph()
    job = _finished(client, _comparison(client, settings, data))
    names = [n for n in job["result"]["files"] if n.endswith(".dcm")]
    assert names == [f"{m}/{kind}.dcm" for m in ("grad_cam", "saliency") for kind in ("pm", "sc", "sr")]
    parts = [pydicom.dcmread(io.BytesIO(p)) for p in _multipart_parts(client.get(f"/v1/jobs/{job['job_id']}/dicom"))]
    assert len({p.SeriesInstanceUID for p in parts}) == 3 and len({p.SOPInstanceUID for p in parts}) == 6
    captions = sorted(p.ImageComments for p in parts if p.Modality != "SR" and "ImageComments" in p)
    assert [c.split(": ")[1].split(",")[0] for c in captions] == ["grad_cam", "saliency"]


def _comparison(client, settings, data) -> str:
    response = submit(client, data, method="saliency,grad_cam", outputs="dicom")
    assert response.status_code == 202, response.text
    work(settings)
    return response.json()["job_id"]
