"""The batch-first worker pipeline: a batch of one and of many agree; claims never strand or repeat a job."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from models.store import ModelStore
from service.ingest import job_inputs
from tests.conftest import DEMO_DIR, REPO
from tests.test_api import MODEL, _ended, _wait_for, client, mnist_digit, png, store, submit  # noqa: F401 - fixtures below  # noqa: F401 - pytest fixtures
from workers.main import WORKER_BEAT_REUSED_FOR, ExplainWorker, require_redis_version
from workers.pipeline import explain_batch, read_member
from workers.runtime import GroupProgress, WorkerContext
from xai.imaging import DecodedImage
from xai.imaging.resize import display_copy
from xai.jobs import ExplainJob, ExplainResult, InputInfo, Stage, display_key, input_keys
from xai.methods import get_method
from xai.wire import decode_display, decode_heatmap


def _job(job_id: str, method: str = "saliency", faithfulness: bool = True) -> ExplainJob:
    methods = method.split(",")
    given = {"saliency": {"abs": True}} if "saliency" in methods else {}
    return ExplainJob(job_id=job_id, submitted_at=time.time(), model_id=MODEL, model_version=1, methods=methods,
                      params={name: get_method(name).resolve_params(given.get(name, {})) for name in methods},
                      faithfulness=faithfulness, input=InputInfo(height=56, width=56, channels=1))


def _stage_inputs(connection: Redis, job: ExplainJob, digit: np.ndarray, spec) -> None:
    pixels = np.asarray(digit, dtype=np.float32) / 255
    pixels = np.kron(pixels, np.ones((2, 2), dtype=np.float32))  # 56 x 56, as the InputInfo says
    inputs = job_inputs(job.job_id, DecodedImage(pixels, "png"), spec, display_max_side=1024, keep_native=False)
    for key, blob in inputs.items():
        connection.set(key, blob)


@pytest.fixture
def context(settings) -> WorkerContext:
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    return WorkerContext(settings, Redis.from_url(settings.redis_url))


@pytest.mark.parametrize(("method", "faithfulness", "scored"), [
    ("saliency", False, False),  # the default: the heatmap, its prediction and complexity, no deletion passes
    ("saliency", True, True),
    ("saliency,grad_cam", False, True),  # a comparison ranks its methods by deletion and insertion
])
def test_faithfulness_is_scored_when_asked_for_or_compared(context, method, faithfulness, scored):
    spec = context.models.get(MODEL, 1)[0].manifest.input
    job = _job("scored", method, faithfulness)
    _stage_inputs(context.connection, job, mnist_digit(3, 2), spec)
    metrics = explain_batch(context, [job], GroupProgress([], None))["scored"].metrics
    blocks = [metrics["methods"][name] for name in job.methods] if "," in method else [metrics]
    for block in blocks:
        assert ("faithfulness" in block) is scored
        assert 0 <= block["complexity"]["area_fraction"] <= 1
    if scored:
        assert all(0 <= block["faithfulness"]["deletion_auc"] <= 1 for block in blocks)


def test_jobs_that_differ_only_in_faithfulness_are_not_batched_together():
    assert _job("a", faithfulness=True).batch_key() != _job("b", faithfulness=False).batch_key()
    assert _job("a").batch_key() == _job("b").batch_key()


def test_a_batch_of_many_gives_each_job_what_a_batch_of_one_gives_it(context):
    spec = context.models.get(MODEL, 1)[0].manifest.input
    digits = [mnist_digit(3, 2), mnist_digit(8, 2), mnist_digit(8, 3)]
    together = [_job(f"batch{i}") for i in range(3)]
    alone = [_job(f"alone{i}") for i in range(3)]
    for job, digit in zip(together + alone, digits + digits, strict=True):
        _stage_inputs(context.connection, job, digit, spec)
    batched = explain_batch(context, together, GroupProgress([], None))
    singles = {job.job_id: explain_batch(context, [job], GroupProgress([], None))[job.job_id] for job in alone}
    for index in range(3):
        many, one = batched[f"batch{index}"], singles[f"alone{index}"]
        assert isinstance(many, ExplainResult) and isinstance(one, ExplainResult)
        assert (many.timing.batch_size, one.timing.batch_size) == (3, 1)
        assert many.metrics["prediction"]["class"] == one.metrics["prediction"]["class"]
        for key in ("deletion_auc", "insertion_auc"):
            assert many.metrics["faithfulness"][key] == pytest.approx(one.metrics["faithfulness"][key], abs=1e-5)
        assert many.metrics["complexity"] == one.metrics["complexity"]
        stored = [decode_heatmap(context.results.get(job_id, "heatmap.f16")) for job_id in
                  (f"batch{index}", f"alone{index}")]
        np.testing.assert_allclose(*stored, rtol=2e-3, atol=1e-6)  # float16, and batched kernels round apart
    assert [batched[f"batch{i}"].metrics["target"]["class_name"] for i in range(3)] == ["three", "eight", "eight"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_batch_on_cuda_gives_what_the_cpu_gives(context, settings):
    """The worker's whole pipeline (predict, explain under autocast, score, store) with the model on CUDA."""
    on_cuda = WorkerContext(settings.model_copy(update={"device": "cuda"}), context.connection)
    spec = context.models.get(MODEL, 1)[0].manifest.input
    methods = "saliency,grad_cam,syce"
    digits = [mnist_digit(3, 2), mnist_digit(8, 2)]
    ends = {}
    for where, worker in (("cpu", context), ("cuda", on_cuda)):
        jobs = [_job(f"{where}{i}", methods) for i in range(2)]
        for job, digit in zip(jobs, digits, strict=True):
            _stage_inputs(context.connection, job, digit, spec)
        ends[where] = explain_batch(worker, jobs, GroupProgress([], None))
    assert next(on_cuda.models.get(MODEL, 1)[0].classifier.parameters()).device.type == "cuda"
    for index in range(2):
        cpu, cuda = ends["cpu"][f"cpu{index}"], ends["cuda"][f"cuda{index}"]
        assert isinstance(cpu, ExplainResult) and isinstance(cuda, ExplainResult)
        assert cuda.metrics["prediction"]["class"] == cpu.metrics["prediction"]["class"]
        for name in ("three", "eight"):
            assert (cuda.metrics["prediction"]["probabilities"][name]
                    == pytest.approx(cpu.metrics["prediction"]["probabilities"][name], abs=1e-3))
        for method in methods.split(","):
            on_gpu, on_cpu = cuda.metrics["methods"][method], cpu.metrics["methods"][method]
            assert on_gpu["precision"] in ("float16", "float32") and on_cpu["precision"] == "float32"
            for key in ("deletion_auc", "insertion_auc"):
                assert on_gpu["faithfulness"][key] == pytest.approx(on_cpu["faithfulness"][key], abs=0.02)
            maps = [decode_heatmap(context.results.get(job_id, f"{method}/heatmap.f16")).astype(np.float64).ravel()
                    for job_id in (f"cpu{index}", f"cuda{index}")]
            assert np.corrcoef(*maps)[0, 1] > 0.98, method  # float16 autocast on the GPU, float32 on the CPU
        assert cuda.metrics["methods"]["syce"]["syce"]["flipped"] == cpu.metrics["methods"]["syce"]["syce"]["flipped"]


