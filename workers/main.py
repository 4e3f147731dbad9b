"""The worker process: a preloading, non-forking RQ worker pinned to one device.

CUDA does not survive fork (pytorch/pytorch#40403), so jobs run in this process (RQ's SimpleWorker)
and models stay resident between jobs. SimpleWorker sends no heartbeat while a job runs, which would
leave a killed worker's job "started" until its timeout; a thread here heartbeats every few seconds
with a short TTL instead, so RQ's StartedJobRegistry.cleanup() fails an abandoned job within
``abandoned_after_s``. The trade-off (warm and fast, but a crash takes the process down) is covered
by a supervisor: ``xai serve`` restarts workers, docker-compose has ``restart: unless-stopped``.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from workers import jobs
from xai.settings import Settings

log = logging.getLogger("xai.worker")


class ExplainWorker(SimpleWorker):
    """SimpleWorker with heartbeats during jobs and a short abandoned-job horizon."""

    heartbeat_s = 5
    abandoned_after_s = 30

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.abandoned_after_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        stop = threading.Event()
        beating = threading.Thread(target=self._beat, args=(job, stop), name="heartbeat", daemon=True)
        self.prepare_execution(job)
        beating.start()
        try:
            self.perform_job(job, queue)
        finally:
            stop.set()
            beating.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job)
            except Exception:  # a missed beat must not kill the job; the next one may succeed
                log.warning("heartbeat for job %s failed", job.id, exc_info=True)


def run_worker(settings: Settings, queues: list[str], *, burst: bool = False, name: str | None = None) -> bool:
    """Preload the worker context (device, model cache), then work the queues until stopped."""
    connection = Redis.from_url(settings.redis_url)
    context = jobs.WorkerContext(settings, connection)
    jobs.install_context(context)
    log.info("worker on %s for queues %s", context.device, ",".join(queues))
    worker = ExplainWorker(
        [Queue(name, connection=connection, serializer=JSONSerializer) for name in queues],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        maintenance_interval=settings.abandoned_after_s,
    )
    worker.heartbeat_s = settings.heartbeat_s
    worker.abandoned_after_s = settings.abandoned_after_s
    return worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
