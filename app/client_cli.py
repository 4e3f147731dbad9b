"""``xai explain | jobs | models | methods``: a command-line client of a running service, over HTTP only.

It reads the answers into the gateway's own response models (``service.schemas``), follows each job's
event stream for its progress bar, and exits with a code that says what kind of error stopped it:

    0 everything finished      3 the service refused a request (4xx: bad file, key, parameters)
    4 a job failed or was canceled      5 the service is unreachable or unavailable (5xx, 503)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from service.schemas import Accepted, ErrorResponse, JobList, JobStatus, MethodList, ModelList

EXIT_REFUSED, EXIT_JOB_FAILED, EXIT_UNAVAILABLE = 3, 4, 5
DEFAULT_SERVER = "http://127.0.0.1:8000"
BAR_WIDTH = 30
ENDED = ("finished", "failed", "canceled")


class ClientError(Exception):
    """An error the command reports as ``error <code>: <message>`` and exits with ``exit_code``."""

    def __init__(self, code: str, message: str, exit_code: int):
        super().__init__(f"error {code}: {message}")
        self.exit_code = exit_code


def add_client_commands(commands) -> None:
    explain = commands.add_parser("explain", help="explain image files (or folders of them) with a running service")
    explain.add_argument("files", nargs="+", type=Path, help="PNG, JPEG, TIFF or DICOM files, or folders of them")
    explain.add_argument("--model", required=True, help="registered model id")
    explain.add_argument("--method", required=True, help="a method, or several comma-separated to compare them")
    explain.add_argument("--params", default=None, help="JSON object of method parameters")
    explain.add_argument("--target", default=None, help="class index or name (default: the predicted class)")
    explain.add_argument("--outputs", default=None, help="png (default), dicom or png,dicom: dicom adds a Secondary "
                         "Capture, Parametric Map and Structured Report filed in the source's study (DICOM inputs)")
    explain.add_argument("--destination", default=None, help="a configured DICOMweb destination the DICOM results "
                         "are sent to")
    explain.add_argument("--faithfulness", action="store_true", help="also score each heatmap by deletion and "
                         "insertion AUC (always on for a comparison of several methods)")
    explain.add_argument("--out", type=Path, default=Path("xai-results"), help="folder for the result files")
    _connection_arguments(explain, listing=False)
    explain.set_defaults(run=_client(_explain), client=True)

    jobs = commands.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--status", choices=("queued", "started", "finished", "failed", "canceled"))
    jobs.add_argument("--model", default=None, help="only jobs of this model")
    jobs.add_argument("--limit", type=int, default=20, help="most jobs to list (pages are followed)")
    _connection_arguments(jobs)
    jobs.set_defaults(run=_client(_jobs), client=True)

    for name, run, what in (("models", _models, "registered models"), ("methods", _methods, "explanation methods")):
        listing = commands.add_parser(name, help=f"list the {what}")
        _connection_arguments(listing)
        listing.set_defaults(run=_client(run), client=True)


def _connection_arguments(parser, listing: bool = True) -> None:
    parser.add_argument("--server", default=os.environ.get("XAI_SERVER", DEFAULT_SERVER),
                        help=f"the gateway's URL (default XAI_SERVER, else {DEFAULT_SERVER})")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="file holding the API key (default: XAI_API_KEY, else no key)")
    if listing:
        parser.add_argument("--json", action="store_true", help="print the answers as JSON instead of a table")


def _client(command):
    """``command(http, args)`` as an ``xai`` sub-command: API and connection errors become a message and an
    exit code; the service's own settings play no part."""

    def run(args, _settings) -> int:
        try:
            with _session(args) as http:
                return command(http, args)
        except ClientError as error:
            print(error, file=sys.stderr)
            return error.exit_code

    return run


