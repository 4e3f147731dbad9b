"""The one way the gateway and the workers open Redis. Torch-free.

redis-py parses replies with hiredis (a C parser) when it is installed: reading a 1 MiB value, such
as a 1024 px job's display copy, takes about 0.9 ms instead of 6 ms with the pure-Python parser.
hiredis's command packer, which redis-py then also picks, copies a large argument more slowly than
redis-py's own (SET of 1 MiB: 2.6-7 ms instead of 0.9 ms), so commands are packed by redis-py.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.connection import Encoder, PythonRespSerializer

# redis-py's own defaults (Connection's encoding arguments and its buffer cutoff).
_ENCODER = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)
_BUFFER_CUTOFF = 6000


def connect(url: str, **options: Any) -> Redis:
    """A client of the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``); ``options`` as
    for ``Redis.from_url``, but not ``decode_responses`` (the service stores bytes)."""
    return Redis.from_url(url, command_packer=PythonRespSerializer(_BUFFER_CUTOFF, _ENCODER.encode), **options)
