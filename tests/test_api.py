"""The REST contract end to end: real Redis, real RQ worker (in-process, burst), real demo model."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tempfile
import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR, REPO, SHARED_DATA
from workers.main import run_worker

MODEL = "mnist-3v8"


def mnist_digit(label: int, index: int = 0) -> np.ndarray:
    """A real MNIST test digit (uint8 28 x 28) with the given label."""
    with gzip.open(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    return images[np.flatnonzero(labels == label)[index]]


def png(pixels: np.ndarray, size: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.model_store_dir)
    store.register_directory(DEMO_DIR / MODEL)
    return store


@pytest.fixture
def client(settings, store):
    with TestClient(create_app(settings)) as client:
        yield client


def work(settings, queues=("fast", "slow")) -> None:
    run_worker(settings, list(queues), burst=True)


def submit(client, data: bytes, method: str = "saliency", model_id: str = MODEL, **fields):
    files = {"file": ("upload.bin", data, "application/octet-stream")}
    if "annotation" in fields:
        files["annotation"] = ("mask", fields.pop("annotation"), "application/octet-stream")
    headers = fields.pop("headers", {})
    return client.post("/v1/explanations", data={"model_id": model_id, "method": method, **fields}, files=files,
                       headers=headers)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_health_and_readiness(client, settings):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    submit(client, png(mnist_digit(3)))
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and "fast" in not_ready.json()["reason"]


def test_readiness_counts_only_workers_with_a_current_heartbeat(client, settings):
    """A worker killed with -9 leaves its RQ record for its TTL plus 60 s; it must not count as serving."""
    from datetime import UTC, datetime, timedelta

    from rq import Queue
    from rq.serializers import JSONSerializer
    from rq.utils import utcformat
    from rq.worker import Worker

    redis = Redis.from_url(settings.redis_url)
    worker = Worker([Queue("fast", connection=redis, serializer=JSONSerializer)], connection=redis, name="killed")
    worker.register_birth()
    submit(client, png(mnist_digit(3)))
    assert client.get("/readyz").status_code == 200  # heard from just now
    stale = datetime.now(UTC) - timedelta(seconds=settings.worker_ttl_s + 1)
    redis.hset(worker.key, "last_heartbeat", utcformat(stale))
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["queues"]["fast"]["workers"] == 0


def test_models_and_methods_are_listed(client):
    models = client.get("/v1/models").json()["models"]
    demo = next(m for m in models if m["id"] == MODEL)
    assert demo["class_names"] == ["three", "eight"]
    assert {"saliency", "integrated_gradients", "grad_cam"} <= set(demo["methods"])
    assert demo["evaluation"]["accuracy"] > 0.9
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["methods"]}
    steps = next(p for p in methods["integrated_gradients"]["params"] if p["name"] == "n_steps")
    assert steps["default"] == 50 and steps["range"] == [2, 1000]
    assert client.get("/v1/models/nope").json()["error"]["code"] == "unknown_model"


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "grad_cam"])
def test_explanation_end_to_end(client, settings, method):
    digit = mnist_digit(3)
    accepted = submit(client, png(digit, size=56), method=method, faithfulness="true")
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    metrics = job["result"]["metrics"]
    assert metrics["prediction"]["class_name"] == "three" and metrics["prediction"]["score"] > 0.5
    assert metrics["method"]["name"] == method
    faith = metrics["faithfulness"]
    assert 0 <= faith["deletion_auc"] <= 1 and 0 <= faith["insertion_auc"] <= 1
    assert {"baseline", "steps", "score"} <= set(faith["settings"])
    assert 0 <= metrics["complexity"]["area_fraction"] <= 1
    timing = job["result"]["timing"]
    assert {"queue_ms", "load_ms", "explain_ms", "score_ms", "render_ms", "store_ms"} <= set(timing)
    assert timing["batch_size"] == 1 and all(timing[k] >= 0 for k in timing if k.endswith("_ms"))
    assert metrics["model"]["sha256"]
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content))
    assert heatmap.shape == (56, 56) and np.isfinite(heatmap).all() and heatmap.max() > heatmap.min()
    overlay = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job_id}/overlay.png").content))
    assert overlay.size == (56, 56)
    assert set(job["result"]["files"]) == {"heatmap.npy", "heatmap_model.npy", "heatmap.png", "overlay.png", "input.png"}
    shown = np.asarray(Image.open(io.BytesIO(client.get(f"/v1/jobs/{job_id}/input.png").content)))
    assert shown.shape == (56, 56) and shown.std() > 10  # the upload's display copy, not a blank
    model_size = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap_model.npy").content))
    assert model_size.shape == (28, 28)


def test_integrated_gradients_through_the_api_is_complete(client, settings, store):
    """Signed IG heatmap (input at the model size, so no resampling) sums to f(x) - f(black) of the target."""
    import torch

    from models.loader import load_classifier

    digit = mnist_digit(8, 2)
    params = json.dumps({"sign": "all", "n_steps": 200})
    job_id = submit(client, png(digit), method="integrated_gradients", params=params).json()["job_id"]
    work(settings)
    metrics = client.get(f"/v1/jobs/{job_id}").json()["result"]["metrics"]
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content))
    manifest = store.get(MODEL)
    model = load_classifier(manifest, store.weights_path(manifest), "cpu")
    image = torch.from_numpy(digit.astype(np.float32) / 255)[None, None]
    target = metrics["target"]["class"]
    with torch.no_grad():
        difference = (model(image)[0, target] - model(torch.zeros_like(image))[0, target]).item()
    assert heatmap.sum() == pytest.approx(difference, rel=0.02, abs=0.02)
    assert abs(metrics["integrated_gradients"]["convergence_delta"]) < 0.02 * max(1.0, abs(difference))


def test_annotation_gives_localization(client, settings):
    """The localisation figures are those of the returned heatmap against the sent mask."""
    from workers.scoring import localization

    digit = mnist_digit(3, 1)
    mask = digit > 64
    job_id = submit(client, png(digit), annotation=png((mask * 255).astype(np.uint8))).json()["job_id"]
    work(settings)
    figures = client.get(f"/v1/jobs/{job_id}").json()["result"]["metrics"]["localization"]
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content))
    expected = localization(heatmap, mask)
    for key in ("iou_p85", "iou_p90", "iou_p95", "iou_p98", "ncc"):  # the served map is stored as float16
        assert figures[key] == pytest.approx(expected[key], abs=1e-4)
    assert 0 < figures["iou_p85"] <= 1


def test_boxes_annotation_and_comparison(client, settings):
    boxes = json.dumps([[4, 4, 20, 20]]).encode()
    job_id = submit(client, png(mnist_digit(3)), method="saliency,grad_cam", annotation=boxes).json()["job_id"]
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    rows = {row["method"]: row for row in job["result"]["metrics"]["comparison"]}
    assert set(rows) == {"saliency", "grad_cam"} and "iou_p90" in rows["grad_cam"]
    assert "grad_cam/heatmap.png" in job["result"]["files"]
    assert client.get(f"/v1/jobs/{job_id}/grad_cam/heatmap.png").headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("fields", "data", "status", "code"),
    [
        ({}, b"", 422, "empty_file"),
        ({}, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "corrupt_image"),
        ({}, b"hello, I am not an image", 415, "unsupported_format"),
        ({"model_id": "nope"}, None, 404, "unknown_model"),
        ({"method": "magic"}, None, 422, "unknown_method"),
        ({"params": '{"n_steps": 0}', "method": "integrated_gradients"}, None, 422, "invalid_params"),
        ({"params": '{"bogus": 1}'}, None, 422, "invalid_params"),
        ({"params": "not json"}, None, 422, "invalid_params"),
        ({"target": "seven"}, None, 422, "invalid_target"),
        ({"target": "5"}, None, 422, "invalid_target"),
    ],
)
def test_bad_requests_get_stable_codes(client, fields, data, status, code):
    data = png(mnist_digit(3)) if data is None else data
    files = {"file": ("x.png", data, "image/png")}
    response = client.post("/v1/explanations", data={"model_id": MODEL, "method": "saliency", **fields}, files=files)
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert response.json()["error"]["message"]


def test_missing_fields_are_422_not_500(client):
    response = client.post("/v1/explanations", data={"method": "saliency"})
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert "model_id" in response.json()["error"]["message"]


def test_idempotency_key_returns_the_same_job(client):
    headers = {"Idempotency-Key": "retry-123"}
    first = submit(client, png(mnist_digit(3)), headers=headers).json()["job_id"]
    second = submit(client, png(mnist_digit(3)), headers=headers).json()["job_id"]
    assert first == second
    assert submit(client, png(mnist_digit(3))).json()["job_id"] != first
    refused = submit(client, b"", headers={"Idempotency-Key": "retry-456"})
    assert refused.status_code == 422
    retried = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "retry-456"})
    assert client.get(f"/v1/jobs/{retried.json()['job_id']}").status_code == 200


def test_an_idempotency_claim_whose_job_never_reached_the_queue_is_taken_over_by_a_retry(client, settings):
    """Redis or the gateway died between claiming the key and enqueueing: the retry must not get a phantom job."""
    from service.jobs import STALE_CLAIM_S
    from xai.jobs import idempotency_key

    redis = Redis.from_url(settings.redis_url)
    key = idempotency_key("local", "lost-in-between")
    redis.set(key, "f" * 32, ex=settings.result_ttl_s - 1)  # claimed a moment ago, not enqueued (yet)
    pending = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "lost-in-between"})
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "request_in_progress"
    assert pending.headers["Retry-After"] == "1"
    redis.set(key, "f" * 32, ex=settings.result_ttl_s - STALE_CLAIM_S - 1)  # claimed long ago, never enqueued
    retried = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "lost-in-between"}).json()["job_id"]
    assert retried != "f" * 32 and client.get(f"/v1/jobs/{retried}").status_code == 200
    again = submit(client, png(mnist_digit(3)), headers={"Idempotency-Key": "lost-in-between"}).json()["job_id"]
    assert again == retried


def test_cancel_a_queued_job(client, settings):
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["error"]["code"] == "canceled"


def test_api_keys_scopes_and_ownership(settings, store):
    keyed = settings.model_copy(update={"api_keys": [
        {"name": "pacs", "key": "pacs-secret-0123456789", "scopes": ["explain"]},
        {"name": "dash", "key": "dash-secret-0123456789", "scopes": ["explain"]},
        {"name": "ops", "key": "ops-secret-0123456789", "scopes": ["explain", "admin"]},
    ]})
    keyed = type(settings).model_validate(keyed.model_dump())
    with TestClient(create_app(keyed)) as client:
        assert error_code(client.get("/v1/models")) == "missing_api_key"
        bad = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and error_code(bad) == "invalid_api_key"
        pacs = {"Authorization": "Bearer pacs-secret-0123456789"}
        job_id = submit(client, png(mnist_digit(3)), headers=pacs).json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=pacs).status_code == 200
        other = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer dash-secret-0123456789"})
        assert other.status_code == 404 and error_code(other) == "unknown_job"
        refused = client.post("/v1/models", headers=pacs, data={"manifest": "{}"},
                              files={"weights": ("w.pt", b"x")})
        assert refused.status_code == 403 and error_code(refused) == "insufficient_scope"
        assert error_code(client.get("/v1/methods")) == "missing_api_key"
        assert client.get("/v1/methods", headers=pacs).status_code == 200


def test_an_admin_only_key_reads_the_validation_job_it_started(settings, store):
    keyed = type(settings).model_validate(settings.model_dump() | {"api_keys": [
        {"name": "ops", "key": "ops-secret-0123456789", "scopes": ["admin"]},
        {"name": "pacs", "key": "pacs-secret-0123456789", "scopes": ["explain"]},
    ]})
    manifest = json.loads((DEMO_DIR / MODEL / "manifest.json").read_text())
    weights = (DEMO_DIR / MODEL / manifest["weights_file"]).read_bytes()
    ops = {"Authorization": "Bearer ops-secret-0123456789"}
    with TestClient(create_app(keyed)) as client:
        created = client.post("/v1/models", headers=ops, data={"manifest": json.dumps(manifest)},
                              files={"weights": ("weights.pt", weights)})
        job_id = created.json()["validation_job"]["job_id"]
        work(keyed)
        assert client.get(f"/v1/jobs/{job_id}", headers=ops).json()["status"] == "finished"
        other = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer pacs-secret-0123456789"})
        assert error_code(other) == "unknown_job"


@pytest.mark.parametrize(
    "key",
    [
        {"name": "pacs", "key": ""},
        {"name": "pacs", "key": "short-secret"},
        {"name": "pacs", "key_sha256": "abc"},
        {"name": "", "key": "a-long-enough-secret-value"},
        {"name": "pacs"},
        {"name": "pacs", "key": "a-long-enough-secret-value", "key_sha256": "0" * 64},
        {"name": "pacs", "key": "a-long-enough-secret-value", "scopes": []},
    ],
)
def test_empty_or_short_secrets_are_refused_at_start_up(settings, key):
    with pytest.raises(ValueError):
        type(settings).model_validate(settings.model_dump() | {"api_keys": [key]})


def test_the_schema_and_docs_can_be_switched_off(settings):
    with TestClient(create_app(settings.model_copy(update={"api_docs": False}))) as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_refuses_to_listen_beyond_loopback_without_keys(settings):
    with pytest.raises(SystemExit, match="API keys"):
        create_app(settings.model_copy(update={"host": "0.0.0.0"}))
    create_app(settings.model_copy(update={"host": "127.0.0.1"}))


def test_register_a_model_over_the_api(client, settings):
    manifest = json.loads((DEMO_DIR / MODEL / "manifest.json").read_text())
    manifest["id"] = "my-digits"
    weights = (DEMO_DIR / MODEL / manifest["weights_file"]).read_bytes()
    created = client.post("/v1/models", data={"manifest": json.dumps(manifest)},
                          files={"weights": ("weights.pt", weights)})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending" and created.json()["version"] == 1
    blocked = client.post("/v1/explanations", data={"model_id": "my-digits", "method": "saliency"},
                          files={"file": ("x.png", png(mnist_digit(3)))})
    assert error_code(blocked) == "model_not_ready"
    work(settings)
    assert client.get("/v1/models/my-digits").json()["status"] == "ready"
    again = client.post("/v1/models", data={"manifest": json.dumps(manifest)},
                        files={"weights": ("weights.pt", weights)})
    assert again.json()["version"] == 2


def test_registering_wrong_weights_marks_the_model_invalid(client, settings):
    manifest = json.loads((DEMO_DIR / MODEL / "manifest.json").read_text())
    manifest["id"] = "broken"
    import torch

    buffer = io.BytesIO()
    torch.save({"not_a_layer.weight": torch.zeros(3)}, buffer)
    created = client.post("/v1/models", data={"manifest": json.dumps(manifest)},
                          files={"weights": ("weights.pt", buffer.getvalue())})
    validation = created.json()["validation_job"]["job_id"]
    work(settings)
    assert client.get("/v1/models/broken").json()["status"] == "invalid"
    job = client.get(f"/v1/jobs/{validation}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "weights_do_not_match_architecture"
    bad_manifest = client.post("/v1/models", data={"manifest": '{"id": "x"}'}, files={"weights": ("w.pt", b"x")})
    assert bad_manifest.status_code == 422 and error_code(bad_manifest) == "invalid_manifest"


def test_killed_worker_leaves_the_job_failed_with_a_reason(client, settings):
    """A worker killed mid-job: the job is re-queued once, and a second kill ends it 'failed' with code
    worker_lost, never 'started' forever."""
    params = json.dumps({"iterations": 500})  # minutes of work: the kill always lands mid-job
    job_id = submit(client, png(mnist_digit(3)), method="igos_pp", params=params).json()["job_id"]
    env = {"XAI_REDIS_URL": settings.redis_url, "XAI_DATA_DIR": str(settings.data_dir), "XAI_DEVICE": "cpu",
           "XAI_HEARTBEAT_S": "1", "XAI_ABANDONED_AFTER_S": "3", "PATH": "/usr/bin:/bin"}
    for expected in ("queued", "failed"):
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "slow"], cwd=REPO, env=env)
        try:
            _wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "started", 60)
        finally:
            worker.kill()
            worker.wait()
        job = _wait_for(lambda: (body := client.get(f"/v1/jobs/{job_id}").json())["status"] == expected and body, 30)
    assert job["error"]["code"] == "worker_lost"


def _ended(client, job_id):
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("finished", "failed", "canceled") else None


def _wait_for(condition, timeout_s: float):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_no_identifying_dicom_tag_reaches_redis(client, settings):
    """Patient name, id and birth date of an uploaded DICOM appear nowhere in Redis after the job."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    digit = mnist_digit(3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JOHNATHAN", "MRN-998877", "19491231"
    ds.InstitutionName, ds.AccessionNumber, ds.Modality = "St Example Hospital", "ACC-5551234", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 28, 28, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = digit.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    job_id = submit(client, buffer.getvalue()).json()["job_id"]
    work(settings)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "finished"
    dump = b"".join(_every_value(Redis.from_url(settings.redis_url)))
    for secret in (b"JOHNATHAN", b"MRN-998877", b"19491231", b"Example Hospital", b"ACC-5551234"):
        assert secret not in dump


