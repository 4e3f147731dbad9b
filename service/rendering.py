"""A finished job's PNGs, rendered by the gateway on their first download. Torch-free.

The worker stores each heatmap at its explainer's resolution and the input's display copy
(``xai.jobs.DISPLAY_COPY``), not the PNGs: at the 1024 px display cap, encoding input.png and an
overlay takes about 50 ms, most of a fast job's time, and a PACS caller that files DICOM results
or reads the NPY never looks at them. The first request for any of a job's PNGs renders all of them
(input.png, and each method's heatmap.png and overlay.png, with ``xai.imaging.render``, the code the
worker's DICOM Secondary Capture uses), stores them for the rest of the job's TTL and drops the
display copy, whose pixels input.png now holds losslessly. A job therefore holds at most its PNGs,
never the PNGs and the copy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import imagecodecs
from rq.job import Job

from service.deps import Gateway
from xai.errors import NotFound
from xai.imaging import render
from xai.jobs import DISPLAY_COPY, INPUT_PNG, RAW_HEATMAP, RENDERED_PER_HEATMAP
from xai.wire import decode_display, decode_heatmap


def is_rendered(name: str) -> bool:
    """Whether ``name`` is one of the PNGs this module renders (as opposed to a file the worker stored)."""
    return name == INPUT_PNG or name.rpartition("/")[2] in RENDERED_PER_HEATMAP


def rendered_file(gateway: Gateway, job: Job, listed: list[str], name: str) -> bytes:
    """The PNG ``name`` of a finished job whose file list is ``listed``, rendering the job's PNGs if none is stored."""
    try:
        return gateway.results.get(job.id, name)
    except NotFound:
        pass
    with _one_render_per_job(job.id):
        try:  # another request may have rendered them while this one waited
            return gateway.results.get(job.id, name)
        except NotFound:
            pass
        files = _render(gateway, job.id, listed)
        gateway.results.put({job.id: files}, _remaining_ttl_s(gateway, job))
        gateway.results.discard(job.id, DISPLAY_COPY)
    return files.get(name) or gateway.results.get(job.id, name)


def _render(gateway: Gateway, job_id: str, listed: list[str]) -> dict[str, bytes]:
    try:
        display = decode_display(gateway.results.get(job_id, DISPLAY_COPY))
        files = {INPUT_PNG: render.png_bytes(display)}
    except NotFound:  # the worker kept a large colour copy as input.png, or another gateway rendered it
        display = imagecodecs.png_decode(gateway.results.get(job_id, INPUT_PNG))
        files = {}
    for prefix in sorted({n.rpartition("/")[0] for n in listed if n.rpartition("/")[2] == "overlay.png"}):
        path = f"{prefix}/" if prefix else ""
        heatmap = decode_heatmap(gateway.results.get(job_id, path + RAW_HEATMAP))
        files |= {path + n: blob for n, blob in render.heatmap_images(heatmap, display).items()}
    return files


def _remaining_ttl_s(gateway: Gateway, job: Job) -> int:
    """What is left of the job's result TTL (counted, like the worker's, from its end)."""
    ended = job.ended_at or datetime.now(UTC)
    ended = ended if ended.tzinfo else ended.replace(tzinfo=UTC)
    return max(1, round(gateway.settings.result_ttl_s - (datetime.now(UTC) - ended).total_seconds()))


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _one_render_per_job(job_id: str) -> Iterator[None]:
    """Serialise this process's renders of one job: a viewer asks for its three PNGs at once. (Two
    gateway processes may still render the same job twice; their files are identical.)"""
    with _locks_guard:
        lock = _locks.setdefault(job_id, threading.Lock())
    try:
        with lock:
            yield
    finally:
        with _locks_guard:
            if not lock.locked():
                _locks.pop(job_id, None)
