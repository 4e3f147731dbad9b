"""The service against a real PACS: Orthanc STOWs a chest X-ray to us, we STOW the explanation back.

Orthanc (with its DICOMweb plugin, tests/orthanc.py) sends a real NIH chest X-ray as a DX instance
through its own DICOMweb client (``/dicom-web/servers/xai/stow``) to the gateway's ``/dicomweb/studies``;
an ``XAI_DICOM_ROUTES`` rule sends DX chest instances to nih-cardiomegaly with Grad-CAM and DICOM
outputs for the destination ``pacs``, which is that Orthanc. The test reads the Secondary Capture,
Parametric Map and Structured Report back from Orthanc (QIDO-RS, WADO-RS) and checks study linkage,
references, geometry and the report's figures. Everything here is real: uvicorn, Redis, a worker
process, Orthanc.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEGLSLossless,
    generate_uid,
)

from tests.conftest import SHARED_DATA
from tests.live import KEYS, free_port, running_service
from tests.orthanc import Orthanc, missing
from tests.test_dicom_outputs import (
    DROPPED_MARKERS,
    FILED_MARKERS,
    MARKERS,
    _sr_numbers,
    dx_instance,
    stow_body,
)
from xai.imaging import render

pytestmark = pytest.mark.skipif(bool(missing()), reason="Orthanc with its DICOMweb plugin is not installed: "
                                + "; ".join(missing()) + " (scripts/setup.sh installs them as root)")

MODEL = "nih-cardiomegaly"
IMAGE = SHARED_DATA / "nih_cxr14_bbox" / "images" / "00000211_019.png"  # a held-out cardiomegaly case


def chest_xray(*, compressed: bool = False) -> tuple[bytes, Dataset]:
    """The NIH PNG as a 12-bit DX instance with plane geometry and marker strings in its identifying attributes."""
    pixels = np.asarray(Image.open(IMAGE).convert("L")).astype(np.uint16) * 16
    ds = dx_instance()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PatientSex = "DX", "CHEST", "PA", "M"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20261203", "101500", 1, 1
    for keyword, value in MARKERS.items():
        setattr(ds, keyword, value)
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1.4, 1.4], 1.0  # 256 px over the detector's 358 mm
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *pixels.shape, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    if compressed:
        ds.compress(JPEGLSLossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    orthanc = Orthanc.start(tmp_path_factory.mktemp("orthanc"))
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, pacs):
    """The gateway and a worker, with the Orthanc as destination ``pacs`` and one routing rule."""
    folder = tmp_path_factory.mktemp("pacs-service")
    credentials = folder / "pacs-credentials.json"
    credentials.write_text(json.dumps({"username": pacs.username, "password": pacs.password}))
    credentials.chmod(0o600)
    destinations = {"pacs": {"url": pacs.dicomweb_url, "credentials_file": str(credentials)},
                    "down": {"url": f"http://127.0.0.1:{free_port()}/dicom-web"}}
    routes = [{"modality": "DX", "body_part_examined": "CHEST", "model_id": MODEL, "methods": ["grad_cam"],
               "outputs": ["dicom"], "destination": "pacs", "faithfulness": True}]
    worker_env = {"XAI_DICOMWEB_DESTINATIONS": json.dumps(destinations), "XAI_DICOMWEB_ATTEMPTS": "2",
                  "XAI_DICOMWEB_BACKOFF_S": "0.1", "XAI_DICOMWEB_TIMEOUT_S": "10"}
    with running_service(folder, (MODEL,), worker_env, dicomweb_destinations=destinations, dicom_routes=routes,
                         dicomweb_attempts=2, dicomweb_backoff_s=0.1, dicomweb_timeout_s=10) as service:
        yield service


def _ended(client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("finished", "failed", "canceled") and job.get("delivery", {}).get("status") != "sending":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def _results_in(pacs: Orthanc, source: Dataset) -> dict[str, Dataset]:
    """The instances of the source's study that are not the source, read back by WADO-RS, by SOP class name."""
    found = {}
    for item in pacs.qido_instances(source.StudyInstanceUID):
        instance = Dataset.from_json(item)
        if instance.SOPInstanceUID != source.SOPInstanceUID:
            blob = pacs.wado_instance(source.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID)
            result = pydicom.dcmread(io.BytesIO(blob))
            found[result.SOPClassUID.name] = result
    return found