def _every_value(redis: Redis):
    """Every stored value, and its zlib-inflated form where it is compressed (as RQ's job data is)."""
    for key in redis.keys("*"):
        kind = redis.type(key).decode()
        values = {
            "string": lambda: [redis.get(key)],
            "hash": lambda: list(redis.hgetall(key).values()),
            "list": lambda: redis.lrange(key, 0, -1),
            "set": lambda: list(redis.smembers(key)),
            "zset": lambda: redis.zrange(key, 0, -1),
        }.get(kind, lambda: [])()
        for value in values:
            yield value
            try:
                yield zlib.decompress(value)
            except zlib.error:
                pass


def test_gateway_never_imports_torch():
    code = "import sys, service.main; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_metrics_endpoint(client):
    submit(client, b"")
    text = client.get("/metrics").text
    assert 'xai_request_errors_total{code="empty_file"} 1.0' in text
    assert 'xai_queue_depth{queue="fast"}' in text


def test_waiting_jobs_of_one_model_and_method_are_explained_in_one_batch(client, settings):
    """Three queued saliency jobs run as one batch; their heatmaps equal those computed one by one."""
    digits = [mnist_digit(3, 5), mnist_digit(8, 5), mnist_digit(3, 6)]
    batched = [submit(client, png(d)).json()["job_id"] for d in digits]
    other = submit(client, png(digits[0]), method="grad_cam").json()["job_id"]
    work(settings)
    batched_maps = []
    for job_id in batched:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "finished" and job["result"]["timing"]["batch_size"] == 3
        assert job["result"]["timing"]["explain_ms"] > 0 and job["progress"] == 1.0
        batched_maps.append(np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content)))
    assert client.get(f"/v1/jobs/{other}").json()["result"]["timing"]["batch_size"] == 1
    assert client.get(f"/v1/jobs/{batched[1]}").json()["result"]["metrics"]["target"]["class_name"] == "eight"
    for digit, batched_map in zip(digits, batched_maps, strict=True):
        alone = submit(client, png(digit)).json()["job_id"]
        work(settings)
        single = np.load(io.BytesIO(client.get(f"/v1/jobs/{alone}/heatmap.npy").content))
        np.testing.assert_allclose(batched_map, single, rtol=1e-4, atol=1e-6)