def test_a_job_whose_input_expired_fails_alone_and_the_batch_goes_on(context):
    spec = context.models.get(MODEL, 1)[0].manifest.input
    jobs = [_job("kept0"), _job("gone"), _job("kept1")]
    for job in jobs:
        _stage_inputs(context.connection, job, mnist_digit(3), spec)
    context.connection.delete(*input_keys("gone"))
    ends = explain_batch(context, jobs, GroupProgress([], None))
    assert ends["gone"].code == "input_expired"
    assert isinstance(ends["kept0"], ExplainResult) and ends["kept1"].timing.batch_size == 2


def test_progress_is_per_job_and_never_goes_backwards(settings):
    connection = Redis.from_url(settings.redis_url)
    queue = Queue("fast", connection=connection, serializer=JSONSerializer)
    jobs = [queue.enqueue("workers.jobs.run_explanation", {}, meta={"progress": 0.0}) for _ in range(2)]
    progress = GroupProgress(jobs, connection, min_interval_s=0.0)
    seen = []
    for stage, span, fraction in [(Stage.EXPLAINING, (0.1, 0.8), 0.5), (Stage.EXPLAINING, (0.1, 0.5), 0.0),
                                  (Stage.SCORING, (0.8, 0.9), 0.0), (Stage.LOADING_MODEL, (0.0, 0.05), 1.0)]:
        progress.stage(stage, span)
        progress(fraction)
        seen.append([Job.fetch(j.id, connection, JSONSerializer).meta["progress"] for j in jobs])
    assert [s[0] for s in seen] == [0.45, 0.45, 0.8, 0.8] and all(a == b for a, b in seen)