def test_orthanc_sends_a_chest_xray_and_gets_the_explanation_filed_in_its_study(service, pacs):
    data, source = chest_xray(compressed=True)
    pacs.add_dicomweb_server("xai", service.url + "/dicomweb", {"Authorization": f"Bearer {KEYS['alice']}"})
    pacs.stow_to_server("xai", [pacs.upload(data)])
    with service.client() as client:
        [listed] = client.get("/v1/jobs").json()["jobs"]
        job = _ended(client, listed["job_id"])
    assert job["status"] == "finished", job
    delivery = job["delivery"]
    assert delivery["status"] == "delivered" and delivery["destination"] == "pacs", delivery
    results = _results_in(pacs, source)
    assert set(results) == {"Secondary Capture Image Storage", "Parametric Map Storage",
                            "Comprehensive 3D SR Storage"}
    assert sorted(delivery["stored_sop_instance_uids"]) == sorted(r.SOPInstanceUID for r in results.values())
    for result in results.values():
        assert result.StudyInstanceUID == source.StudyInstanceUID
        assert result.SeriesInstanceUID != source.SeriesInstanceUID
        assert all(str(result.get(k, "")) == v for k, v in FILED_MARKERS.items())
        assert not any(str(result.get(k, "")) for k in DROPPED_MARKERS)
    sc, pm, sr = (results[name] for name in ("Secondary Capture Image Storage", "Parametric Map Storage",
                                             "Comprehensive 3D SR Storage"))
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.ImageComments.startswith("AI explanation, not for diagnosis: grad_cam")
    assert (pm.Rows, pm.Columns, pm.FrameOfReferenceUID) == (source.Rows, source.Columns, source.FrameOfReferenceUID)
    plane = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in plane.PixelMeasuresSequence[0].PixelSpacing] == [1.4, 1.4]
    assert [float(v) for v in plane.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    heatmap = hd.pm.ParametricMap.from_dataset(pm)
    assert heatmap.pixel_array.shape == (source.Rows, source.Columns)
    metrics = job["result"]["metrics"]
    numbers = _sr_numbers(sr)
    assert numbers["Deletion AUC"] == pytest.approx(metrics["faithfulness"]["deletion_auc"], abs=1e-6)
    assert numbers["Insertion AUC"] == pytest.approx(metrics["faithfulness"]["insertion_auc"], abs=1e-6)
    target = metrics["target"]["class_name"]
    assert numbers["Classifier probability of the explained class"] == pytest.approx(
        metrics["prediction"]["probabilities"][target], abs=1e-6)
    artifacts = Path(__file__).parent / "artifacts" / "pacs"
    artifacts.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sc.pixel_array).save(artifacts / "secondary_capture.png")
    levels = (pm.pixel_array >> 4).astype(np.uint8)  # 12-bit levels, shown through the map's own colours
    Image.fromarray(render.colourise(levels)).save(artifacts / "parametric_map.png")


def test_a_failed_delivery_keeps_the_results_and_a_resend_files_them(service, pacs):
    data, source = chest_xray()
    with service.client() as client:
        response = client.post("/v1/explanations", content=data, headers={"Content-Type": "application/dicom"},
                               params={"model_id": MODEL, "method": "saliency", "outputs": "png,dicom",
                                       "destination": "down"})
        assert response.status_code == 202, response.text
        job = _ended(client, response.json()["job_id"])
        assert job["status"] == "finished"
        failed = job["delivery"]
        assert failed["status"] == "failed" and failed["attempts"] == 2 and "down" in failed["reason"], failed
        assert client.get(f"/v1/jobs/{job['job_id']}/dicom/1").status_code == 200  # nothing lost
        assert not _results_in(pacs, source)
        resend = client.post(f"/v1/jobs/{job['job_id']}/deliveries", json={"destination": "pacs"})
        assert resend.status_code == 202, resend.text
        deadline = time.monotonic() + 60
        while (delivery := client.get(f"/v1/jobs/{job['job_id']}").json()["delivery"])["destination"] != "pacs" \
                or delivery["status"] == "sending":
            assert time.monotonic() < deadline, delivery
            time.sleep(0.2)
        assert delivery["status"] == "delivered", delivery
        unknown = client.post(f"/v1/jobs/{job['job_id']}/deliveries", json={"destination": "elsewhere"})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_destination"
    assert len(_results_in(pacs, source)) == 3


def test_a_broken_instance_in_a_stow_is_answered_alone_over_http(service):
    good, source = chest_xray()
    broken = good[: len(good) - 5000]
    body, content_type = stow_body([broken, good])
    with service.client() as client:
        response = client.post("/dicomweb/models/nih-cardiomegaly/methods/grad_cam/studies", content=body,
                               headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        assert response.status_code == 202, response.text
        answer = Dataset.from_json(response.json())
        [failed], [stored] = answer.FailedSOPSequence, answer.ReferencedSOPSequence
        assert failed[0x0009, 0x1002].value == "dicom_truncated_pixel_data" and failed.FailureReason == 0xC000
        assert stored.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert _ended(client, stored[0x0009, 0x1001].value)["status"] == "finished"
        wrong_key = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type,
                                                                             "Authorization": "Bearer nope"})
        assert wrong_key.status_code == 401
