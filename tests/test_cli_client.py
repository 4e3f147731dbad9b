"""``xai explain | jobs | models | methods`` as a person runs them: a subprocess against a live gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
from PIL import Image

from tests.conftest import REPO
from tests.live import KEYS, free_port, live_service  # noqa: F401 - the fixture
from tests.test_api import mnist_digit, png


def xai(*args: str, server: str, key: str | None = "alice", tmp_path=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "app.cli", *args, "--server", server]
    if key:
        key_file = tmp_path / f"{key}.key"
        key_file.write_text(KEYS.get(key, key) + "\n")
        command += ["--key-file", str(key_file)]
    env = {"PATH": "/usr/bin:/bin"}  # the service's default log level: a client must still log nothing
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_explain_a_folder_downloads_every_file_and_prints_the_figures(live_service, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for label, index in ((3, 0), (8, 0), (3, 1)):
        (folder / f"digit-{label}-{index}.png").write_bytes(png(mnist_digit(label, index)))
    out = tmp_path / "out"
    done = xai("explain", str(folder), "--model", "mnist-3v8", "--method", "saliency,integrated_gradients",
               "--params", json.dumps({"integrated_gradients": {"n_steps": 8}}), "--out", str(out),
               server=live_service.url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    for label, index in ((3, 0), (8, 0), (3, 1)):
        stem = f"digit-{label}-{index}"
        expected = "three" if label == 3 else "eight"
        assert f"digit-{label}-{index}.png: {expected} (" in done.stdout
        result = json.loads((out / stem / "result.json").read_text())
        assert result["metrics"]["prediction"]["class_name"] == expected
        assert {row["method"] for row in result["metrics"]["comparison"]} == {"saliency", "integrated_gradients"}
        overlay = np.asarray(Image.open(out / stem / "saliency" / "overlay.png"))
        assert overlay.shape[:2] == (28, 28) and overlay.std() > 5
        assert (out / stem / "integrated_gradients" / "heatmap.npy").stat().st_size > 28 * 28 * 4
        assert (out / stem / "input.png").exists()
    assert done.stdout.count("deletion AUC") == 6
    assert "100.0% finished" in done.stderr  # the progress bars reached their end
    assert '"level"' not in done.stderr  # no log lines among them


def test_lists_show_jobs_models_and_methods(live_service, tmp_path):
    models = xai("models", server=live_service.url, tmp_path=tmp_path)
    assert models.returncode == 0 and "mnist-3v8" in models.stdout and "nih-cardiomegaly" in models.stdout
    methods = json.loads(xai("methods", "--json", server=live_service.url, tmp_path=tmp_path).stdout)
    assert {"saliency", "grad_cam", "igos_pp"} <= {m["name"] for m in methods}
    with live_service.client() as client:
        job_id = client.post("/v1/explanations", data={"model_id": "mnist-3v8", "method": "saliency"},
                             files={"file": ("d.png", png(mnist_digit(8)))}).json()["job_id"]
    jobs = xai("jobs", "--limit", "500", server=live_service.url, tmp_path=tmp_path)
    assert jobs.returncode == 0 and job_id in jobs.stdout and jobs.stdout.startswith("job ")
    others = xai("jobs", server=live_service.url, key="bob", tmp_path=tmp_path)
    assert job_id not in others.stdout  # bob sees only bob's


def test_errors_exit_with_the_api_code(live_service, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    refused = xai("explain", str(bad), "--model", "mnist-3v8", "--method", "saliency", server=live_service.url,
                  tmp_path=tmp_path)
    assert refused.returncode == 3 and "error unsupported_format:" in refused.stderr
    good = tmp_path / "three.png"
    good.write_bytes(png(mnist_digit(3)))
    wrong_key = xai("explain", str(good), "--model", "mnist-3v8", "--method", "saliency", server=live_service.url,
                    key="not-a-key-0123456789", tmp_path=tmp_path)
    assert wrong_key.returncode == 3 and "error invalid_api_key:" in wrong_key.stderr
    unknown = xai("explain", str(good), "--model", "no-such-model", "--method", "saliency",
                  server=live_service.url, tmp_path=tmp_path)
    assert unknown.returncode == 3 and "error unknown_model:" in unknown.stderr
    nobody = xai("models", server=f"http://127.0.0.1:{free_port()}", tmp_path=tmp_path)
    assert nobody.returncode == 5 and "error unreachable:" in nobody.stderr


def test_explain_a_dicom_with_dicom_outputs_downloads_the_instances(live_service, tmp_path):
    from tests.test_dicom_outputs import radiograph

    data, source = radiograph()
    (tmp_path / "source.dcm").write_bytes(data)
    out = tmp_path / "out"
    done = xai("explain", str(tmp_path / "source.dcm"), "--model", "mnist-3v8", "--method", "saliency",
               "--outputs", "dicom", "--out", str(out), server=live_service.url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    report = pydicom.dcmread(out / "source" / "sr.dcm")
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.Modality == "SR"
    assert not (out / "source" / "overlay.png").exists()
