"""Callbacks: the signed POST a job's caller receives when the job ends, and how a receiver checks it.

The service POSTs the public job status (exactly what ``GET /v1/jobs/{id}`` answers) as JSON with
the header ``X-XAI-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` under the API
key's ``callback_secret``. Signing the timestamp with the body lets a receiver refuse a replay of an
old delivery; delivery is at least once, so a receiver keys on ``job_id``. Torch-free, and free of
the gateway, so a receiver may import ``verify`` alone.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict

SIGNATURE_HEADER = "X-XAI-Signature"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-XAI-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` and was made within ``tolerance_s`` of ``now``."""
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    timestamp = fields.get("t", "")
    if not timestamp.isdecimal() or "v1" not in fields:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), f"t={timestamp},v1={fields['v1']}")


class CallbackDelivery(BaseModel):
    """A job's callback and how its delivery went, kept in the job and shown in its status."""

    model_config = ConfigDict(extra="forbid")

    url: str
    status_base_url: str  # the submitting request's base URL: the delivered status's links start with it
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: str | None = None  # ISO 8601, UTC

    def public(self) -> dict:
        return self.model_dump(exclude={"status_base_url"})
