"""Training explainer artifacts through the API on the train queue, then explaining with them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.manifest import ModelManifest
from models.store import ModelStore
from service.main import create_app
from tests.conftest import DEMO_DIR
from tests.test_api import MODEL, mnist_digit, png, submit, work


@pytest.fixture
def client(settings):
    store = ModelStore(settings.model_store_dir)
    store.register_directory(DEMO_DIR / MODEL)
    bare = ModelManifest.model_validate_json((DEMO_DIR / MODEL / "manifest.json").read_text())
    store.register(bare.model_copy(update={"id": "digits-untrained", "artifacts": {}}),
                   DEMO_DIR / MODEL / bare.weights_file)
    with TestClient(create_app(settings)) as client:
        yield client


def test_syce_explanation_returns_counterfactuals(client, settings):
    job_id = submit(client, png(mnist_digit(3, 7)), method="syce").json()["job_id"]
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    details = job["result"]["metrics"]["syce"]
    assert details["flipped"] is True and details["score_adversarial"] < 0.5 < details["score_input"]
    assert {"adversarial.png", "stable.png", "heatmap.npy"} <= set(job["result"]["files"])
    adversarial = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job_id}/adversarial.png").content))
    assert adversarial.size == (28, 28)


def test_train_cyce_over_the_api_then_explain(client, settings):
    folder = settings.training_root / "digits"
    for label in (3, 8):
        (folder / str(label)).mkdir(parents=True)
        for index in range(16):
            Image.fromarray(mnist_digit(label, index)).save(folder / str(label) / f"{index}.png")
    unavailable = submit(client, png(mnist_digit(3)), method="cyce", model_id="digits-untrained")
    assert unavailable.status_code == 409 and unavailable.json()["error"]["code"] == "method_unavailable"
    params = {"epochs": 1, "batch_size": 8, "base_width": 4, "validation_fraction": 0.0}
    accepted = client.post("/v1/models/digits-untrained/train/cyce", json={"data": "digits", "params": params})
    assert accepted.status_code == 202, accepted.text
    work(settings, queues=("train",))
    job = client.get(f"/v1/jobs/{accepted.json()['job_id']}").json()
    assert job["status"] == "finished", job
    assert "cyce" in client.get("/v1/models/digits-untrained").json()["methods"]
    explained = submit(client, png(mnist_digit(8)), method="cyce", model_id="digits-untrained").json()["job_id"]
    work(settings)
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{explained}/heatmap.npy").content))
    assert heatmap.shape == (28, 28) and np.isfinite(heatmap).all()


def test_train_syce_with_finding_masks_over_the_api(client, settings):
    # Each digit's "finding" is its stroke (pixels above 0.5), as a mask file under the same relative path.
    for label in (3, 8):
        for folder in ("digits", "digit-masks"):
            (settings.training_root / folder / str(label)).mkdir(parents=True)
        for index in range(16):
            digit = mnist_digit(label, index)
            Image.fromarray(digit).save(settings.training_root / "digits" / str(label) / f"{index}.png")
            Image.fromarray(np.where(digit > 127, 255, 0).astype(np.uint8)).save(
                settings.training_root / "digit-masks" / str(label) / f"{index}.png")
    params = {"epochs": 1, "batch_size": 8, "base_width": 4, "validation_fraction": 0.0,
              "weight_outside_finding": 1.0, "finding_margin_px": 1}
    url = "/v1/models/digits-untrained/train/syce"
    accepted = client.post(url, json={"data": "digits", "masks": "digit-masks", "params": params})
    assert accepted.status_code == 202, accepted.text
    work(settings, queues=("train",))
    job = client.get(f"/v1/jobs/{accepted.json()['job_id']}").json()
    assert job["status"] == "finished", job
    assert job["result"]["metrics"]["summary"]["final"]["losses"]["outside_finding"] > 0
    # A mask missing for one image fails the job with the file named, before any training.
    (settings.training_root / "digit-masks" / "8" / "15.png").unlink()
    accepted = client.post(url, json={"data": "digits", "masks": "digit-masks", "params": params})
    work(settings, queues=("train",))
    job = client.get(f"/v1/jobs/{accepted.json()['job_id']}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_training_data"
    assert "8/15.png" in job["error"]["message"]


@pytest.mark.parametrize(
    ("method", "body", "code"),
    [("syce", {"data": "digits", "params": {"weight_outside_finding": 1.0}}, "invalid_params"),
     ("gad", {"data": "digits", "masks": "digits"}, "invalid_params"),
     ("cyce", {"data": "digits", "masks": "../../etc"}, "invalid_training_data")],
)
def test_finding_masks_are_asked_for_only_where_used(client, settings, method, body, code):
    (settings.training_root / "digits").mkdir(parents=True)
    response = client.post(f"/v1/models/digits-untrained/train/{method}", json=body)
    assert response.status_code == 422 and response.json()["error"]["code"] == code, response.text


@pytest.mark.parametrize(
    ("body", "code"),
    [({"data": "../../etc"}, "invalid_training_data"), ({}, "invalid_request"),
     ({"data": "digits", "params": {"epochs": 0}}, "invalid_params")],
)
def test_training_requests_are_validated(client, settings, body, code):
    (settings.training_root / "digits").mkdir(parents=True)
    response = client.post("/v1/models/digits-untrained/train/syce", json=body)
    assert response.status_code == 422 and response.json()["error"]["code"] == code
    assert client.post("/v1/models/digits-untrained/train/saliency", json={"data": "digits"}).json()["error"][
        "code"] == "not_trainable"


def test_gad_explanation_keeps_a_subset_of_the_base_map(client, settings):
    params = '{"base_method": "saliency"}'
    job_id = submit(client, png(mnist_digit(8, 4)), method="gad", params=params).json()["job_id"]
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    details = job["result"]["metrics"]["gad"]
    assert details["alphas"] == [2.0, 4.0, 6.0, 8.0] and details["base_method"] == "saliency"
    assert 0 < details["retained_fraction"] <= 1
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap.npy").content))
    base = np.asarray(Image.open(io.BytesIO(client.get(f"/v1/jobs/{job_id}/base_map.png").content)))
    assert heatmap.shape == base.shape[:2] == (28, 28)
    kept, important = heatmap > 0, base.reshape(28, 28, -1).max(axis=-1) > 0
    assert kept.any() and (important[kept]).all() and kept.sum() < important.sum()
