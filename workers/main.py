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

from workers import claim, jobs
from workers.runtime import WorkerContext, set_torch_threads
from xai.jobs import EXPLAIN_ENTRY, announce_end
from xai.persistence import rewrite_if_patient_data_deleted
from xai.settings import Settings

log = logging.getLogger("xai.worker")


class ExplainWorker(SimpleWorker):
    """SimpleWorker that runs compatible waiting explanation jobs as one batch, with heartbeats for all of them."""

    def __init__(self, queues: list[Queue], *, settings: Settings, **kwargs) -> None:
        super().__init__(queues, **kwargs)
        self.heartbeat_s = settings.heartbeat_s
        self.abandoned_after_s = settings.abandoned_after_s
        self.batch_max = settings.batch_max
        self.batch_wait_ms = settings.batch_wait_ms

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.abandoned_after_s

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry) -> None:
        if not self._lease_lost(job):
            super().handle_job_success(job, queue, started_job_registry)
            announce_end(self.connection, job.id)
            self._release_input(job)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string: str = "") -> None:
        if self._lease_lost(job):
            return
        # The one retry a job is enqueued with is for a lost worker (RQ's abandoned-job cleanup spends it).
        # A failure this worker saw (bad input, an error, a timeout, a cancel) would fail again: never retried.
        job.retries_left = 0
        super().handle_job_failure(job, queue, started_job_registry, exc_string)
        announce_end(self.connection, job.id)
        self._release_input(job)

    def _release_input(self, job: Job) -> None:
        """An explanation's upload goes once its end is recorded (its peers' go in ``jobs.run_explanation``)."""
        if job.func_name == EXPLAIN_ENTRY:
            jobs.release_inputs(self.connection, [job.id])

    def _lease_lost(self, job: Job) -> bool:
        """True when RQ took ``job`` back while this worker was cut off (claim.still_held); its outcome is dropped."""
        if self.execution is None or claim.still_held(job, self.execution, self.abandoned_after_s):
            return False
        log.warning("job %s was re-queued while this worker was cut off from Redis; its retry runs it", job.id)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe)
            pipe.execute()
        return True

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        rewrite_if_patient_data_deleted(self.connection)

    def execute_job(self, job: Job, queue: Queue) -> None:
        peers = self._claim_peers(job, queue)
        context = jobs.context()
        context.worker_name = self.name
        stop = threading.Event()
        beating = threading.Thread(target=self._beat, args=(job, peers, stop), name="heartbeat", daemon=True)
        self.prepare_execution(job)
        context.hand_over(job.id, peers, self.execution)
        beating.start()
        try:
            self.perform_job(job, queue)
        finally:
            stop.set()
            beating.join()
            context.take_claims(job.id)
            for peer in peers:  # only if the leader's entry point never ran: nothing else leaves one open
                if not peer.closed:
                    claim.fail(peer, "the batch's leader job ended before running it", self.name,
                               self.abandoned_after_s)
        self.set_state(WorkerStatus.IDLE)

    def _claim_peers(self, job: Job, queue: Queue) -> list[claim.Claim]:
        key = claim.batch_key_of(job) if self.batch_max > 1 else None
        if key is None:
            return []
        return claim.claim_compatible(queue, key, self.batch_max - 1, wait_ms=self.batch_wait_ms,
                                      worker_name=self.name, heartbeat_ttl=self.abandoned_after_s)

    def _beat(self, job: Job, peers: list[claim.Claim], stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            if self.execution is None:  # perform_job has already closed the leader's execution
                break
            try:
                self.maintain_heartbeats(job)
                claim.heartbeat(peers, self.abandoned_after_s, self.connection)
            except Exception:  # a missed beat must not kill the job; the next one may succeed
                log.warning("heartbeat for job %s failed", job.id, exc_info=True)


def run_worker(settings: Settings, queues: list[str], *, burst: bool = False, name: str | None = None) -> bool:
    """Preload the worker context (device, model cache), then work the queues until stopped."""
    connection = Redis.from_url(settings.redis_url)
    threads = set_torch_threads(settings.torch_threads)
    context = WorkerContext(settings, connection)
    jobs.install_context(context)
    log.info("worker on %s (%d CPU threads) for queues %s", context.device, threads, ",".join(queues))
    worker = ExplainWorker(
        [Queue(name, connection=connection, serializer=JSONSerializer) for name in queues],
        settings=settings,
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        maintenance_interval=settings.abandoned_after_s,
        worker_ttl=settings.worker_ttl_s,
    )
    return worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