def _session(args) -> httpx.Client:
    key = args.key_file.read_text().strip() if args.key_file else os.environ.get("XAI_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=args.server.rstrip("/"), headers=headers, timeout=60)


def _call(http: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    """One request; an error answer or no answer raises ClientError with the API's own code."""
    try:
        response = http.request(method, url, **kwargs)
    except httpx.HTTPError as error:
        raise ClientError("unreachable", f"no answer from {http.base_url}: {error}", EXIT_UNAVAILABLE) from None
    if response.is_success:
        return response
    try:
        detail = ErrorResponse.model_validate(response.json()).error
        code, message = detail.code, detail.message
    except (ValueError, ValidationError):
        code, message = "http_error", f"HTTP {response.status_code} from {url}"
    raise ClientError(code, message, EXIT_UNAVAILABLE if response.status_code >= 500 else EXIT_REFUSED)


def _explain(http: httpx.Client, args) -> int:
    files = list(_image_files(args.files))
    if not files:
        raise ClientError("no_files", "no files found in " + ", ".join(map(str, args.files)), EXIT_REFUSED)
    submitted = [(path, _submit(http, path, args)) for path in files]  # all queued first: workers batch them
    worst = 0
    for path, accepted in submitted:
        job = _follow(http, accepted.job_id, label=path.name)
        if job.status != "finished":
            error = job.error
            print(f"{path}: {job.status}: error {error.code}: {error.message}" if error else f"{path}: {job.status}",
                  file=sys.stderr)
            worst = max(worst, EXIT_JOB_FAILED)
            continue
        folder = args.out / path.stem
        _download(http, job, folder)
        print(_summary(path, job, folder))
    return worst


def _image_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise ClientError("no_such_file", f"{path} is not a file or folder", EXIT_REFUSED)


def _submit(http: httpx.Client, path: Path, args) -> Accepted:
    form = {"model_id": args.model, "method": args.method}
    if args.params:
        form["params"] = args.params
    if args.target is not None:
        form["target"] = args.target
    form |= {field: getattr(args, field) for field in ("outputs", "destination") if getattr(args, field)}
    if args.faithfulness:
        form["faithfulness"] = "true"
    with path.open("rb") as upload:
        response = _call(http, "POST", "/v1/explanations", data=form, files={"file": (path.name, upload)})
    return Accepted.model_validate(response.json())


def _follow(http: httpx.Client, job_id: str, label: str) -> JobStatus:
    """Draw the job's progress bar from its event stream until the final status arrives."""
    try:
        with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=None)) as stream:
            if not stream.is_success:
                stream.read()
                _call(http, "GET", f"/v1/jobs/{job_id}")  # the same request unstreamed: its error, typed
            for event, data in read_events(stream):
                if event == "progress" and data["status"] not in ENDED:  # the status event draws the last line
                    _draw(label, data["progress"], data["stage"])
                elif event == "status":
                    job = JobStatus.model_validate(data)
                    _draw(label, job.progress, job.stage, final=True)
                    return job
                elif event == "error":
                    raise ClientError(data["error"]["code"], data["error"]["message"], EXIT_REFUSED)
    except httpx.HTTPError as error:
        raise ClientError("unreachable", f"the event stream of job {job_id} broke: {error}", EXIT_UNAVAILABLE) from None
    raise ClientError("stream_ended", f"the event stream of job {job_id} ended without its status", EXIT_UNAVAILABLE)


def read_events(stream: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream response as they arrive; ping comments skipped."""
    name, data = "message", []
    for line in stream.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())


def _draw(label: str, progress: float, stage: str, final: bool = False) -> None:
    filled = round(progress * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    sys.stderr.write(f"\r{label[:28]:<28} [{bar}] {progress * 100:5.1f}% {stage:<14}" + ("\n" if final else ""))
    sys.stderr.flush()


def _download(http: httpx.Client, job: JobStatus, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, url in job.result.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_call(http, "GET", url).content)
    metrics = job.result.model_dump(mode="json", exclude_unset=True, exclude={"files"})
    (folder / "result.json").write_text(json.dumps({"job_id": job.job_id} | metrics, indent=1))


def _summary(path: Path, job: JobStatus, folder: Path) -> str:
    metrics = job.result.metrics
    prediction = metrics.prediction
    rows = metrics.comparison or [{"method": metrics.method["name"], "complexity": metrics.complexity["area_fraction"]}
                                  | _faithfulness_columns(metrics.faithfulness)]
    lines = [f"{path}: {prediction['class_name']} ({prediction['score']:.3f}), explained for "
             f"{metrics.target['class_name']}; {job.result.timing.total_ms:.0f} ms; files in {folder}"]
    for row in rows:
        scored = (f"deletion AUC {row['deletion_auc']:.3f}  insertion AUC {row['insertion_auc']:.3f}  "
                  if "deletion_auc" in row else "")
        lines.append(f"  {row['method']:<24} {scored}area {row['complexity']:.3f}")
    return "\n".join(lines)


def _faithfulness_columns(faithfulness: dict | None) -> dict:
    return {key: faithfulness[key] for key in ("deletion_auc", "insertion_auc")} if faithfulness else {}


def _jobs(http: httpx.Client, args) -> int:
    jobs, cursor = [], None
    while len(jobs) < args.limit:
        query = {"limit": min(100, args.limit - len(jobs))} | ({"cursor": cursor} if cursor else {})
        query |= {k: v for k, v in (("status", args.status), ("model_id", args.model)) if v}
        page = JobList.model_validate(_call(http, "GET", "/v1/jobs", params=query).json())
        jobs += page.jobs
        cursor = page.next_cursor
        if cursor is None:
            break
    rows = [[job.job_id, job.status, job.request.model_id or "", ",".join(job.request.methods or [job.kind]),
             job.created_at or "", job.error.code if job.error else ""] for job in jobs]
    return _print(args, [job.model_dump(mode="json", exclude_unset=True) for job in jobs],
                  ["job", "status", "model", "methods", "created", "error"], rows)


def _models(http: httpx.Client, args) -> int:
    listing = ModelList.model_validate(_call(http, "GET", "/v1/models").json())
    rows = [[m.id, m.version, m.status, ",".join(m.class_names), ",".join(m.methods)] for m in listing.models]
    return _print(args, listing.model_dump(mode="json")["models"], ["model", "version", "status", "classes",
                                                                    "methods"], rows)


def _methods(http: httpx.Client, args) -> int:
    listing = MethodList.model_validate(_call(http, "GET", "/v1/methods").json())
    rows = [[m.name, m.queue, "yes" if m.needs_artifacts else "", ", ".join(f"{p.name}={p.default}" for p in m.params)]
            for m in listing.methods]
    return _print(args, listing.model_dump(mode="json")["methods"], ["method", "queue", "artifacts", "parameters"],
                  rows)


def _print(args, as_json: list[dict[str, Any]], header: list[str], rows: list[list[Any]]) -> int:
    if args.json:
        print(json.dumps(as_json, indent=1))
        return 0
    table = [header, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
