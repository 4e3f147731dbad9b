"""Short-lived signed URLs for result files, so an ``<img>`` (which cannot send a header) loads them.

A URL carries ``expires`` (Unix seconds), ``by`` (the owning key's name) and ``sig``, the HMAC-SHA256
of job id, file name, owner and expiry under the gateway's secret. The signature proves the gateway
handed the URL to the owner, so it stands in for the owner's key on that one file until it expires;
it grants nothing else. The secret is ``XAI_URL_SIGNING_SECRET`` or, unset, a random one that the
first gateway stores in Redis (SET NX), so every gateway on that Redis verifies the others' URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from redis import Redis

from xai.errors import Forbidden
from xai.settings import Settings

SECRET_KEY = "xai:url-signing-secret"


@dataclass(frozen=True)
class UrlSigner:
    secret: bytes
    ttl_s: int

    @classmethod
    def open(cls, settings: Settings, redis: Redis) -> UrlSigner:
        secret = settings.url_signing_secret
        if secret is None:
            redis.set(SECRET_KEY, secrets.token_urlsafe(32), nx=True)
            secret = redis.get(SECRET_KEY).decode()
        return cls(secret.encode(), settings.signed_url_ttl_s)

    def _digest(self, job_id: str, name: str, owner: str, expires: int) -> str:
        message = f"{job_id}\n{name}\n{owner}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def sign(self, url: str, job_id: str, name: str, owner: str) -> str:
        """``url`` with the query that lets it be fetched without a key for ``ttl_s`` seconds."""
        expires = int(time.time()) + self.ttl_s
        query = urlencode({"expires": expires, "by": owner, "sig": self._digest(job_id, name, owner, expires)})
        return f"{url}?{query}"

    def verify(self, job_id: str, name: str, owner: str, expires: str, sig: str) -> None:
        """Raise 403 signature_invalid or signature_expired unless the query was signed for this file."""
        if not expires.isdecimal() or len(expires) > 12:
            raise Forbidden("the signed URL's expiry is malformed", code="signature_invalid")
        if not hmac.compare_digest(self._digest(job_id, name, owner, int(expires)), sig):
            raise Forbidden("the URL's signature does not match this file", code="signature_invalid")
        if int(expires) < time.time():
            raise Forbidden("the signed URL has expired; GET the job again for fresh URLs", code="signature_expired")
