"""No 5xx for anything a caller sends: every route and field of the OpenAPI schema, swept with malformed values.

Each operation has one valid baseline request; the sweep replaces one field (path, query, header, form
field, file, JSON body member) at a time with each value of a table of malformed ones and asserts a
4xx with the error body, never a 5xx. The fields come from the live schema, so a new route or field
without a baseline fails here instead of going unswept.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import REPO
from xai.errors import InvalidImage
from xai.imaging.canonical import corrupt_on_failure
from tests import test_dicom_outputs
from tests.test_api import MODEL, mnist_digit, png, submit, work

DEEP_JSON = "[" * 50_000 + "]" * 50_000
HUGE_INT = "9" * 5_000  # over Python's int-from-string digit limit
MALFORMED_TEXT = (
    "", " ", "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, HUGE_INT, "-1", "0", "1.5",
    "true", "null", "[]", "{}", "[1, 2]", '"x"', "../models/mnist-3v8", "/etc/passwd", "..", "%2e%2e", "*", "?",
    "a/b", "a" * 300, "a" * 5_000, "\u00e9\u4e2d\U0001f600", "\x7f", "{", DEEP_JSON, '{"a": ' * 20_000 + "1",
)
# Values inside a JSON object (method parameters, training body members).
MALFORMED_JSON_VALUES = (
    "NaN", "Infinity", "-Infinity", "1e400", "9" * 400, HUGE_INT, "-1", "0", "1.5", "true", "null", '"x"',
    "[]", "{}", '[1, "a"]', '{"a": {}}', DEEP_JSON,
)
MAX_URL_VALUE = 4096  # longer path, query and header values never leave an HTTP client
MALFORMED_FILES = (b"", b"\x00" * 10, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"DICM" * 40, b"GIF89a", b"%PDF-1.4")


def baseline_requests(image: bytes, job_id: str = "0" * 32) -> dict[tuple[str, str], dict]:
    """(method, path template) -> a valid request: path values, query, headers, form, files, json.

    ``job_id``: a finished job of the caller's, so that malformed file names reach the file lookup.
    """
    manifest = json.loads((REPO / "models" / "demo" / MODEL / "manifest.json").read_text())
    manifest_text = json.dumps({k: v for k, v in manifest.items() if k not in ("version", "artifacts")})
    job = {"job_id": job_id}
    stow_body, stow_type = test_dicom_outputs.stow_body([test_dicom_outputs.radiograph(markers=False)[0]])
    stow = {"headers": {"content-type": stow_type}, "content": stow_body}
    return {
        ("get", "/healthz"): {},
        ("get", "/readyz"): {},
        ("get", "/v1/methods"): {},
        ("get", "/v1/models"): {},
        ("post", "/v1/models"): {
            "form": {"manifest": manifest_text},
            "files": {"weights": b"not a state dict"},
        },
        ("get", "/v1/models/{model_id}"): {"path": {"model_id": MODEL}, "query": {"version": "1"}},
        ("post", "/v1/models/{model_id}/train/{method}"): {
            "path": {"model_id": MODEL, "method": "syce"},
            "json": {"data": "mnist", "params": {"epochs": 1}, "version": 1, "target_class": 0},
        },
        ("post", "/v1/explanations"): {
            "headers": {"idempotency-key": "sweep"},
            "form": {
                "model_id": MODEL, "method": "saliency", "target": "0", "params": "{}", "frame": "0",
                "model_version": "1", "quality": "", "patch_mode": "false", "patch_overlap": "0.25",
            },
            "files": {"file": image, "annotation": b"[[1, 1, 4, 4]]"},
        },
        ("get", "/v1/jobs"): {"query": {"limit": "5", "status": "finished", "model_id": MODEL}},
        ("get", "/v1/jobs/{job_id}"): {"path": job},
        ("get", "/v1/jobs/{job_id}/events"): {"path": job},
        ("delete", "/v1/jobs/{job_id}"): {"path": job},
        ("get", "/v1/jobs/{job_id}/{name}"): {"path": job | {"name": "overlay.png"}},
        ("get", "/v1/jobs/{job_id}/dicom"): {"path": job},
        ("get", "/v1/jobs/{job_id}/dicom/{number}"): {"path": job | {"number": "1"}},
        ("post", "/v1/jobs/{job_id}/deliveries"): {"path": job, "json": {"destination": "pacs"}},
        ("post", "/dicomweb/studies"): stow,
        ("post", "/dicomweb/models/{model_id}/methods/{method}/studies"): stow | {
            "path": {"model_id": MODEL, "method": "saliency"},
            "query": {"params": "{}", "outputs": "dicom", "target": "0"}},
    }


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def form_fields(schema: dict, op: dict) -> dict[str, bool]:
    """Form field name -> whether it is a file, from the operation's multipart body schema."""
    content = op.get("requestBody", {}).get("content", {})
    if "multipart/form-data" not in content:
        return {}
    ref = content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    properties = schema["components"]["schemas"][ref]["properties"]
    return {name: "contentMediaType" in json.dumps(spec) for name, spec in properties.items()}


