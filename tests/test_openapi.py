"""The typed API: the OpenAPI document against its committed snapshot and its own promises, and a client
generated from it (openapi-python-client) running a job against a live gateway and worker."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.openapi import document
from service.schemas import ErrorResponse, JobStatus, MethodList
from tests.conftest import REPO
from tests.live import KEYS, live_service  # noqa: F401 - the fixture
from tests.test_api import mnist_digit, png
from xai.methods import CATALOGUE

SNAPSHOT = REPO / "docs" / "openapi.json"
UNAUTHENTICATED = {"healthz", "readyz"}


def operations(schema: dict):
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_the_served_schema_is_the_committed_snapshot():
    assert document() == json.loads(SNAPSHOT.read_text()), \
        "the API changed: review it, then python -m service.openapi > docs/openapi.json"


DICOM_BODIES = ("stow_routed", "stow_to_method")


def test_every_operation_is_named_secured_and_documents_the_real_error_body():
    schema = document()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["ApiKey"][
            "description"]}
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 body is not ours
    ids = []
    for path, method, op in operations(schema):
        ids.append(op["operationId"])
        assert op.get("security") == (None if op["operationId"] in UNAUTHENTICATED else [{"ApiKey": []}]), path
        for status, response in op["responses"].items():
            if op["operationId"] in DICOM_BODIES and status in ("200", "202", "409"):  # as PS3.18 prescribes
                assert "application/dicom+json" in response["content"], (method, path, status)
            elif int(status) >= 400 and op["operationId"] != "readyz":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            elif status in ("200", "201", "202") and op["operationId"] not in ("get_file", "job_events", "get_dicom",
                                                                                       "get_dicom_instance"):
                assert "$ref" in response["content"]["application/json"]["schema"], (method, path, status)
        if op["operationId"] not in UNAUTHENTICATED:
            assert "401" in op["responses"] and "500" in op["responses"], (method, path)
    assert len(ids) == len(set(ids)) and "create_explanation" in ids and "get_job" in ids
    upload = schema["components"]["schemas"]["Body_create_explanation"]["properties"]["file"]
    assert upload["format"] == "binary"


def test_a_real_error_answer_is_the_documented_body(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app(settings)) as client:
        answers = [client.get("/v1/jobs", params={"limit": "0"}), client.get("/v1/jobs/" + "0" * 32),
                   client.get("/v1/nowhere"), client.post("/v1/explanations", data={"model_id": "x"})]
    assert [response.status_code for response in answers] == [422, 404, 404, 422]
    for response in answers:
        assert ErrorResponse.model_validate(response.json()).error.code


@pytest.mark.parametrize("spec", list(CATALOGUE.values()), ids=lambda spec: spec.name)
def test_method_params_schema_says_what_the_gateway_accepts(spec):
    described = MethodList.model_validate({"methods": [spec.describe()]}).methods[0]
    schema = described.params_schema
    assert schema["additionalProperties"] is False and set(schema["properties"]) == {p.name for p in spec.params}
    for param in spec.params:
        field = schema["properties"][param.name]
        assert field["default"] == param.default
        spec.resolve_params({param.name: param.default})  # the default is valid
        if "maximum" in field:
            with pytest.raises(Exception, match="must be within"):
                spec.resolve_params({param.name: field["maximum"] + 1})
        if "minimum" in field:
            with pytest.raises(Exception, match="must be within"):
                spec.resolve_params({param.name: field["minimum"] - 1})
        if "enum" in field:
            with pytest.raises(Exception, match="must be one of"):
                spec.resolve_params({param.name: "not-" + field["enum"][0]})
        wrong = {"integer": "7", "number": "7", "boolean": 1, "string": 7}[
            field["type"] if isinstance(field["type"], str) else field["type"][0]]
        with pytest.raises(Exception, match="must be"):
            spec.resolve_params({param.name: wrong})


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client")
    config = folder / "config.yaml"
    config.write_text("post_hooks: []\nproject_name_override: xai_client\npackage_name_override: xai_client\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    subprocess.run([str(generator), "generate", "--path", str(SNAPSHOT), "--config", str(config),
                    "--output-path", str(folder / "out")], check=True, capture_output=True, timeout=120)
    return folder / "out"


def test_a_generated_client_runs_a_job_against_the_live_service(generated_client, live_service):
    sys.path.insert(0, str(generated_client))
    try:
        xai_client = importlib.import_module("xai_client")
        from xai_client.api.explanations import create_explanation
        from xai_client.api.jobs import get_file, get_job, list_jobs
        from xai_client.models import BodyCreateExplanation, ErrorResponse as GeneratedError
        from xai_client.types import File
    finally:
        sys.path.remove(str(generated_client))
    client = xai_client.AuthenticatedClient(base_url=live_service.url, token=KEYS["alice"])
    body = BodyCreateExplanation(file=File(payload=png(mnist_digit(3)), file_name="three.png"),
                                 model_id="mnist-3v8", method="saliency")
    accepted = create_explanation.sync(client=client, body=body)
    assert len(accepted.job_id) == 32
    deadline = time.monotonic() + 60
    while (job := get_job.sync(job_id=accepted.job_id, client=client)).status.value != "finished":
        assert job.status.value in ("queued", "started") and time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job.result.metrics.prediction["class_name"] == "three"
    assert job.result.timing.batch_size == 1
    JobStatus.model_validate(job.to_dict())  # what the generated client parsed is the gateway's model
    overlay = get_file.sync_detailed(job_id=job.job_id, name="overlay.png", client=client)
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    assert accepted.job_id in [listed.job_id for listed in list_jobs.sync(client=client).jobs]
    refused = create_explanation.sync(client=client, body=BodyCreateExplanation(
        file=File(payload=b"not an image", file_name="x.png"), model_id="mnist-3v8", method="saliency"))
    assert isinstance(refused, GeneratedError) and refused.error.code == "unsupported_format"
