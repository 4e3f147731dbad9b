"""A real PACS for tests: Orthanc with its DICOMweb plugin on loopback ports, its own config and storage.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide it (``scripts/setup.sh`` installs them
when it runs as root); where either is missing the tests that ask for it skip and say why. Nothing
uses the system's orthanc service: each module that asks for the ``orthanc`` fixture starts its own
server, with HTTP authentication on and a user the fixture makes up, and stops it afterwards.

    from tests.orthanc import orthanc_fixture  # noqa: F401 - the fixture "orthanc"

    def test_something(orthanc):
        orthanc_id = orthanc.upload(part10_bytes)
        orthanc.add_dicomweb_server("xai", "http://127.0.0.1:8000/dicomweb", {"Authorization": "Bearer key"})
        job = orthanc.stow_to_server("xai", [orthanc_id])
        assert job["State"] == "Success", job["Content"]
        found = orthanc.qido_instances(study_uid)

Orthanc's STOW-RS client (``POST /dicom-web/servers/{name}/stow``) runs as an Orthanc job: synchronous
by default, but then a failure answers only "Error encountered within the plugin engine", so
``stow_to_server`` submits it asynchronously and waits for the job, whose ``Content`` says what went
wrong (``FunctionErrorDetails``). That client posts with chunked transfer encoding and
``Accept: application/dicom+json``, and it counts a STOW as failed unless the answer is a 2xx whose
Referenced SOP Sequence holds one item per instance sent and whose Failed SOP Sequence is empty.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30
JOB_TIMEOUT_S = 60
LOG_TAIL_LINES = 80


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_binary() -> Path | None:
    """Debian installs it in /usr/sbin, which an unprivileged user's PATH often lacks."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def missing() -> list[str]:
    """What of Orthanc and its DICOMweb plugin this machine lacks (empty when the fixture can run)."""
    gaps = [] if orthanc_binary() else ["the Orthanc binary (Debian package orthanc)"]
    if not PLUGIN.is_file():
        gaps.append(f"{PLUGIN} (Debian package orthanc-dicomweb)")
    return gaps