def variants(schema: dict, method: str, path: str, op: dict, base: dict):
    """(description, request) with one field malformed at a time."""
    for parameter in op.get("parameters", []):
        where = {"path": "path", "query": "query", "header": "headers"}[parameter["in"]]
        for value in MALFORMED_TEXT:
            if len(value) > MAX_URL_VALUE or (where == "headers" and not value.isascii()):
                continue  # HTTP clients refuse such URLs and non-ASCII headers before they are sent
            yield f"{parameter['in']} {parameter['name']}={value[:20]!r}", _replace(base, where, parameter["name"], value)
    for name, is_file in form_fields(schema, op).items():
        where, table = ("files", MALFORMED_FILES) if is_file else ("form", MALFORMED_TEXT)
        for value in table:
            yield f"{where} {name}={value[:20]!r}", _replace(base, where, name, value)
    if "json" in base:
        yield from _json_variants(base)


def _json_variants(base: dict):
    for text in MALFORMED_TEXT:
        yield f"json body {text[:20]!r}", base | {"json": None, "content": text}
    for member in base["json"]:
        for value in MALFORMED_JSON_VALUES:
            yield f"json {member}={value[:20]!r}", base | {"json": None, "content": _json_with(base["json"], member, value)}
    for value in MALFORMED_JSON_VALUES:
        body = base["json"] | {"params": {"epochs": PLACEHOLDER}}
        yield f"json params.epochs={value[:20]!r}", base | {"json": None, "content": _json_with(body, "", value)}


PLACEHOLDER = "<placeholder>"


def _json_with(body: dict, member: str, raw_value: str) -> str:
    """``body`` as JSON text with ``member``'s value (or every placeholder) replaced by raw, maybe invalid, JSON."""
    if member:
        body = body | {member: PLACEHOLDER}
    return json.dumps(body).replace(json.dumps(PLACEHOLDER), raw_value)


def _replace(base: dict, where: str, name: str, value) -> dict:
    return base | {where: {**base.get(where, {}), name: value}}


def send(client: TestClient, method: str, path: str, request: dict):
    url = path
    for name, value in request.get("path", {}).items():
        url = url.replace("{" + name + "}", _quote(value))
    files = {name: (name, blob, "application/octet-stream") for name, blob in request.get("files", {}).items()}
    return client.request(
        method, url, params=request.get("query"), headers=request.get("headers"), data=request.get("form"),
        files=files or None, json=request.get("json"), content=request.get("content"),
    )


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="") or "%20"


