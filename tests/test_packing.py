"""Commands packed by hiredis (fleettrace.packing) are byte for byte what redis-py's
own packer makes, for the emitter's real batch calls and for the awkward values; what
hiredis does not take goes to redis-py's packer, errors included; and the clients
fleettrace makes use it against the real server."""

from __future__ import annotations

import math
import random
import struct
import sys

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from fleettrace.connection import connect_redis
from fleettrace.keys import APPLY_FUNCTION, Keys
from fleettrace.packing import HiredisPacker, command_packer
from tests.emitting import make_emitter
from tests.factories import numbered_trace

REDIS_PY = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


def packer() -> HiredisPacker:
    made = command_packer()
    assert made is not None, "hiredis is a dependency (redis[hiredis])"
    return made


def same_bytes(*args: object) -> None:
    assert b"".join(packer().pack(*args)) == b"".join(REDIS_PY.pack(*args))


def test_the_emitters_batch_calls_pack_to_the_same_bytes(redis_url: str, keys: Keys) -> None:
    emitter = make_emitter(redis_url, keys)
    try:
        records = [
            numbered_trace(i, cost_usd=0.0011 * i, latency_ms=3.7 * i + 0.25, tags=["é", "x y"])
            for i in range(300)
        ]
        calls = emitter._encode(records)
    finally:
        emitter.close()
    assert calls
    for call in calls:
        same_bytes("FCALL", APPLY_FUNCTION, len(call.keys), *call.keys, *call.args)


def test_awkward_values_pack_to_the_same_bytes() -> None:
    rng = random.Random(7)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(5000)]
    floats = [f for f in floats if not math.isnan(f)]
    floats += [0.1, 1 / 3, -0.0, 1e-7, 1e22, 2.5e-5, math.inf, -math.inf, 0.0011 * 7]
    same_bytes("HINCRBYFLOAT", "k", *floats)
    same_bytes("SET", 0, -1, 2**63, 10**40, "é💡", b"\x00\xff", memoryview(b"mv"), "")
    # A command name with a space is two arguments, as redis-py splits it.
    same_bytes("CONFIG GET", "maxmemory")
    same_bytes(b"CLIENT SETNAME", "fleettrace")
    # Not taken by hiredis: redis-py's packer, with its conversion.
    same_bytes("SET", bytearray(b"ba"), "v")


@pytest.mark.parametrize("value", [True, None, object()])
def test_what_redis_py_refuses_is_refused_with_its_error(value: object) -> None:
    with pytest.raises(redis.DataError) as ours:
        packer().pack("SET", "k", value)
    with pytest.raises(redis.DataError) as theirs:
        REDIS_PY.pack("SET", "k", value)
    assert str(ours.value) == str(theirs.value)


def test_a_client_fleettrace_makes_packs_with_hiredis_against_the_server(
    redis_url: str, keys: Keys
) -> None:
    client = connect_redis(redis_url)
    try:
        connection = client.connection_pool.get_connection()
        try:
            assert isinstance(connection._command_packer, HiredisPacker)
        finally:
            client.connection_pool.release(connection)
        key = keys.live("packing-test")
        client.hincrbyfloat(key, "sum", 0.1)
        client.hincrbyfloat(key, "sum", 1e-7)
        client.hset(key, mapping={"n": 2**40, "s": "é"})
        assert client.hgetall(key) == {
            b"sum": b"0.1000001",  # Redis adds in a long double and prints 17 digits
            b"n": str(2**40).encode(),
            b"s": "é".encode(),
        }
        assert client.config_get("maxmemory")  # "CONFIG GET": one name, two arguments
        client.delete(key)
    finally:
        client.close()


def test_without_hiredis_redis_py_packs_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hiredis", None)  # import hiredis -> ImportError
    assert command_packer() is None