def skip_unless_installed() -> None:
    if gaps := missing():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: " + "; ".join(gaps) +
                    " missing (scripts/setup.sh installs them as root)")


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of the parts of a multipart/related message (a WADO-RS answer, a STOW-RS request)."""
    params = dict(p.strip().partition("=")[::2] for p in content_type.split(";")[1:])
    boundary = params.get("boundary", "").strip('"')
    assert content_type.startswith("multipart/related") and boundary, f"not multipart: {content_type}"
    # After the first delimiter each chunk is CRLF, headers, CRLF CRLF, body, CRLF; the last one starts "--".
    chunks = body.split(b"--" + boundary.encode())[1:]
    return [chunk.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")
            for chunk in chunks if not chunk.startswith(b"--")]


def one_part(content_type: str, body: bytes) -> bytes:
    """The only part of a multipart/related answer (WADO-RS of one instance)."""
    parts = multipart_parts(content_type, body)
    assert len(parts) == 1, f"expected one part, got {len(parts)}"
    return parts[0]


@dataclass
class Orthanc:
    """A running Orthanc; ``start`` makes one in ``folder``, ``stop`` ends it."""

    folder: Path
    http_port: int
    dicom_port: int
    username: str
    password: str
    process: subprocess.Popen
    log_path: Path
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.url, auth=self.auth, timeout=JOB_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + "/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password

    @classmethod
    def start(cls, folder: Path, *, servers: dict[str, dict] | None = None, attempts: int = 3) -> Orthanc:
        """Start Orthanc in ``folder`` (config, storage, log); skips the test where it is not installed.
        ``servers`` goes to ``DicomWeb.Servers`` as is. A few tries, because a free port may be taken
        between choosing it and Orthanc binding it."""
        skip_unless_installed()
        for attempt in range(attempts):
            orthanc = cls._launch(folder / f"run{attempt}", servers or {})
            if orthanc._wait_ready():
                return orthanc
            log = orthanc.log_tail()
            orthanc.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {START_TIMEOUT_S} s; its log:\n{log}")

    @classmethod
    def _launch(cls, folder: Path, servers: dict[str, dict]) -> Orthanc:
        storage = folder / "storage"
        storage.mkdir(parents=True)
        http_port, dicom_port = free_port(), free_port()
        username, password = "xai-" + secrets.token_hex(4), secrets.token_urlsafe(16)
        config = {
            "Name": "xai-tests", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "XAITESTS",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {username: password},
            "Plugins": [str(PLUGIN)], "OrthancExplorerEnabled": False, "HttpCompressionEnabled": False,
            "HttpThreadsCount": 4, "ConcurrentJobs": 2, "SaveJobs": False, "HttpTimeout": 30,
            "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Servers": servers},
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = folder / "orthanc.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([str(orthanc_binary()), str(config_path)], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder)
        return cls(folder, http_port, dicom_port, username, password, process, log_path)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if self._http.get("/system", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(no log: {error})"

    # What the tests do with it.

    def upload(self, dicom: bytes) -> str:
        """Store a Part 10 file (POST /instances); its Orthanc instance id."""
        answer = self._http.post("/instances", content=dicom, headers={"Content-Type": "application/dicom"})
        answer.raise_for_status()
        return answer.json()["ID"]

    def add_dicomweb_server(self, name: str, url: str, headers: dict[str, str] | None = None, *,
                            username: str | None = None, password: str | None = None) -> None:
        """Configure (or replace) a remote DICOMweb server at run time; ``headers`` go with every request to
        it, e.g. ``{"Authorization": "Bearer <key>"}``. Orthanc posts STOW-RS to ``<url>/studies``."""
        server: dict = {"Url": url, "HttpHeaders": headers or {}}
        if username is not None:
            server |= {"Username": username, "Password": password}
        self._http.put(f"/dicom-web/servers/{name}", json=server).raise_for_status()

    def stow_to_server(self, name: str, instance_ids: list[str], *, expect_success: bool = True) -> dict:
        """Have Orthanc STOW these instances (Orthanc ids; series, study or patient ids also work) to the server
        ``name`` and wait for its job. The finished job's JSON: ``State`` ("Success" or "Failure") and
        ``Content`` (``InstancesCount``, and on failure ``FunctionErrorDescription``/``FunctionErrorDetails``).
        Raises AssertionError with those details and the log when the job failed, unless ``expect_success`` is
        false."""
        answer = self._http.post(f"/dicom-web/servers/{name}/stow",
                                 json={"Resources": instance_ids, "Synchronous": False})
        answer.raise_for_status()
        job = self.wait_for_job(answer.json()["ID"])
        if expect_success and job["State"] != "Success":
            raise AssertionError(f"Orthanc's STOW to {name!r} failed: {job.get('Content')}\n{self.log_tail(20)}")
        return job

    def wait_for_job(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
        """The job's JSON once it has ended (Orthanc steps a STOW job every 0.5 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self._http.get(f"/jobs/{job_id}").raise_for_status().json()
            if job["State"] in ("Success", "Failure"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"Orthanc job {job_id} still {job['State']} after {timeout_s} s")
            time.sleep(0.1)

    def qido_instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS: the DICOM JSON of each instance of the study Orthanc holds (empty if none)."""
        answer = self._http.get(f"/dicom-web/studies/{study_uid}/instances",
                                headers={"Accept": "application/dicom+json"})
        answer.raise_for_status()
        return answer.json() if answer.content else []

    def wado_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """WADO-RS: the Part 10 file of one instance, as Orthanc stored it."""
        answer = self._http.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
                                headers={"Accept": 'multipart/related; type="application/dicom"'})
        answer.raise_for_status()
        return one_part(answer.headers["Content-Type"], answer.content)


@pytest.fixture(scope="module", name="orthanc")
def orthanc_fixture(tmp_path_factory, request) -> Iterator[Orthanc]:
    """An Orthanc for the module's tests; its log's tail is printed when any of them failed."""
    server = Orthanc.start(tmp_path_factory.mktemp("orthanc"))
    failed_before = request.session.testsfailed
    try:
        yield server
        if request.session.testsfailed > failed_before:
            _show(request, f"Orthanc log ({server.log_path})", server.log_tail())
    finally:
        server.stop()


def _show(request, title: str, text: str) -> None:
    """Print past pytest's output capture: what a module fixture prints at teardown is otherwise never shown."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{'-' * 20} {title} {'-' * 20}\n{text}", flush=True)