@pytest.fixture
def sweep_client(settings, store):
    (settings.training_root / "mnist").mkdir(parents=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def store(settings):
    from models.store import ModelStore
    from tests.conftest import DEMO_DIR

    store = ModelStore(settings.model_store_dir)
    store.register_directory(DEMO_DIR / MODEL)
    return store


def test_every_route_has_a_baseline(sweep_client):
    schema = sweep_client.get("/openapi.json").json()
    baselines = baseline_requests(b"")
    assert {(m, p) for m, p, _ in operations(schema)} == set(baselines)


def test_no_malformed_value_gets_a_5xx(sweep_client, settings):
    schema = sweep_client.get("/openapi.json").json()
    digit = png(mnist_digit(3))
    finished = submit(sweep_client, digit).json()["job_id"]
    work(settings)
    assert sweep_client.get(f"/v1/jobs/{finished}").json()["status"] == "finished"
    baselines = baseline_requests(digit, finished)
    failures = []
    count = 0
    for method, path, op in operations(schema):
        for what, request in variants(schema, method, path, op, baselines[(method, path)]):
            response = send(sweep_client, method, path, request)
            count += 1
            if response.status_code >= 500 or (response.status_code >= 400 and "error" not in _json(response)):
                failures.append(f"{method.upper()} {path} {what}: {response.status_code} {response.text[:120]}")
    assert not failures, f"{len(failures)} of {count}:\n" + "\n".join(failures[:60])
    assert count > 700  # the table reached every field


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@pytest.mark.parametrize(
    "params",
    [
        '{"stdev": NaN}', '{"stdev": Infinity}', '{"stdev": -Infinity}', '{"stdev": 1e400}',
        '{"nt_samples": ' + "9" * 400 + "}", '{"nt_samples": ' + HUGE_INT + "}", '{"nt_samples": 1e400}',
        "1", "[]", '"x"', "null", DEEP_JSON,
    ],
)
def test_non_finite_and_misshapen_params_are_refused(sweep_client, params):
    response = sweep_client.post(
        "/v1/explanations", data={"model_id": MODEL, "method": "smoothgrad", "params": params},
        files={"file": ("digit.png", png(mnist_digit(3)), "image/png")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_params"


@pytest.mark.parametrize("method_params", ['{"saliency": 1}', '{"saliency": [1]}', '{"saliency": "x"}'])
def test_misshapen_params_of_a_comparison_are_refused(sweep_client, method_params):
    response = sweep_client.post(
        "/v1/explanations", data={"model_id": MODEL, "method": "saliency,grad_cam", "params": method_params},
        files={"file": ("digit.png", png(mnist_digit(3)), "image/png")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_params"


@pytest.mark.parametrize("model_id", ["../models/mnist-3v8", "/abs/path", "..", "a" * 300, "MNIST", "mnist 3v8"])
def test_model_ids_are_never_paths(sweep_client, model_id):
    response = sweep_client.post(
        "/v1/explanations", data={"model_id": model_id, "method": "saliency"},
        files={"file": ("digit.png", png(mnist_digit(3)), "image/png")},
    )
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("invalid_model_id", "unknown_model")


class DecoderPanic(BaseException):
    """What pyo3 raises for a panic in a Rust decoder (pylibjpeg-rle): a BaseException, not an Exception."""


def test_a_decoder_panic_is_an_input_error_naming_what_was_decoded():
    with pytest.raises(InvalidImage) as raised:
        with corrupt_on_failure("Pixel Data ('RLE Lossless' (1.2.840.10008.1.2.5))"):
            raise DecoderPanic("index out of bounds")
    assert raised.value.code == "corrupt_image"
    assert "RLE Lossless" in raised.value.message and "DecoderPanic" in raised.value.message


@pytest.mark.parametrize("dicom", sorted((REPO / "examples").glob("*.dcm")), ids=lambda path: path.stem)
def test_damaged_dicom_of_every_transfer_syntax_is_an_input_error(sweep_client, dicom):
    """Every example DICOM with bytes of its pixel data overwritten: decoded or refused, never a 5xx."""
    data = bytearray(dicom.read_bytes())
    for start in range(len(data) // 2, len(data) - 64, max(1, len(data) // 7)):
        damaged = data.copy()
        damaged[start : start + 64] = bytes(range(0, 256, 4))
        response = sweep_client.post(
            "/v1/explanations", data={"model_id": MODEL, "method": "saliency"},
            files={"file": ("x.dcm", bytes(damaged), "application/dicom")},
        )
        assert response.status_code in (202, 400, 413, 415, 422), response.text
