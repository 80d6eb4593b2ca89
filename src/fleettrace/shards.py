"""Sharded namespaces: one namespace spread over several hash slots (docs/scaling.md).

``FLEETTRACE_SHARDS=N`` splits a namespace into N shards. Shard 0 is the namespace's
own layout under the tag ``{ns}``; shard ``s`` > 0 is the same layout under
``{ns:s}`` (``Keys.shard``), so a shard's streams, counters, idempotency keys,
aggregates and dead letters share one slot, and every batch call, acknowledging
transaction and aggregation script stays within it. With N = 1 (the default) every
key is what it was before shards existed.

An emitter process writes to one shard, chosen once when the emitter is made
(:func:`choose_shard`): ``FLEETTRACE_SHARD`` when it is set, else a stable hash
(CRC-32) of ``<host name>:<process id>`` modulo N. A worker finds the shards by
scanning every master for producer streams (``fleettrace_worker.stream.shards``)
and records them in ``{ns}:shards``, a set only the worker writes; readers sum
over shard 0, the shards of their own ``FLEETTRACE_SHARDS`` and that set
(:func:`known_shards`).
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from fleettrace.environment import SHARD_VARIABLE, SHARDS_VARIABLE, first_set
from fleettrace.errors import ConfigurationError
from fleettrace.keys import MAX_SHARDS, Keys
from fleettrace.redis_errors import translate_redis_errors

if TYPE_CHECKING:
    import redis  # annotations only: redis-py loads when a client is made


def parse_shards(value: str | int | None, name: str = SHARDS_VARIABLE) -> int:
    """A number of shards, 1-MAX_SHARDS (None: 1); ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return 1
    number = _whole(value)
    if number is None or not 1 <= number <= MAX_SHARDS:
        raise ValueError(f"{name} must be a whole number 1-{MAX_SHARDS}, got {value!r}")
    return number


def parse_shard(value: str | int | None, name: str = SHARD_VARIABLE) -> int | None:
    """A shard number, 0-(MAX_SHARDS-1), or None; ``ValueError`` naming ``name`` otherwise."""
    if value is None:
        return None
    number = _whole(value)
    if number is None or not 0 <= number < MAX_SHARDS:
        raise ValueError(f"{name} must be a whole number 0-{MAX_SHARDS - 1}, got {value!r}")
    return number


def _whole(value: str | int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = value.strip()
    return int(text) if text.isdigit() else None


def configured_shards(environ: Mapping[str, str] | None = None) -> int:
    """``FLEETTRACE_SHARDS`` (1 when not set); a bad value is a ``ConfigurationError``."""
    try:
        return parse_shards(first_set((SHARDS_VARIABLE,), environ))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def choose_shard(
    shards: int, shard: int | None = None, *, host: str | None = None, pid: int | None = None
) -> int:
    """The shard an emitter process writes to: ``shard`` when given (``FLEETTRACE_SHARD``),
    else CRC-32 of ``"<host>:<pid>"`` (this host's name and process id unless given)
    modulo ``shards``. Stable for the life of a process; processes spread evenly over
    the shards in the long run, not exactly."""
    if shard is not None:
        return shard
    if shards <= 1:
        return 0
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    return zlib.crc32(f"{host}:{pid}".encode()) % shards


READING_SHARDS: Final = "reading the shards of the namespace"


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def known_shards(client: redis.Redis, keys: Keys, action: str = READING_SHARDS) -> list[int]:
    """The shards a reader sums over, ascending: 0, those of the reader's own
    ``FLEETTRACE_SHARDS``, and those the worker recorded in ``keys.shard_registry``
    (a member that is not a shard number is skipped). One SMEMBERS; a Redis error is
    translated as one of ``action`` (the caller's read, so it names what failed)."""
    found = set(range(configured_shards()))
    with translate_redis_errors(action):
        members = client.smembers(keys.shard_registry) or ()
    for raw in members:
        try:
            shard = parse_shard(_text(raw))
        except ValueError:
            continue
        if shard is not None:
            found.add(shard)
    return sorted(found)


def shard_keys(client: redis.Redis, keys: Keys, action: str = READING_SHARDS) -> list[Keys]:
    """``keys`` in each shard a reader sums over (:func:`known_shards`)."""
    return [keys.for_shard(shard) for shard in known_shards(client, keys, action)]