def test_a_running_long_job_shows_progress_and_stops_when_canceled(client, settings):
    params = json.dumps({"iterations": 200})
    job_id = submit(client, png(mnist_digit(3)), method="igos_pp", params=params).json()["job_id"]
    env = {"XAI_REDIS_URL": settings.redis_url, "XAI_DATA_DIR": str(settings.data_dir), "XAI_DEVICE": "cpu",
           "PATH": "/usr/bin:/bin"}
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "slow"], cwd=REPO, env=env)
    try:
        running = _wait_for(lambda: _progressing(client, job_id), 90)
        assert running["stage"] == "explaining" and "iteration" in running["note"]
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
        job = _wait_for(lambda: _ended(client, job_id), 30)
        assert job["status"] == "canceled" and job["error"]["code"] == "canceled"
        assert job["progress"] < 1.0
    finally:
        worker.kill()
        worker.wait()


def _progressing(client, job_id):
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] == "started" and job["progress"] > 0.1 and job["note"] else None


def test_patch_mode_and_quality_metrics_per_request(client, settings):
    big = png(np.tile(mnist_digit(3), (2, 3)))  # 56 x 84: six digits, larger than the 28 x 28 model input
    patched = submit(client, big, patch_mode="true", patch_overlap="0.5").json()["job_id"]
    checked = submit(client, png(mnist_digit(8)), method="saliency,grad_cam",
                     quality="infidelity,max_sensitivity,randomisation").json()["job_id"]
    refused = submit(client, png(mnist_digit(8)), quality="beauty")
    assert refused.status_code == 422 and error_code(refused) == "invalid_quality"
    work(settings)
    job = client.get(f"/v1/jobs/{patched}").json()
    assert job["result"]["metrics"]["patches"] == {"patch_size": [28, 28], "overlap": 0.5}
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{patched}/heatmap.npy").content))
    assert heatmap.shape == (56, 84)
    tiles = heatmap.reshape(2, 28, 3, 28).sum(axis=(1, 3))
    assert tiles.min() > 0.3 * tiles.max()  # every copy of the digit is explained, not just one tile
    methods = client.get(f"/v1/jobs/{checked}").json()["result"]["metrics"]["methods"]
    for name in ("saliency", "grad_cam"):
        quality = methods[name]["quality"]
        assert quality["infidelity"]["infidelity"] >= 0 and quality["max_sensitivity"]["max_sensitivity"] >= 0
        assert -1 <= quality["randomisation"]["spearman"] < 0.99


