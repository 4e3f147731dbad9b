"""Job callbacks: checking a caller's ``callback_url``, and the gateway thread that delivers them.

Pending deliveries wait in one Redis sorted set scored by when each is next due, so a delivery
survives a gateway restart, and any number of gateways share the work: each takes a due entry by
pushing its score a lease ahead in one script, so two never post the same attempt. The backoff
lives in those scores, not in a sleeping thread, for the same reason. An entry whose job has not
ended is looked at again a poll later; the job's end (finished, failed, canceled, or failed by the
abandoned-job cleanup) is what is delivered, once it is there.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from service.deps import Gateway, Principal
from service.jobs import TERMINAL, fail_if_abandoned, public_status
from service.schemas import JobStatus
from xai.callbacks import SIGNATURE_HEADER, CallbackDelivery, signature
from xai.errors import InvalidInput
from xai.jobs import CALLBACK_OUTBOX
from xai.settings import Settings

log = logging.getLogger("xai.callbacks")

POLL_S = 0.5
LEASE_MARGIN_S = 30
MAX_BACKOFF_S = 300
# Take the first entry due by ARGV[1], pushing it to ARGV[2] so no other gateway takes it meanwhile.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if due[1] then redis.call('ZADD', KEYS[1], ARGV[2], due[1]) end
return due[1]
"""


def callback_request(url: str | None, caller: Principal, settings: Settings, base_url: str) -> CallbackDelivery | None:
    """The delivery a job will owe, if the caller asked for one; 422 for a URL it may not use."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password:
        raise InvalidInput("callback_url must be an absolute http or https URL without user or password",
                           code="invalid_callback_url")
    if parts.hostname.lower() not in settings.callback_hosts:
        allowed = ", ".join(settings.callback_hosts) or "none (XAI_CALLBACK_HOSTS is empty)"
        raise InvalidInput(f"callbacks may go only to the hosts in XAI_CALLBACK_HOSTS: {allowed}",
                           code="callback_not_allowed")
    if not caller.callback_secret:
        raise InvalidInput("this API key has no callback_secret in XAI_API_KEYS, so its callbacks could not be "
                           "signed", code="callback_not_allowed")
    return CallbackDelivery(url=url, status_base_url=base_url)


class CallbackCourier:
    """Delivers due callbacks from a daemon thread of the gateway until ``stop()``."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.settings = gateway.settings
        self._take_due = gateway.redis.register_script(_TAKE_DUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callbacks", daemon=True)
        self._http = httpx.Client(timeout=self.settings.callback_timeout_s, follow_redirects=False,
                                  headers={"User-Agent": "xai-service callbacks"})

    def start(self) -> CallbackCourier:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.settings.callback_timeout_s + 5)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.deliver_due()
            except RedisError as error:  # Redis away: the entries wait in it; try again next poll
                log.warning("callback outbox unreachable: %s", type(error).__name__)

    def deliver_due(self) -> None:
        """Deliver every entry due now, one at a time: each is leased for as long as one delivery can take."""
        lease_s = self.settings.callback_timeout_s + LEASE_MARGIN_S
        while not self._stop.is_set():
            now = time.time()
            member = self._take_due(keys=[CALLBACK_OUTBOX], args=[now, now + lease_s])
            if member is None:
                return
            self._handle(member.decode())

    def _handle(self, job_id: str) -> None:
        redis = self.gateway.redis
        try:
            job = fail_if_abandoned(self.gateway, Job.fetch(job_id, connection=redis, serializer=JSONSerializer))
        except NoSuchJobError:  # purged or expired: nothing left to report
            redis.zrem(CALLBACK_OUTBOX, job_id)
            return
        delivery = CallbackDelivery.model_validate(job.meta["callback"])
        status = public_status(job, delivery.status_base_url, self.gateway.signer)
        if status.status not in TERMINAL:
            redis.zadd(CALLBACK_OUTBOX, {job_id: time.time() + POLL_S})
            return
        self._attempt(job, delivery, status)
        if not Job.exists(job_id, connection=redis):  # purged while the POST was out: write nothing back
            redis.zrem(CALLBACK_OUTBOX, job_id)
            return
        job.meta["callback"] = delivery.model_dump()
        job.save_meta()
        if delivery.state == "pending":
            backoff = min(self.settings.callback_backoff_s * 2 ** (delivery.attempts - 1), MAX_BACKOFF_S)
            redis.zadd(CALLBACK_OUTBOX, {job_id: time.time() + backoff})
        else:
            redis.zrem(CALLBACK_OUTBOX, job_id)

    def _attempt(self, job: Job, delivery: CallbackDelivery, status: JobStatus) -> None:
        """POST once and record the outcome in ``delivery`` (pending again, delivered or failed)."""
        secret = self._secret_of(job.meta["owner"])
        delivery.attempts += 1
        if secret is None:
            delivery.state, delivery.last_error = "failed", "the job's API key no longer has a callback_secret"
            return
        body = status.model_dump_json(exclude_unset=True).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, int(time.time()), body)}
        host = urlsplit(delivery.url).hostname
        try:
            response = self._http.post(delivery.url, content=body, headers=headers)
            delivery.last_status_code, delivery.last_error = response.status_code, None
            delivered = response.is_success
        except httpx.HTTPError as error:
            delivery.last_status_code, delivery.last_error = None, f"{type(error).__name__}: {error}"[:300]
            delivered = False
        if delivered:
            delivery.state, delivery.delivered_at = "delivered", datetime.now(UTC).isoformat()
        elif delivery.attempts >= self.settings.callback_attempts:
            delivery.state = "failed"
        log.info("callback for job %s to %s: attempt %d, %s", job.id, host, delivery.attempts,
                 delivery.last_status_code or delivery.last_error)

    def _secret_of(self, owner: str) -> str | None:
        return next((key.callback_secret for key in self.settings.api_keys if key.name == owner), None)
