"""Batching queued jobs that share a model, a method and its parameters into one explainer pass.

When a worker starts such a job it looks at the jobs still waiting behind it on the same queue,
explains the compatible ones together with it in one batch, and keeps their results in this
process. The peers stay in the queue, untouched: when this worker reaches them it finds their
result ready and only scores, renders and stores it. Nothing is claimed outside RQ, so a worker
that dies loses no job; if another worker takes a peer first, it simply computes it itself and
the kept result ages out of the bounded cache.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

import torch
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from models.preprocess import to_model_input
from workers.explain import JobSettings, MethodResult, run_method
from workers.runtime import LoadedModel
from xai.wire import decode_canonical
from xai.jobs import EXPLAIN_ENTRY, input_key

_READY: OrderedDict[str, MethodResult] = OrderedDict()
_READY_CAPACITY = 256


def batch_key(request: dict[str, Any]) -> tuple | None:
    """Jobs with equal keys can share one pass; None for jobs that cannot be batched."""
    methods = request.get("methods") or []
    if len(methods) != 1 or request.get("patch_mode") or request.get("quality_metrics"):
        return None
    params = json.dumps(request["params"].get(methods[0], {}), sort_keys=True)
    return request["model_id"], request["model_version"], methods[0], params


def take_ready(job_id: str) -> MethodResult | None:
    """The result computed for this job in an earlier batch, if this process holds one."""
    return _READY.pop(job_id, None)


def explain_with_waiting_peers(
    job: Job, ctx, loaded: LoadedModel, image: torch.Tensor, request: dict[str, Any], progress, limit: int
) -> MethodResult | None:
    """Explain this job with up to ``limit - 1`` compatible waiting jobs; None when there are none."""
    peers = _waiting_peers(job, request, limit - 1)
    images, requests = [image], [request]
    for peer in peers:
        blob = ctx.connection.get(input_key(peer.id))
        if blob is not None:  # an expired input is the peer's own error to report when it runs
            images.append(to_model_input(decode_canonical(blob), loaded.manifest.input).to(image.device))
            requests.append(peer.args[0])
    if len(requests) == 1:
        return None
    batch = torch.cat(images)
    targets = _targets(loaded, batch, requests)
    method = request["methods"][0]
    started = time.perf_counter()
    results = run_method(loaded, ctx.store, method, batch, targets, request["params"][method], progress,
                         JobSettings())
    share_ms = (time.perf_counter() - started) * 1000 / len(results)
    for result, target in zip(results, targets, strict=True):
        result.target, result.compute_ms = target, round(share_ms, 1)
        result.metrics["batch"] = {"size": len(requests)}
    for peer_request, result in zip(requests[1:], results[1:], strict=True):
        _READY[peer_request["job_id"]] = result
    while len(_READY) > _READY_CAPACITY:
        _READY.popitem(last=False)
    return results[0]


def _waiting_peers(job: Job, request: dict[str, Any], limit: int) -> list[Job]:
    key = batch_key(request)
    queue = Queue(job.origin, connection=job.connection, serializer=JSONSerializer)
    candidates = [j for j in Job.fetch_many(queue.get_job_ids(0, 4 * limit), job.connection, JSONSerializer) if j]
    peers = [
        j for j in candidates
        if j.func_name == EXPLAIN_ENTRY and j.args and batch_key(j.args[0]) == key and j.id not in _READY
    ]
    return peers[:limit]


def _targets(loaded: LoadedModel, batch: torch.Tensor, requests: list[dict[str, Any]]) -> list[int]:
    """Each job's target: the caller's class, else the class the model predicts for its image."""
    with torch.inference_mode():
        predicted = loaded.classifier(batch).argmax(dim=1).tolist()
    return [p if r.get("target") is None else int(r["target"]) for p, r in zip(predicted, requests, strict=True)]
