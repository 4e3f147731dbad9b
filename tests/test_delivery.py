"""DICOM results sent by STOW-RS (workers/delivery.py) to a real Orthanc, and the Orthanc fixture's own client.

Orthanc stores what it is sent and refuses a wrong password; it cannot be made to refuse one
instance of a STOW or to answer 5xx, so those answers come from a small HTTP server in this module
that speaks STOW-RS (``StowServer``), as does the receiving end of Orthanc's STOW-RS client.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import SHARED_DATA
from tests.orthanc import Orthanc, free_port, multipart_parts, orthanc_fixture  # noqa: F401 - fixture "orthanc"
from workers.delivery import BearerAuth, CredentialsError, deliver, load_auth
from xai.settings import DicomwebDestination

XRAYS = SHARED_DATA / "nih_cxr14_bbox" / "images"
PATIENT_MARKER = "MARKER^Delivery"  # must show up nowhere but in the DICOM files
FAST = {"attempts": 3, "backoff_s": 0.05, "timeout_s": 5.0}


def secondary_captures(n: int) -> list[bytes]:
    """``n`` small Secondary Captures of a real chest X-ray, one series of one study of a fake patient."""
    xray = sorted(XRAYS.glob("*.png"))[:1]
    if not xray:
        pytest.skip(f"no chest X-ray PNG in {XRAYS}")
    pixels = np.asarray(Image.open(xray[0]).convert("L").resize((128, 128)))
    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(1, n + 1):
        image = hd.sc.SCImage(
            pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8,
            coordinate_system="PATIENT", study_instance_uid=study, series_instance_uid=series,
            sop_instance_uid=generate_uid(), series_number=900, instance_number=number, manufacturer="xai tests",
            patient_id="MARKER-0001", patient_name=PATIENT_MARKER, patient_sex="O", patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian)
        buffer = BytesIO()
        image.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def sop_uids(files: list[bytes]) -> list[str]:
    return [str(pydicom.dcmread(BytesIO(f)).SOPInstanceUID) for f in files]


def credentials(folder: Path, fields: object, mode: int = 0o600) -> Path:
    path = folder / "pacs-credentials.json"
    path.write_text(fields if isinstance(fields, str) else json.dumps(fields))
    path.chmod(mode)
    return path


def stow_json(stored: list[str], failed: dict[str, int] | None = None) -> dict:
    """A STOW-RS response in DICOM JSON: Referenced SOP Sequence, Failed SOP Sequence with Failure Reasons."""
    sc = "1.2.840.10008.5.1.4.1.1.7"
    answer: dict = {"00081199": {"vr": "SQ", "Value": [
        {"00081150": {"vr": "UI", "Value": [sc]}, "00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [sc]}, "00081155": {"vr": "UI", "Value": [uid]},
             "00081197": {"vr": "US", "Value": [code]}} for uid, code in failed.items()]}
    return answer


@dataclass
class StowServer:
    """A plain HTTP server taking STOW-RS at ``<url>/studies``: ``respond(uids)`` gives each answer's status
    and body; ``requests`` keeps what was posted (path, headers, body)."""

    respond: Callable[[list[str]], tuple[int, dict | bytes | None]]
    requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._body()
                content_type = self.headers.get("Content-Type", "")
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                uids = sop_uids(multipart_parts(content_type, body)) if "multipart" in content_type else []
                status, answer = server.respond(uids)
                payload = json.dumps(answer).encode() if isinstance(answer, dict) else answer or b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":  # Orthanc's client chunks
                    return self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/base"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def stow_server() -> Iterator[Callable[..., StowServer]]:
    servers: list[StowServer] = []

    def start(respond: Callable[[list[str]], tuple[int, dict | bytes | None]]) -> StowServer:
        servers.append(StowServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_delivered_instances_are_in_orthanc(orthanc, tmp_path):
    files = secondary_captures(3)
    uids = sop_uids(files)
    destination = DicomwebDestination(url=orthanc.dicomweb_url, credentials_file=credentials(
        tmp_path, {"username": orthanc.username, "password": orthanc.password}))

    delivery = deliver(files, "pacs", destination, **FAST)

    assert (delivery.status, delivery.attempts, delivery.reason) == ("delivered", 1, None)
    assert delivery.stored_sop_instance_uids == uids
    first = pydicom.dcmread(BytesIO(files[0]))
    found = orthanc.qido_instances(first.StudyInstanceUID)
    assert sorted(item["00080018"]["Value"][0] for item in found) == sorted(uids)
    part10 = orthanc.wado_instance(first.StudyInstanceUID, first.SeriesInstanceUID, uids[0])
    stored = pydicom.dcmread(BytesIO(part10))
    assert stored.SOPInstanceUID == uids[0] and str(stored.PatientName) == PATIENT_MARKER
    assert np.array_equal(stored.pixel_array, first.pixel_array)


def test_a_wrong_password_fails_at_once(orthanc, tmp_path):
    destination = DicomwebDestination(url=orthanc.dicomweb_url, credentials_file=credentials(
        tmp_path, {"username": orthanc.username, "password": "not-the-password"}))

    delivery = deliver(secondary_captures(1), "pacs", destination, attempts=5, backoff_s=5.0, timeout_s=5.0)

    assert (delivery.status, delivery.attempts) == ("failed", 1)  # a 4xx is not retried: this took no 5 s
    assert delivery.reason == "destination 'pacs' answered 401: check the credentials file"


def test_an_unreachable_destination_is_retried_with_backoff():
    port = free_port()  # nothing listens there
    destination = DicomwebDestination(url=f"http://someone:s3cret@127.0.0.1:{port}/dicom-web")

    started = time.monotonic()
    delivery = deliver(secondary_captures(2), "pacs", destination, **FAST)

    assert time.monotonic() - started >= 0.05 + 0.1  # waited backoff_s, then twice that
    assert (delivery.status, delivery.attempts, delivery.stored_sop_instance_uids) == ("failed", 3, [])
    assert delivery.reason == "could not reach destination 'pacs' after 3 tries: connection refused"


def test_a_destination_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections into its backlog, never reads or answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        destination = DicomwebDestination(url=f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web")
        delivery = deliver(secondary_captures(1), "pacs", destination, attempts=2, backoff_s=0.01, timeout_s=0.3)

    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert delivery.reason == "could not reach destination 'pacs' after 2 tries: no answer within 0.3 s"


def test_5xx_is_retried_until_stored(stow_server):
    answers = iter([503, 502])
    server = stow_server(lambda uids: (next(answers, 200), stow_json(uids)))
    files = secondary_captures(2)

    delivery = deliver(files, "pacs", DicomwebDestination(url=server.url), **FAST)

    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert delivery.stored_sop_instance_uids == sop_uids(files)
    assert len(server.requests) == 3 and server.requests[0]["path"] == "/base/studies"


def test_5xx_to_the_last_try_fails(stow_server):
    server = stow_server(lambda uids: (500, None))

    delivery = deliver(secondary_captures(1), "pacs", DicomwebDestination(url=server.url), **FAST)

    assert (delivery.status, delivery.attempts, len(server.requests)) == ("failed", 3, 3)
    assert delivery.reason == "destination 'pacs' answered 500 after 3 tries: try again later"


def test_refused_instances_are_counted_with_their_failure_reasons(stow_server):
    server = stow_server(lambda uids: (409, stow_json(uids[:2], {uids[2]: 0xC000})))
    files = secondary_captures(3)

    delivery = deliver(files, "pacs", DicomwebDestination(url=server.url), **FAST)

    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.stored_sop_instance_uids == sop_uids(files)[:2]
    assert delivery.reason == "destination 'pacs' refused 1 of 3 instances (Failure Reason 0xC000)"


def test_a_partial_202_is_a_failure_and_a_full_one_a_delivery(stow_server):
    files = secondary_captures(2)
    partial = stow_server(lambda uids: (202, stow_json(uids[:1], {uids[1]: 0xA700})))
    full = stow_server(lambda uids: (202, stow_json(uids)))

    refused = deliver(files, "pacs", DicomwebDestination(url=partial.url), **FAST)
    stored = deliver(files, "pacs", DicomwebDestination(url=full.url), **FAST)

    assert refused.reason == "destination 'pacs' refused 1 of 2 instances (Failure Reason 0xA700)"
    assert (stored.status, stored.stored_sop_instance_uids) == ("delivered", sop_uids(files))


def test_an_answer_without_a_stow_response_is_not_a_delivery(stow_server):
    server = stow_server(lambda uids: (200, b""))

    delivery = deliver(secondary_captures(1), "pacs", DicomwebDestination(url=server.url), **FAST)

    assert delivery.status == "failed" and "no Referenced SOP Sequence" in delivery.reason


def test_a_4xx_body_stays_out_of_the_reason(stow_server):
    server = stow_server(lambda uids: (400, f"patient {PATIENT_MARKER} not allowed".encode()))

    delivery = deliver(secondary_captures(1), "pacs", DicomwebDestination(url=server.url), **FAST)

    assert (delivery.attempts, delivery.reason) == (1, "destination 'pacs' answered 400")


def test_a_bearer_token_is_sent(stow_server, tmp_path):
    server = stow_server(lambda uids: (200, stow_json(uids)))
    destination = DicomwebDestination(url=server.url, credentials_file=credentials(tmp_path, {"token": "tok-123"}))

    delivery = deliver(secondary_captures(1), "pacs", destination, **FAST)

    assert delivery.status == "delivered"
    headers = server.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert "Content-Length" in headers  # sent whole, not chunked


def test_credentials_others_may_read_are_refused_before_sending(stow_server, tmp_path):
    server = stow_server(lambda uids: (200, stow_json(uids)))
    path = credentials(tmp_path, {"username": "u", "password": "secret-pw"}, mode=0o644)

    with pytest.raises(CredentialsError, match="0644"):
        load_auth(DicomwebDestination(url=server.url, credentials_file=path))
    delivery = deliver(secondary_captures(1), "pacs", DicomwebDestination(url=server.url, credentials_file=path),
                       **FAST)

    assert (delivery.status, delivery.attempts, server.requests) == ("failed", 0, [])
    assert delivery.reason.startswith("did not send to destination 'pacs': its credentials file may be read by "
                                      "other users (mode 0644)")
    assert "secret-pw" not in delivery.reason


@pytest.mark.parametrize("fields", ["username=u", {"user": "u", "password": "p"}, {"token": ""}, ["token"],
                                    {"token": "t", "username": "u"}])
def test_malformed_credentials_are_refused(fields, tmp_path):
    destination = DicomwebDestination(url="http://127.0.0.1:9/x", credentials_file=credentials(tmp_path, fields))

    delivery = deliver(secondary_captures(1), "pacs", destination, **FAST)

    assert (delivery.status, delivery.attempts) == ("failed", 0)
    assert delivery.reason.startswith("did not send to destination 'pacs': its credentials file ")


def test_load_auth_reads_both_kinds(tmp_path):
    basic = load_auth(DicomwebDestination(url="http://h/x", credentials_file=credentials(
        tmp_path, {"username": "u", "password": "p"})))
    assert (basic.username, basic.password) == ("u", "p")
    bearer = load_auth(DicomwebDestination(url="http://h/x", credentials_file=credentials(
        tmp_path, {"token": "tok-secret"})))
    assert isinstance(bearer, BearerAuth) and "tok-secret" not in repr(bearer)
    assert load_auth(DicomwebDestination(url="http://h/x")) is None


def test_orthanc_stows_to_a_configured_server(orthanc, stow_server):
    failing = {"on": False}
    server = stow_server(lambda uids: (200, stow_json(uids, {uids[0]: 0xC000} if failing["on"] else None)))
    part10 = secondary_captures(1)[0]
    instance = orthanc.upload(part10)
    orthanc.add_dicomweb_server("xai", server.url, {"Authorization": "Bearer key-123"})

    job = orthanc.stow_to_server("xai", [instance])

    assert job["State"] == "Success" and job["Content"]["InstancesCount"] == "1"
    posted = server.requests[0]
    assert posted["path"] == "/base/studies" and posted["headers"]["Authorization"] == "Bearer key-123"
    assert multipart_parts(posted["headers"]["Content-Type"], posted["body"]) == [part10]

    failing["on"] = True  # Orthanc's client counts any Failed SOP Sequence item as the whole job failing
    job = orthanc.stow_to_server("xai", [instance], expect_success=False)
    assert job["State"] == "Failure"
    assert "Failed SOP Sequence" in job["Content"]["FunctionErrorDetails"]


def test_fixture_basics(orthanc):
    assert orthanc.url.startswith("http://127.0.0.1:") and orthanc.dicomweb_url == orthanc.url + "/dicom-web"
    assert httpx.get(orthanc.url + "/system").status_code == 401  # authentication is on
    assert httpx.get(orthanc.url + "/system", auth=orthanc.auth).json()["PluginsEnabled"] is True
    assert orthanc.qido_instances(generate_uid()) == []


def test_without_orthanc_the_fixture_skips(monkeypatch, tmp_path):
    monkeypatch.setattr("tests.orthanc.PLUGIN", tmp_path / "libOrthancDicomWeb.so")
    with pytest.raises(pytest.skip.Exception, match="Orthanc with its DICOMweb plugin is not installed: .*"
                                                    "orthanc-dicomweb"):
        Orthanc.start(tmp_path)
