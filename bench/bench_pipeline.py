"""The service end to end as a client sees it: input-size cost, method cost, batching, overhead, scale-out,
and every method of the catalogue.

Starts the real thing in a scratch folder: an embedded Redis, the gateway (``xai gateway``, uvicorn)
and worker processes (``xai worker``), with the demo models registered; talks to it over HTTP like a
client (POST, then GET the job with ``?wait=`` until it ends; the overhead part also polls), through
the standard library's http.client (the overhead part also through httpx). Every figure is a ratio
measured in this one run.
Run by hand (about 5 minutes on 2 CPU cores):

    .venv/bin/python bench/bench_pipeline.py                 # all five parts
    .venv/bin/python bench/bench_pipeline.py --parts batching,overhead
    .venv/bin/python bench/bench_pipeline.py --image my_1024px_chest_xray.png
    .venv/bin/python bench/bench_pipeline.py --device cuda --parts methods   # workers on the GPU

The chest X-ray is a real NIH image (``--image``, default examples/00000211_019.png, 256 px) resized
to each size; since an enlarged image is smoother than a real one of that size (so it decodes and
compresses more easily), detector-like noise (std 1.5 grey levels) is added after resizing. The
input-size part sends it as an 8-bit PNG and as the DICOM a PACS bridge sends: 12-bit samples,
uncompressed (Explicit VR Little Endian), with a window.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.embedded import EmbeddedRedis
from models import DEMO_DIR
from models.store import ModelStore

TERMINAL = {"finished", "failed", "canceled"}
LONG_POLL_S = 30
POLL_S = 0.005


class Service:
    """Redis, gateway and ``workers`` worker processes on ``queues``, in a scratch folder; stop() ends them."""

    def __init__(self, scratch: Path, *, workers: int = 1, queues: str = "fast,slow", device: str = "cpu",
                 env: dict[str, str] | None = None):
        self.redis_server = EmbeddedRedis(scratch / "redis", appendonly=False).start()
        self.redis = Redis.from_url(self.redis_server.url)
        port = _free_port()
        self.env = os.environ | {"XAI_REDIS_URL": self.redis_server.url, "XAI_DATA_DIR": str(scratch),
                                 "XAI_DEVICE": device, "XAI_LOG_LEVEL": "WARNING", "XAI_PORT": str(port),
                                 **(env or {})}
        store = ModelStore(scratch / "models")
        for folder in sorted(DEMO_DIR.glob("*/manifest.json")):
            store.register_directory(folder.parent)
        command = [sys.executable, "-m", "app.cli"]
        self.processes = [subprocess.Popen([*command, "gateway"], env=self.env, cwd=REPO)]
        self.processes += [subprocess.Popen([*command, "worker", "--queues", queues], env=self.env, cwd=REPO)
                           for _ in range(workers)]
        self.url = f"http://127.0.0.1:{port}"
        try:
            _wait_until(lambda: self._running() and _answers(self.url + "/healthz"), 60)
            _wait_until(lambda: self._running() and len(self.redis.smembers("rq:workers")) >= workers, 120)
        except RuntimeError:
            self.stop()
            raise

    def _running(self) -> bool:
        """True while every process runs; a gateway or worker that exited at start (say a missing package)
        ends the wait at once, with its exit status, instead of after the timeout."""
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(process.args[-3:])} exited with status {process.returncode}")
        return True

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)
        self.redis_server.stop()


class Client:
    """One caller over one kept-alive connection: submits a file and waits for its job to end, by long
    polling (``?wait=``, the way the README advises) or, with ``poll_s``, by polling every ``poll_s``
    seconds (a client that does not wait).

    It speaks HTTP through the standard library's ``http.client``, the lightest client at hand: on this
    2-core machine the bench's clients share the CPU with the service, and the figures should be the
    service's, not the client library's. ``HttpxClient`` is the same caller through httpx."""

    def __init__(self, url: str, poll_s: float | None = None):
        address = urlsplit(url)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        self.poll_s = poll_s

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> bytes:
        """The response's body; an error status raises. A kept-alive connection the server has closed
        meanwhile (uvicorn closes idle ones after 5 s) is opened again, once."""
        try:
            self.connection.request(method, path, body, headers or {})
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.connection.close()
            self.connection.request(method, path, body, headers or {})
            response = self.connection.getresponse()
        content = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path} answered {response.status}: {content[:300]!r}")
        return content

    def submit(self, data: bytes, model_id: str, method: str) -> str:
        body, content_type = multipart_form({"model_id": model_id, "method": method}, data)
        answer = self.request("POST", "/v1/explanations", body, {"Content-Type": content_type})
        return json.loads(answer)["job_id"]

    def wait(self, job_id: str) -> dict:
        path = f"/v1/jobs/{job_id}" if self.poll_s else f"/v1/jobs/{job_id}?wait={LONG_POLL_S}"
        while True:
            job = json.loads(self.request("GET", path))
            if job["status"] in TERMINAL:
                return job
            if self.poll_s:
                time.sleep(self.poll_s)

    def explain(self, data: bytes, model_id: str, method: str) -> tuple[float, dict]:
        """Seconds from POST to the poll that sees the job finished, and the job."""
        started = time.perf_counter()
        job = self.wait(self.submit(data, model_id, method))
        if job["status"] != "finished":
            raise RuntimeError(f"job ended {job['status']}: {job['error']}")
        return time.perf_counter() - started, job


class HttpxClient(Client):
    """The same caller through httpx, a client library many callers use. It spends several times the CPU
    of ``http.client`` on each request (about 1.8 against 0.5 ms per job on one thread here), CPU that on
    this machine the service does not get; the overhead part reports both."""

    def __init__(self, url: str, poll_s: float | None = None):
        self.http = httpx.Client(base_url=url, timeout=120)
        self.poll_s = poll_s

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> bytes:
        return self.http.request(method, path, content=body, headers=headers).raise_for_status().content


def multipart_form(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body of ``fields`` and ``file`` (as image.png), and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n".encode(), file, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def chest_xray(source: Path, size: int) -> np.ndarray:
    """The X-ray at ``size`` px with detector-like noise, as float grey levels of 0-255."""
    grey = Image.open(source).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) + np.random.default_rng(size).normal(0, 1.5, (size, size))


def chest_xray_png(source: Path, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(chest_xray(source, size) + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def chest_xray_dicom(source: Path, size: int) -> bytes:
    """The same X-ray as 12-bit DICOM samples, uncompressed, windowed over their whole range."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{size}"
    ds.Modality = "DX"
    samples = np.clip(chest_xray(source, size) * 16 + 8, 0, 4095).astype(np.uint16)
    ds.set_pixel_data(samples, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def mnist_png(index: int) -> bytes:
    import gzip

    from models import SHARED_DATA

    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    buffer = io.BytesIO()
    Image.fromarray(images[index % len(images)]).save(buffer, format="PNG")
    return buffer.getvalue()


def job_bytes(redis: Redis, job_id: str) -> int:
    """Bytes Redis holds for one ended job: every key naming it (job hash, results, files, indexes)."""
    return sum(redis.memory_usage(key) or 0 for key in redis.scan_iter(f"*{job_id}*"))


def input_size(service: Service, image: Path, repeats: int) -> None:
    """POST to finished, and on to overlay.png in hand (the gateway renders the PNGs on that first download);
    Redis bytes after the download, when a job holds the most. Sizes and formats take turns, round by round,
    so a slow spell of the machine falls on all of them."""
    client = Client(service.url)
    sizes = (64, 1024, 3000)
    uploads = {("PNG", size): chest_xray_png(image, size) for size in sizes}
    uploads |= {("DICOM", size): chest_xray_dicom(image, size) for size in sizes}
    client.explain(uploads["PNG", 64], "nih-cardiomegaly", "syce")  # warm-up: model and generators resident
    runs: dict[tuple[str, int], list] = {upload: [] for upload in uploads}
    for _ in range(repeats):
        for upload, data in uploads.items():
            started = time.perf_counter()
            seconds, job = client.explain(data, "nih-cardiomegaly", "syce")
            client.request("GET", f"/v1/jobs/{job['job_id']}/overlay.png")
            runs[upload].append((seconds, time.perf_counter() - started, job))
    print("\n## Input size: SyCE on nih-cardiomegaly, one client, sequential")
    print("format  size px  upload KiB  median s finished  + overlay.png  Redis KiB per job (max)")
    latency, with_overlay = {}, {}
    for upload, upload_runs in runs.items():
        latency[upload] = statistics.median(finished for finished, _, _ in upload_runs)
        with_overlay[upload] = statistics.median(downloaded for _, downloaded, _ in upload_runs)
        kept = max(job_bytes(service.redis, job["job_id"]) for _, _, job in upload_runs)
        print(f"{upload[0]:6s}  {upload[1]:7d}  {len(uploads[upload]) / 1024:10.0f}  {latency[upload]:17.3f}"
              f"  {with_overlay[upload]:12.3f}  {kept / 1024:8.0f}")
    for kind in ("PNG", "DICOM"):
        print(f"{kind}: latency ratio 1024/64 = {latency[kind, 1024] / latency[kind, 64]:.2f} (target <= 1.5); "
              f"3000/1024 = {latency[kind, 3000] / latency[kind, 1024]:.2f} (target <= 1.3); with overlay.png "
              f"{with_overlay[kind, 1024] / with_overlay[kind, 64]:.2f} and "
              f"{with_overlay[kind, 3000] / with_overlay[kind, 1024]:.2f}")


def method_cost(service: Service, image: Path, repeats: int) -> None:
    client = Client(service.url)
    data = chest_xray_png(image, 1024)
    figures = {}
    for method in ("syce", "integrated_gradients"):
        client.explain(data, "nih-cardiomegaly", method)  # warm-up
        runs = [client.explain(data, "nih-cardiomegaly", method) for _ in range(repeats)]
        figures[method] = (statistics.median(s for s, _ in runs),
                           statistics.median(j["result"]["timing"]["explain_ms"] for _, j in runs) / 1000,
                           statistics.median(j["result"]["timing"]["score_ms"] for _, j in runs) / 1000)
    (e2e_syce, compute_syce, score_syce), (e2e_ig, compute_ig, score_ig) = (figures["syce"],
                                                                            figures["integrated_gradients"])
    compute_ratio, e2e_ratio = compute_ig / compute_syce, e2e_ig / e2e_syce
    print("\n## Method cost: IG (50 steps) vs SyCE on a 1024 px chest X-ray, nih-cardiomegaly")
    print(f"end to end s: SyCE {e2e_syce:.3f}, IG {e2e_ig:.3f}; compute s: SyCE {compute_syce:.3f}, IG {compute_ig:.3f}")
    print(f"IG/SyCE end to end {e2e_ratio:.2f}x, compute {compute_ratio:.2f}x: end to end shows "
          f"{e2e_ratio / compute_ratio:.0%} of the compute ratio (target >= 70%)")
    print(f"score stage (complexity; deletion/insertion only with faithfulness=true): SyCE {score_syce:.3f} s, "
          f"IG {score_ig:.3f} s")


def every_method(service: Service, image: Path, repeats: int) -> None:
    """Each method nih-cardiomegaly offers, at its defaults, on a 1024 px chest X-ray: POST to finished and
    the worker's explain stage, so that the share of a job that is the method itself shows."""
    client = Client(service.url)
    data = chest_xray_png(image, 1024)
    methods = json.loads(client.request("GET", "/v1/models/nih-cardiomegaly"))["methods"]
    print(f"\n## Every method on a 1024 px chest X-ray, nih-cardiomegaly, workers on {service.env['XAI_DEVICE']}")
    print("method                    median s finished  explain s  explain share  precision")
    for method in methods:
        client.explain(data, "nih-cardiomegaly", method)  # warm-up: kernels, caches, artifacts loaded
        runs = [client.explain(data, "nih-cardiomegaly", method) for _ in range(repeats)]
        finished = statistics.median(seconds for seconds, _ in runs)
        explain = statistics.median(job["result"]["timing"]["explain_ms"] for _, job in runs) / 1000
        precision = runs[-1][1]["result"]["metrics"].get("precision", "-")
        print(f"{method:24s}  {finished:17.3f}  {explain:9.3f}  {explain / finished:13.0%}  {precision}")


def batching(service: Service, count: int) -> None:
    pngs = [mnist_png(i) for i in range(count)]
    client = Client(service.url)
    client.explain(pngs[0], "mnist-3v8", "syce")  # warm-up
    started = time.perf_counter()
    for data in pngs:
        client.explain(data, "mnist-3v8", "syce")
    one_by_one = time.perf_counter() - started
    clients = [Client(service.url) for _ in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        jobs = list(pool.map(lambda pair: pair[0].explain(pair[1], "mnist-3v8", "syce"), zip(clients, pngs)))
    concurrent = time.perf_counter() - started
    sizes = [job["result"]["timing"]["batch_size"] for _, job in jobs]
    print(f"\n## Batching: {count} SyCE requests on mnist-3v8")
    print(f"one after another {one_by_one:.2f} s; all at once {concurrent:.2f} s "
          f"(batch sizes: mean {statistics.mean(sizes):.1f}, max {max(sizes)}); "
          f"speed-up {one_by_one / concurrent:.2f}x (target >= 3x)")


def overhead(service: Service, clients: int, per_client: int) -> None:
    data = mnist_png(0)
    Client(service.url).explain(data, "mnist-3v8", "saliency")  # warm-up
    ours = _rate(clients, per_client, lambda: _service_round_trip(service.url, data, None, Client))
    through_httpx = _rate(clients, per_client, lambda: _service_round_trip(service.url, data, None, HttpxClient))
    polling = _rate(clients, per_client, lambda: _service_round_trip(service.url, data, POLL_S, Client))
    raw = _raw_rq_rate(service, clients, per_client)
    print(f"\n## Service overhead: cheapest job (saliency, mnist-3v8, 28 px) from {clients} clients")
    print(f"ours {ours:.1f} jobs/s (clients long-poll, http.client); raw RQ no-op round trip {raw:.1f} jobs/s on "
          f"the same Redis (its clients poll every {POLL_S * 1000:.0f} ms); ours is {ours / raw:.0%} of raw "
          "(target >= 50%)")
    print(f"ours with httpx clients instead: {through_httpx:.1f} jobs/s, {through_httpx / raw:.0%}; with clients "
          f"polling every {POLL_S * 1000:.0f} ms: {polling:.1f} jobs/s, {polling / raw:.0%}")


def scale_out(scratch: Path, jobs: int, clients: int) -> None:
    service = Service(scratch / "scale-out", workers=2, queues="fast")
    try:
        data = [mnist_png(i) for i in range(jobs)]
        submitted: list[str] = []
        lock = threading.Lock()

        def send(index: int) -> None:
            job_id = _thread_client(service.url, None, Client).submit(data[index], "mnist-3v8", "saliency")
            with lock:
                submitted.append(job_id)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, range(jobs)))
        ended = _wait_all_ended(service.redis, submitted, 600)
        seconds = time.perf_counter() - started
        records = [Job.fetch(job_id, service.redis, JSONSerializer) for job_id in submitted]
        finished = sum(job.get_status() == "finished" for job in records)
        twice = sum(len(job.results()) > 1 for job in records)
        workers = {job.results()[0].worker_name for job in records if job.results()}
        print(f"\n## Scale-out: two fast workers, {jobs} jobs from {clients} clients ({seconds:.1f} s)")
        print(f"submitted {len(submitted)}, finished {finished}, ended otherwise {ended - finished}, "
              f"lost {len(submitted) - ended}, computed twice {twice}; workers that computed: {len(workers)}")
    finally:
        service.stop()


