"""xai.redis_client: hiredis parses the replies, redis-py packs the commands, and values survive both ways."""

import os

from redis._parsers import _HiredisParser
from redis.connection import PythonRespSerializer

from xai.redis_client import connect


def test_replies_are_parsed_by_hiredis_and_commands_packed_by_redis_py(redis_server):
    client = connect(redis_server.url)
    client.ping()
    connection = client.connection_pool.get_connection()
    try:
        assert isinstance(connection._parser, _HiredisParser)
        assert isinstance(connection._command_packer, PythonRespSerializer)
    finally:
        client.connection_pool.release(connection)


def test_a_large_value_and_a_small_one_come_back_as_they_were_stored(redis_server):
    client = connect(redis_server.url)
    large, small = os.urandom(3 << 20), b"\r\n$-1\r\n*0\r\n"  # bytes that look like the protocol itself
    client.set("redis-client:large", large, ex=60)
    client.set("redis-client:small", small, ex=60)
    assert client.mget(["redis-client:large", "redis-client:small", "redis-client:absent"]) == [large, small, None]
