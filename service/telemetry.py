"""Prometheus metrics of the gateway: requests, submissions, job latency, and queue state at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker


class QueueCollector:
    """Reads queue depth, running and failed jobs, and live workers from Redis when scraped."""

    def __init__(self, queues: dict[str, Queue]):
        self.queues = queues

    def collect(self):
        depth = GaugeMetricFamily("xai_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        running = GaugeMetricFamily("xai_jobs_running", "Jobs being worked on", labels=["queue"])
        failed = GaugeMetricFamily("xai_jobs_failed_kept", "Failed jobs still kept", labels=["queue"])
        workers = GaugeMetricFamily("xai_workers", "Live workers listening on the queue", labels=["queue"])
        for name, queue in self.queues.items():
            depth.add_metric([name], queue.count)
            running.add_metric([name], StartedJobRegistry(queue=queue).count)
            failed.add_metric([name], FailedJobRegistry(queue=queue).count)
            workers.add_metric([name], Worker.count(queue=queue))
        yield from (depth, running, failed, workers)


class Telemetry:
    def __init__(self, queues: dict[str, Queue]):
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "xai_jobs_submitted", "Jobs accepted", ["kind", "method"], registry=self.registry
        )
        self.errors = Counter("xai_request_errors", "Requests refused, by error code", ["code"], registry=self.registry)
        self.latency = Histogram(
            "xai_job_latency_seconds",
            "Submission to finish, observed when the gateway first reports a job finished",
            ["method"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=self.registry,
        )
        self.outcomes = Counter("xai_jobs_ended", "Jobs ended, by status", ["method", "status"], registry=self.registry)
        self.registry.register(QueueCollector(queues))