def _slow_worker(settings) -> subprocess.Popen:
    env = {"XAI_REDIS_URL": settings.redis_url, "XAI_DATA_DIR": str(settings.data_dir), "XAI_DEVICE": "cpu",
           "XAI_HEARTBEAT_S": "1", "XAI_ABANDONED_AFTER_S": "3", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "slow"], cwd=REPO, env=env)


def _kill_when(client, job_ids: list[str], predicate, timeout_s: float, settings) -> None:
    """Start a worker, wait until every job satisfies ``predicate``, then kill -9 the worker."""
    worker = _slow_worker(settings)
    try:
        _wait_for(lambda: all(predicate(client.get(f"/v1/jobs/{j}").json()) for j in job_ids), timeout_s)
    finally:
        worker.kill()
        worker.wait()


def _status(client, job_id: str) -> str:
    return client.get(f"/v1/jobs/{job_id}").json()["status"]  # a poll also runs RQ's abandoned-job cleanup


@pytest.mark.parametrize(("retries_left", "queued_again", "expected"), [
    (1, False, ("finished", None)),
    (0, False, ("failed", "worker_lost")),
    (0, True, ("finished", None)),  # re-queued meanwhile (its worker's lease ran out): it runs, once
])
def test_a_job_whose_worker_died_after_taking_it_off_the_queue_is_retried_then_failed_worker_lost(
    client, settings, retries_left, queued_again, expected
):
    """A worker killed between taking a job off the queue (into RQ's intermediate queue) and starting it:
    RQ's maintenance finds the job there a minute later. It never ran, so it is re-queued with its one
    retry like any job whose worker died, and fails ``worker_lost`` only when that retry was spent; one
    that is back in the queue by then is left to run."""
    from rq.intermediate_queue import IntermediateQueue

    from tests.test_api import work

    job_id = submit(client, png(mnist_digit(3))).json()["job_id"]
    connection = Redis.from_url(settings.redis_url)
    queue = Queue("fast", connection=connection, serializer=JSONSerializer)
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    job.retries_left = retries_left
    job.save()
    intermediate = IntermediateQueue(queue.key, connection)
    assert connection.lmove(queue.key, intermediate.key) == job_id.encode()  # what a dequeuing worker does
    if queued_again:
        connection.rpush(queue.key, job_id)
    connection.set(intermediate.get_first_seen_key(job_id), time.time() - 120)  # seen there two minutes ago
    work(settings, queues=("fast",))
    ended = client.get(f"/v1/jobs/{job_id}").json()
    assert (ended["status"], (ended["error"] or {}).get("code")) == expected
    assert intermediate.get_job_ids() == []
    if expected[0] == "finished":
        assert len(Job.fetch(job_id, connection=connection, serializer=JSONSerializer).results()) == 1


def test_a_worker_killed_mid_batch_has_each_job_retried_once_then_failed_worker_lost(client, settings):
    params = '{"iterations": 500}'  # minutes of work: each kill lands mid-batch
    job_ids = [submit(client, png(mnist_digit(3, i)), method="igos_pp", params=params).json()["job_id"]
               for i in range(3)]
    started = lambda job: job["status"] == "started"  # noqa: E731
    _kill_when(client, job_ids, started, 60, settings)
    # The first loss re-queues every job of the batch (their inputs are still there) ...
    _wait_for(lambda: all(_status(client, j) == "queued" for j in job_ids), 30)
    _kill_when(client, job_ids, started, 60, settings)
    # ... the second fails them.
    for job_id in job_ids:
        job = _wait_for(lambda job_id=job_id: _ended(client, job_id), 30)
        assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"


