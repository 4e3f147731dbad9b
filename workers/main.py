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
import sys
import threading
from datetime import timedelta

from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from workers import claim, jobs
from workers.runtime import REDIS_UNREACHABLE, WorkerContext, set_torch_threads
from xai.errors import ErrorCode
from xai.jobs import EXPLAIN_ENTRY, announce_end
from xai.persistence import rewrite_if_patient_data_deleted
from xai.redis_client import connect
from xai.settings import Settings

log = logging.getLogger("xai.worker")

# What RQ's IntermediateQueue.cleanup fails a job with when a worker took it off the queue and died before
# starting it: the job never ran.
NEVER_STARTED = "Job was stuck in intermediate queue."
WORKER_BEAT_REUSED_FOR = timedelta(seconds=1)
MIN_REDIS = (6, 2)  # COPY


class ExplainWorker(SimpleWorker):
    """SimpleWorker that runs compatible waiting explanation jobs as one batch, with heartbeats for all of them."""

    def __init__(self, queues: list[Queue], *, settings: Settings, **kwargs) -> None:
        super().__init__(queues, **kwargs)
        self.heartbeat_s = settings.heartbeat_s
        self.abandoned_after_s = settings.abandoned_after_s
        self.batch_max = settings.batch_max
        self.batch_wait_ms = settings.batch_wait_ms
        self._left_to_cleanup = False  # the job at hand ended by a Redis outage: RQ's cleanup takes it back

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.abandoned_after_s

    # Between two jobs RQ writes the worker's state and beats for it (HSET, EXPIRE) before and after each
    # dequeue: six round trips when jobs come back to back. The key lives worker_ttl + 60 s, so a beat within
    # the last second is enough, and a state already written need not be written again. Writes that go in a
    # pipeline (RQ's own, with a job's start) are always made.
    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and timeout is None and self.last_heartbeat is not None \
                and now() - self.last_heartbeat < WORKER_BEAT_REUSED_FOR:
            return
        super().heartbeat(timeout, pipeline)

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry) -> None:
        if not self._lease_lost(job):
            super().handle_job_success(job, queue, started_job_registry)
            announce_end(self.connection, job.id)
            self._release_input(job)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string: str = "") -> None:
        if isinstance(sys.exc_info()[1], REDIS_UNREACHABLE):  # RQ calls this inside its except block
            self._leave_to_cleanup(job)
            return
        if exc_string == NEVER_STARTED:  # from maintenance: another worker's job, not this one's execution
            if self._taken_back_unstarted(job, queue):
                return
        elif self._lease_lost(job):
            return
        # The one retry a job is enqueued with is for a lost worker (RQ's abandoned-job cleanup spends it).
        # A failure this worker saw (bad input, an error, a timeout, a cancel) would fail again: never retried.
        job.retries_left = 0
        super().handle_job_failure(job, queue, started_job_registry, exc_string)
        announce_end(self.connection, job.id)
        self._release_input(job)

    def _taken_back_unstarted(self, job: Job, queue: Queue) -> bool:
        """A job RQ found in the intermediate queue: if it is truly stranded there (still queued, but in no
        queue), re-queue it with its one retry, like any job whose worker died (True); with that retry spent,
        mark it ``worker_lost`` for the failure to follow (False). One that was re-queued or ran meanwhile
        is left as it is (True)."""
        if job.get_status(refresh=True) != JobStatus.QUEUED or self.connection.lpos(queue.key, job.id) is not None:
            return True
        if job.retries_left:
            with self.connection.pipeline() as pipe:
                job.retry(queue, pipe)
                pipe.execute()
            return True
        job.meta["error"] = ErrorCode.WORKER_LOST.body()
        job.save_meta()
        return False

    def _leave_to_cleanup(self, job: Job) -> None:
        """A job whose run or bookkeeping met a Redis outage (a restart) is not failed for it: nothing of it
        is recorded, its heartbeats stop, and RQ's abandoned-job cleanup re-queues it with its one retry
        (or fails it ``worker_lost``), as for a killed worker. One whose success was recorded before the
        outage stays finished."""
        self._left_to_cleanup = True
        self.execution = None  # its record stays in the started registry, for the cleanup to find
        try:
            if job.get_status(refresh=True) == JobStatus.FINISHED:  # what handle_job_success did not reach
                announce_end(self.connection, job.id)
                self._release_input(job)
                return
        except REDIS_UNREACHABLE:
            pass  # still away: the cleanup decides once it is back
        log.warning("job %s met a Redis outage; RQ's abandoned-job cleanup takes it back", job.id)

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
        # In the started registry and off RQ's intermediate queue (which RQ uses for a worker of one queue)
        # before its peers are claimed: a kill from here on is found by the abandoned-job cleanup, and the
        # job is never in both.
        self.prepare_execution(job)
        if len(self.queues) == 1:
            with self.connection.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.delete(queue.intermediate_queue.get_first_seen_key(job.id))
                pipe.execute()
        peers = self._claim_peers(job, queue)
        context = jobs.context()
        context.worker_name = self.name
        stop = threading.Event()
        beating = threading.Thread(target=self._beat, args=(job, peers, stop), name="heartbeat", daemon=True)
        context.hand_over(job.id, peers, self.execution)
        self._left_to_cleanup = False
        beating.start()
        try:
            self.perform_job(job, queue)
        finally:
            stop.set()
            beating.join()
            context.take_claims(job.id)
            # Open only if the leader's entry point never ran or met a Redis outage; after an outage the
            # cleanup re-queues them with the leader.
            for peer in peers:
                if not peer.closed and not self._left_to_cleanup:
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
    connection = connect(settings.redis_url)
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
    require_redis_version(worker.get_redis_server_version())
    return worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)


def require_redis_version(version: tuple[int, ...]) -> None:
    """Refuse to start against a Redis older than ``MIN_REDIS``: every job would fail at its end, when its
    display copy is filed with COPY (``xai.results.RedisResultStore``)."""
    if version[:2] < MIN_REDIS:
        shown = ".".join(str(part) for part in version)
        raise SystemExit(f"Redis {shown} is older than {MIN_REDIS[0]}.{MIN_REDIS[1]}, which the workers need "
                         "(the COPY command); point XAI_REDIS_URL at a newer one")
