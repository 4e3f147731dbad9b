"""A finished job's PNGs are rendered by the gateway on their first download, from what the worker stored."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
from redis import Redis

from tests.test_api import client, mnist_digit, png, store, submit, work  # noqa: F401 - fixtures and helpers
from workers import pipeline
from xai.imaging import render
from xai.jobs import DISPLAY_COPY, INPUT_PNG
from xai.results import RedisResultStore


def stored_names(settings, job_id: str) -> list[str]:
    return RedisResultStore(Redis.from_url(settings.redis_url)).names(job_id)


def finished(client, settings, data: bytes, **fields) -> dict:
    job_id = submit(client, data, **fields).json()["job_id"]
    work(settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "finished", job
    return job


def test_the_pngs_are_listed_rendered_on_first_download_and_replace_the_display_copy(client, settings):
    digit = mnist_digit(3)
    job = finished(client, settings, png(digit))
    job_id, names = job["job_id"], list(job["result"]["files"])
    assert {INPUT_PNG, "heatmap.png", "overlay.png", "heatmap.npy"} <= set(names)
    assert DISPLAY_COPY in stored_names(settings, job_id)
    assert not {INPUT_PNG, "heatmap.png", "overlay.png"} & set(stored_names(settings, job_id))

    overlay = client.get(f"/v1/jobs/{job_id}/overlay.png")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    # Known answer: at 28 px the display copy is the digit itself and the heatmap needs no enlarging, so
    # each overlay pixel is the integer blend of the digit's grey with the turbo colour of the map's level.
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap_model.npy").content))
    levels = np.round(render.normalise(heatmap) * 255).astype(np.uint8)
    expected = (digit[..., None].astype(np.uint16) * (256 - render.OVERLAY_ALPHA)
                + render.TURBO_LUT[levels].astype(np.uint16) * render.OVERLAY_ALPHA + 128) >> 8
    assert np.array_equal(imagecodecs.png_decode(overlay.content), expected.astype(np.uint8))
    assert np.array_equal(imagecodecs.png_decode(client.get(f"/v1/jobs/{job_id}/input.png").content), digit)
    assert np.array_equal(imagecodecs.png_decode(client.get(f"/v1/jobs/{job_id}/heatmap.png").content),
                          render.TURBO_LUT[levels])

    kept = stored_names(settings, job_id)
    assert DISPLAY_COPY not in kept and {INPUT_PNG, "heatmap.png", "overlay.png"} <= set(kept)
    again = client.get(f"/v1/jobs/{job_id}/overlay.png")
    assert again.content == overlay.content and again.headers["etag"] == overlay.headers["etag"]


def test_a_comparison_renders_every_methods_pngs_at_once(client, settings):
    job = finished(client, settings, png(mnist_digit(8)), method="saliency,grad_cam")
    job_id = job["job_id"]
    first = client.get(f"/v1/jobs/{job_id}/grad_cam/overlay.png")
    assert first.status_code == 200
    kept = set(stored_names(settings, job_id))
    assert {f"{m}/{n}" for m in ("saliency", "grad_cam") for n in ("heatmap.png", "overlay.png")} <= kept
    saliency, grad_cam = (imagecodecs.png_decode(client.get(f"/v1/jobs/{job_id}/{m}/heatmap.png").content)
                          for m in ("saliency", "grad_cam"))
    assert saliency.shape == grad_cam.shape == (28, 28, 3) and not np.array_equal(saliency, grad_cam)


def test_a_large_colour_copy_is_kept_as_input_png_and_still_renders(client, settings, monkeypatch):
    monkeypatch.setattr(pipeline, "RAW_DISPLAY_MAX_VALUES", 0)  # what a 1024 px colour copy meets
    rgb = np.stack([mnist_digit(3), mnist_digit(3, 1), mnist_digit(3, 2)], axis=-1)
    job = finished(client, settings, png(rgb))
    job_id = job["job_id"]
    assert INPUT_PNG in stored_names(settings, job_id) and DISPLAY_COPY not in stored_names(settings, job_id)
    assert np.array_equal(imagecodecs.png_decode(client.get(f"/v1/jobs/{job_id}/input.png").content), rgb)
    overlay = imagecodecs.png_decode(client.get(f"/v1/jobs/{job_id}/overlay.png").content)
    heatmap = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/heatmap_model.npy").content))
    levels = np.round(render.normalise(heatmap) * 255).astype(np.uint8)
    assert np.array_equal(overlay, render.overlay(rgb, render.TURBO_LUT[levels]))
