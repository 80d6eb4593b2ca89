"""Time-ordered record ids, made cheaply on the caller's thread (UUID version 7).

A hook must hand its caller the id of the record it makes (``call.trace.trace_id``),
so the id is made where the hook runs. ``uuid.uuid4()`` costs about 4 µs here (a
system call for 16 random bytes and a ``UUID`` object), more than the rest of the
hook; :func:`uuid7_int` costs a few hundred nanoseconds and returns the id as the
128-bit integer a ``uuid.UUID(int=...)`` is made of, which the sender thread turns
into the record's ``UUID`` later. The LLM call hook does less still: it keeps a
stamp, its microsecond and the next count in one integer (:func:`stamp_at`), and the
id and the record's time are both made of it when asked (:func:`uuid7_of_stamp`: the
same layout, the 12 bits after the version holding the fraction of the millisecond).

Layout (RFC 9562: 48-bit time, then a counter as "monotonic random")::

    48 bits  Unix time in milliseconds
     4 bits  version 7
    12 bits  random, drawn again each new millisecond
     2 bits  variant 0b10
    62 bits  counter

The counter is one per process: it starts at a random value below 2**61 (so it never
runs out) and goes up by one for every id, atomically (``next()`` of an
``itertools.count`` holds the interpreter lock). So within a process every id is
unique and, from any one thread, greater than the one before (ids sort in the order
they were made); a clock that steps back keeps the last millisecond rather than
going back. Across processes and hosts the ids differ by the random start of the
counter (two processes would have to start within a few million of each other in a
range of 2**61, in the same millisecond) and the 12 random bits. The random source is
seeded from ``os.urandom`` and a forked child starts a counter and a source of its
own, so it never repeats its parent's ids (nor does an agent's own
``random.seed(...)`` touch them: that is another generator).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Final

_VERSION_AND_VARIANT: Final = (0x7 << 76) | (0b10 << 62)
COUNTER_MASK: Final = (1 << 62) - 1


class _State:
    """The random source, the counter and the current millisecond's high bits."""

    __slots__ = ("base", "next_count", "random_bits")

    def __init__(self) -> None:
        self.random_bits = random.Random(os.urandom(32)).getrandbits
        self.next_count = itertools.count(self.random_bits(61)).__next__
        # (millisecond, the id's bits above the counter): replaced as one tuple, so a
        # thread reads a millisecond and its bits together.
        self.base = (0, 0)


_state = _State()


def uuid7_int() -> int:
    """A new version 7 UUID as its 128-bit integer (``uuid.UUID(int=...)``)."""
    state = _state
    now_ms = time.time_ns() // 1_000_000
    base = state.base
    if now_ms > base[0]:
        base = (now_ms, (now_ms << 80) | _VERSION_AND_VARIANT | (state.random_bits(12) << 64))
        state.base = base
    return base[1] | (state.next_count() & COUNTER_MASK)


#: Where a stamp's count ends and its microseconds begin (:func:`stamp_at`).
STAMP_SHIFT: Final = 62


def stamp_at(wall_s: float) -> int:
    """A record's time and number in one integer: the Unix time in microseconds of
    ``wall_s`` above :data:`STAMP_SHIFT` bits of the process's counter (the one
    :func:`uuid7_int` draws from). The LLM call hooks keep this instead of an id and a
    time (one integer of 48 bytes, not one of 48 and a float of 32); the record's id
    and time are made of it off the caller's thread (:func:`uuid7_of_stamp`). The LLM
    call span computes the same inline from ``time.time_ns()``."""
    return (round(wall_s * 1_000_000) << STAMP_SHIFT) | (_state.next_count() & COUNTER_MASK)


def stamp_us(stamp: int) -> int:
    """The Unix time in microseconds of a stamp."""
    return stamp >> STAMP_SHIFT


def uuid7_of_stamp(stamp: int) -> int:
    """The version 7 UUID (as its 128-bit integer) of a stamp: its millisecond, then
    its fraction of a millisecond in the 12 bits RFC 9562 leaves to the implementation
    ("increased clock precision", so ids of one millisecond sort by their time), then
    its count. Unique within a process by the count; across processes as
    :func:`uuid7_int`'s ids are, by the random start of the counter. From one thread,
    a later stamp's id is greater unless the clock stepped back in between."""
    ms, sub_us = divmod(stamp >> STAMP_SHIFT, 1000)
    return (
        (ms << 80) | _VERSION_AND_VARIANT | ((sub_us * 4096 // 1000) << 64) | (stamp & COUNTER_MASK)
    )


def uuid7_hex() -> str:
    """A new version 7 UUID as 32 lowercase hex digits (a plan or decision id)."""
    return f"{uuid7_int():032x}"


def _reseed_in_child() -> None:
    """A forked child gets a counter and random bits its parent never drew."""
    global _state  # noqa: PLW0603 (one generator per process, replaced after fork)
    _state = _State()


os.register_at_fork(after_in_child=_reseed_in_child)