def test_a_worker_cut_off_past_its_lease_drops_its_outcome_and_the_retry_is_the_only_result(client, settings):
    """A worker frozen (as if Redis were unreachable) past its heartbeat TTL: RQ re-queues its batch and
    another worker computes it; when the first comes back it records nothing, so each job has one result."""
    params = '{"iterations": 40}'
    job_ids = [submit(client, png(mnist_digit(3, i)), method="igos_pp", params=params).json()["job_id"]
               for i in range(2)]
    frozen = _slow_worker(settings)
    try:
        _wait_for(lambda: all(_status(client, j) == "started" for j in job_ids), 60)
        os.kill(frozen.pid, signal.SIGSTOP)
        _wait_for(lambda: all(_status(client, j) == "queued" for j in job_ids), 30)  # the lease lapsed
        retry = _slow_worker(settings)
        try:
            _wait_for(lambda: all(_status(client, j) == "finished" for j in job_ids), 300)
        finally:
            retry.kill()
            retry.wait()
        os.kill(frozen.pid, signal.SIGCONT)
        connection = Redis.from_url(settings.redis_url)
        _wait_for(lambda: not StartedJobRegistry("slow", connection=connection).get_job_ids()
                  and Worker.all(connection=connection)[0].get_state() == "idle", 300)
        for job_id in job_ids:
            job = Job.fetch(job_id, connection, JSONSerializer)
            assert job.get_status() == "finished" and len(job.results()) == 1
    finally:
        frozen.kill()
        frozen.wait()


@pytest.mark.slow
def test_ten_kills_of_a_worker_mid_job_leave_every_job_finished_once(client, settings):
    """Ten kill -9, each mid-job: every job is re-queued once and then finished by the next worker, once."""
    ends = []
    for i in range(10):
        job_id = submit(client, png(mnist_digit(8, i)), method="igos_pp", params='{"iterations": 60}').json()["job_id"]
        _kill_when(client, [job_id], lambda job: job["status"] == "started", 120, settings)
        _wait_for(lambda job_id=job_id: _status(client, job_id) == "queued", 30)
        worker = _slow_worker(settings)  # the restarted worker takes the re-queued job
        try:
            ends.append(_wait_for(lambda job_id=job_id: _ended(client, job_id), 300))
        finally:
            worker.kill()
            worker.wait()
    connection = Redis.from_url(settings.redis_url)
    computed = [len(Job.fetch(job["job_id"], connection, JSONSerializer).results()) for job in ends]
    print(f"ten kills mid-job: {sum(j['status'] == 'finished' for j in ends)} of 10 finished after their retry, "
          f"results per job {computed}")
    assert [job["status"] for job in ends] == ["finished"] * 10 and computed == [1] * 10


def test_two_workers_on_one_queue_compute_every_job_exactly_once(client, settings):
    env = {"XAI_REDIS_URL": settings.redis_url, "XAI_DATA_DIR": str(settings.data_dir), "XAI_DEVICE": "cpu",
           "XAI_BATCH_MAX": "4", "PATH": "/usr/bin:/bin"}
    workers = [subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "fast"], cwd=REPO, env=env)
               for _ in range(2)]
    connection = Redis.from_url(settings.redis_url)
    try:
        # Both must be listening before the jobs arrive, or the first to start may drain the queue alone.
        _wait_for(lambda: len(Worker.all(connection=connection)) == 2, timeout_s=120)
        job_ids = [submit(client, png(mnist_digit(3 if i % 2 else 8, i))).json()["job_id"] for i in range(24)]
        _wait_for(lambda: all(_ended(client, job_id) for job_id in job_ids), timeout_s=120)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)
    computed_by = set()
    for job_id in job_ids:
        job = Job.fetch(job_id, connection, JSONSerializer)
        assert job.get_status() == "finished"
        results = job.results()
        assert len(results) == 1, f"{job_id} was computed {len(results)} times"
        computed_by.add(results[0].worker_name)
    assert len(computed_by) == 2  # both workers took part


def test_a_batchs_inputs_stay_until_each_jobs_end_is_recorded(client, settings, monkeypatch):
    """A worker killed after computing a batch but before recording its ends must leave the inputs to the
    retries (which would otherwise fail with input_expired): each job's input is deleted only after RQ
    (the leader) or its claim (a peer) has recorded the end."""
    from rq.worker import BaseWorker

    from tests.test_api import work
    from workers import claim

    connection = Redis.from_url(settings.redis_url)
    job_ids = [submit(client, png(mnist_digit(3, i))).json()["job_id"] for i in range(3)]
    present_at_end: dict[str, bool] = {}

    def observed(original, job_of):
        def record(*args, **kwargs):
            job_id = job_of(args, kwargs)
            present_at_end[job_id] = all(connection.exists(key) for key in input_keys(job_id)[:2])
            return original(*args, **kwargs)
        return record

    monkeypatch.setattr(claim, "finish", observed(claim.finish, lambda args, kwargs: args[0].job.id))
    monkeypatch.setattr(BaseWorker, "handle_job_success",  # what ExplainWorker's calls to record the leader's end
                        observed(BaseWorker.handle_job_success, lambda args, kwargs: args[1].id))
    work(settings)
    assert all(_status(client, job_id) == "finished" for job_id in job_ids)
    assert present_at_end == dict.fromkeys(job_ids, True)  # a leader and two peers, each with its input
    assert not [key for job_id in job_ids for key in input_keys(job_id) if connection.exists(key)]