def test_an_expired_input_fails_the_job_with_a_reason(client, settings):
    from xai.jobs import input_key

    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    Redis.from_url(settings.redis_url).delete(input_key(job_id))  # as if XAI_INPUT_TTL_S had passed
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "input_expired"


def test_a_job_past_its_time_limit_fails_with_timeout(settings, store):
    hurried = settings.model_copy(update={"timeout_slow_s": 1})
    with TestClient(create_app(hurried)) as client:
        job_id = submit(client, png(mnist_digit(3)), method="igos_pp", params='{"iterations": 500}').json()["job_id"]
        work(hurried)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"


def test_an_upload_over_a_mebibyte_is_held_in_memory_never_spooled_to_disk(client, monkeypatch):
    # Starlette rolls a form's file over to a temporary file past its spool size (1 MiB by default).
    rolled = []
    rollover = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover",
                        lambda spooled: rolled.append(spooled) or rollover(spooled))
    noise = np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8)
    data = png(noise)
    assert len(data) > 2 * 2**20
    assert submit(client, data).status_code == 202
    assert rolled == []


def test_a_poll_of_a_job_started_within_its_first_lease_runs_no_abandoned_job_cleanup(client, settings, monkeypatch):
    cleaned = []
    monkeypatch.setattr(StartedJobRegistry, "cleanup", lambda registry, *args, **kwargs: cleaned.append(registry.name))
    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    job = Job.fetch(job_id, connection=Redis.from_url(settings.redis_url), serializer=JSONSerializer)
    job.set_status(JobStatus.STARTED)
    for started_ago_s, cleanups in ((0, []), (settings.abandoned_after_s + 1, ["fast"])):
        job.started_at = datetime.now(UTC) - timedelta(seconds=started_ago_s)
        job.save()
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "started"
        assert cleaned == cleanups
