"""Long-lived objects of the gateway (opened in lifespan) and the dependencies routes ask for."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from models.store import ModelStore
from service.signing import UrlSigner
from xai.errors import Forbidden, Unauthorized
from xai.jobs import QUEUES
from xai.redis_client import connect
from xai.results import ResultStore, open_result_store
from xai.settings import Settings

ALL_SCOPES = ("explain", "admin")


@dataclass
class Gateway:
    settings: Settings
    redis: Redis
    store: ModelStore
    queues: dict[str, Queue]
    results: ResultStore
    signer: UrlSigner
    # service.admission's last INFO memory reading of this gateway's Redis: {"at": monotonic s, "info": {...}}
    memory_reading: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> Gateway:
        redis = connect(settings.redis_url)
        queues = {name: Queue(name, connection=redis, serializer=JSONSerializer) for name in QUEUES}
        results = open_result_store(settings.result_store, redis, settings.result_root)
        signer = UrlSigner.open(settings, redis)
        return cls(settings, redis, ModelStore(settings.model_store_dir), queues, results, signer)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's name (jobs are owned by it) and its scopes."""

    name: str
    scopes: tuple[str, ...]
    callback_secret: str | None = None


# The dependencies below do no I/O, so they are coroutines: FastAPI runs a plain function dependency on the
# thread pool, and those hand-offs were the largest part of a small request's cost.
async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


# Declares the Bearer scheme in the OpenAPI document; errors are ours (auto_error would answer FastAPI's own 403).
BEARER = HTTPBearer(auto_error=False, scheme_name="ApiKey", description="An API key from XAI_API_KEYS (none needed when none are set)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


async def authenticate(gateway: GatewayDep, credentials: Credentials) -> Principal:
    """Bearer API key -> Principal. With no keys configured (loopback only) every caller is 'local'."""
    keys = gateway.settings.api_keys
    if not keys:
        return Principal("local", ALL_SCOPES)
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'", code="missing_api_key")
    digest = hashlib.sha256(credentials.credentials.strip().encode()).hexdigest()
    for key in keys:
        if hmac.compare_digest(digest, key.digest()):
            return Principal(key.name, tuple(key.scopes), key.callback_secret)
    raise Unauthorized("the API key is not valid", code="invalid_api_key")


async def read_file_as(
    gateway: GatewayDep, credentials: Credentials, job_id: str, name: str,
    expires: Annotated[str | None, Query(description="expiry of a signed URL (from result.files)")] = None,
    by: Annotated[str | None, Query(description="owner named by a signed URL")] = None,
    sig: Annotated[str | None, Query(description="signature of a signed URL")] = None,
) -> Principal:
    """A result file's reader: the owner a valid signed URL names (an <img> sends no header), else the key."""
    if sig is None:
        return await authenticate(gateway, credentials)
    gateway.signer.verify(job_id, name, by or "", expires or "", sig)
    return Principal(by, ())


def require(scope: str):
    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", code="insufficient_scope")
        return principal

    return check


# Jobs are read by the key that created them, whatever its scopes (an admin polls its validation job).
Caller = Annotated[Principal, Depends(authenticate)]
ExplainCaller = Annotated[Principal, Depends(require("explain"))]
AdminCaller = Annotated[Principal, Depends(require("admin"))]
FileReader = Annotated[Principal, Depends(read_file_as)]