@pytest.mark.parametrize(("side", "channels", "worker_cap", "kept"), [
    (56, 1, 1024, ("display.u8", (56, 56))),  # the input's own bytes, copied inside Redis
    (100, 1, 64, ("display.u8", (64, 64))),  # staged under a larger cap than this worker's: shrunk to its own
    (600, 3, 1024, ("input.png", (600, 600, 3))),  # a colour copy over 1 Mi values is kept as its PNG
])
def test_the_display_copy_is_kept_as_the_input_holds_it_or_as_this_worker_must_draw_it(
    settings, side, channels, worker_cap, kept
):
    ModelStore(settings.model_store_dir).register_directory(DEMO_DIR / MODEL)
    context = WorkerContext(settings.model_copy(update={"display_max_side": worker_cap}),
                            Redis.from_url(settings.redis_url))
    spec = context.models.get(MODEL, 1)[0].manifest.input
    job = _job("display")
    pixels = np.random.default_rng(side).random((side, side) if channels == 1 else (side, side, channels), np.float32)
    inputs = job_inputs(job.job_id, DecodedImage(pixels, "png"), spec, display_max_side=1024, keep_native=False)
    for key, blob in inputs.items():
        context.connection.set(key, blob)
    result = explain_batch(context, [job], GroupProgress([], None))["display"]
    assert isinstance(result, ExplainResult) and "input.png" in result.files
    name, shape = kept
    stored = context.results.get("display", name)
    display = decode_display(stored) if name == "display.u8" else np.asarray(Image.open(io.BytesIO(stored)))
    assert display.shape == shape
    staged = decode_display(inputs[display_key("display")])
    if shape == staged.shape:
        np.testing.assert_array_equal(display, staged)
    else:
        np.testing.assert_array_equal(display, display_copy(staged, *shape))


def test_the_worker_skips_a_beat_or_state_it_wrote_just_before_but_never_a_pipelined_one(settings):
    connection = Redis.from_url(settings.redis_url)
    worker = ExplainWorker([Queue("fast", connection=connection, serializer=JSONSerializer)], settings=settings,
                           connection=connection, serializer=JSONSerializer)
    worker.heartbeat()
    first = connection.hget(worker.key, "last_heartbeat")
    worker.heartbeat()  # back to back, as RQ beats before and after a dequeue: nothing is written
    assert connection.hget(worker.key, "last_heartbeat") == first
    worker.last_heartbeat -= 2 * WORKER_BEAT_REUSED_FOR
    worker.heartbeat()
    assert connection.hget(worker.key, "last_heartbeat") != first
    worker.set_state("idle")
    connection.hset(worker.key, "state", "marked")
    worker.set_state("idle")  # already written by this worker
    assert connection.hget(worker.key, "state") == b"marked"
    with connection.pipeline() as pipe:
        worker.set_state("idle", pipeline=pipe)
        worker.heartbeat(pipeline=pipe)
        pipe.execute()
    assert connection.hget(worker.key, "state") == b"idle"
    worker.set_state("busy")
    assert connection.hget(worker.key, "state") == b"busy"


@pytest.mark.parametrize(("seconds_left", "kept_at_least"), [(5, 90), (1000, 990)])
def test_a_display_copy_about_to_expire_is_kept_for_the_longest_job_its_worker_may_run(
    context, seconds_left, kept_at_least
):
    spec = context.models.get(MODEL, 1)[0].manifest.input
    job = _job("held")
    _stage_inputs(context.connection, job, mnist_digit(3, 2), spec)
    context.connection.expire(display_key("held"), seconds_left)
    read_member(context.connection, job, 1024, hold_s=100)
    assert kept_at_least <= context.connection.ttl(display_key("held")) <= max(seconds_left, 100)


@pytest.mark.parametrize(("version", "starts"), [((6, 0, 16), False), ((6, 2, 0), True), ((7, 4, 1), True)])
def test_a_worker_refuses_a_redis_without_copy(version, starts):
    if starts:
        require_redis_version(version)
    else:
        with pytest.raises(SystemExit, match="6.0.16 is older than 6.2"):
            require_redis_version(version)