def _service_round_trip(url: str, data: bytes, poll_s: float | None, kind: type[Client]) -> None:
    _thread_client(url, poll_s, kind).explain(data, "mnist-3v8", "saliency")


_local = threading.local()


def _thread_client(url: str, poll_s: float | None, kind: type[Client]) -> Client:
    """One client per thread, kind and way of waiting, kept across its round trips (a connection kept alive)."""
    clients = _local.__dict__.setdefault("clients", {})
    if (url, poll_s, kind) not in clients:
        clients[url, poll_s, kind] = kind(url, poll_s)
    return clients[url, poll_s, kind]


def _raw_rq_rate(service: Service, clients: int, per_client: int) -> float:
    """No-op jobs (os.getpid) through RQ alone: enqueue, a plain SimpleWorker runs it, the client polls."""
    worker = subprocess.Popen(
        [sys.executable, "-c", ("import sys; from redis import Redis; from rq import Queue, SimpleWorker; "
         "from rq.serializers import JSONSerializer; r = Redis.from_url(sys.argv[1]); "
         "SimpleWorker([Queue('noop', connection=r, serializer=JSONSerializer)], connection=r, "
         "serializer=JSONSerializer).work(logging_level='WARNING')"), service.redis_server.url], env=service.env)
    queue = Queue("noop", connection=service.redis, serializer=JSONSerializer)

    def round_trip() -> None:
        job = queue.enqueue("os.getpid", result_ttl=600)
        while job.get_status(refresh=True) != "finished":
            time.sleep(POLL_S)

    try:
        round_trip()  # warm-up
        return _rate(clients, per_client, round_trip)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def _rate(clients: int, per_client: int, round_trip: Callable[[], None]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: [round_trip() for _ in range(per_client)], range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def _wait_all_ended(redis: Redis, job_ids: list[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = [job.get_status() if job else None for job in Job.fetch_many(job_ids, redis, JSONSerializer)]
        ended = sum(status in TERMINAL for status in statuses)
        if ended == len(job_ids) or time.monotonic() > deadline:
            return ended
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not come up in time")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="input-size,method-cost,batching,overhead,scale-out")
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "00000211_019.png")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--scale-jobs", type=int, default=1000)
    parser.add_argument("--scale-clients", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="the workers' device (XAI_DEVICE): cpu, cuda, cuda:N")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"bench_pipeline on {os.cpu_count()} CPU core(s); image {args.image}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if parts & {"input-size", "method-cost", "overhead", "methods"}:
            service = Service(scratch / "single", workers=1, device=args.device)
            try:
                if "input-size" in parts:
                    input_size(service, args.image, args.repeats)
                if "method-cost" in parts:
                    method_cost(service, args.image, args.repeats)
                if "overhead" in parts:
                    overhead(service, args.clients, args.per_client)
                if "methods" in parts:
                    every_method(service, args.image, args.repeats)
            finally:
                service.stop()
        if "batching" in parts:
            # A worker that finds a batch short waits up to 20 ms for more: concurrent clients' requests
            # arrive over a few milliseconds. (It would only add latency to the single-client parts.)
            service = Service(scratch / "batching", workers=1, device=args.device,
                              env={"XAI_BATCH_MAX": str(args.batch), "XAI_BATCH_WAIT_MS": "20"})
            try:
                batching(service, args.batch)
            finally:
                service.stop()
        if "scale-out" in parts:
            scale_out(scratch, args.scale_jobs, args.scale_clients)


if __name__ == "__main__":
    main()
