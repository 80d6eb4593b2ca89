"""How a command becomes the bytes on the wire: every argument packed in C by hiredis.

Why: the emitter's batch call carries a few thousand arguments per 1,000 records
(stream entries, then four per counter op). redis-py 8 passes each argument through
its Python ``Encoder.encode`` even when hiredis is installed, before hiredis packs
the tuple; that per-argument Python call was a fifth of the sender thread's work per
record (docs/performance.md). ``hiredis.pack_command`` takes ``str``, ``bytes``,
``int``, ``float`` and ``memoryview`` itself and writes a float as ``repr`` does,
which is what redis-py sends, so the bytes are the same (tests/test_packing.py).

Anything else (``bool``, ``None``, ``bytearray``) goes to redis-py's own packer, so
redis-py's errors and conversions stay exactly as they were. Without hiredis (it is
an extra of redis-py), :func:`command_packer` is None and redis-py packs as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: redis-py's threshold for sending a long argument as its own buffer (its default).
_BUFFER_CUTOFF = 6000


class HiredisPacker:
    """A redis-py ``command_packer``: ``pack(*args)`` returns the command's chunks."""

    __slots__ = ("_fallback", "_pack")

    def __init__(self, pack: Callable[[tuple[Any, ...]], bytes], fallback: Any) -> None:
        self._pack = pack
        self._fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        command = args[0]
        # A command name with a space ("CONFIG GET") is several arguments to Redis, as
        # redis-py's own packers split it.
        if isinstance(command, str):
            if " " in command:
                args = (*command.encode().split(), *args[1:])
        elif isinstance(command, bytes) and b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [self._pack(args)]
        except TypeError:
            return list(self._fallback(*args))


def command_packer() -> HiredisPacker | None:
    """A packer for redis-py's connections, or None when hiredis is not installed."""
    try:
        import hiredis  # noqa: PLC0415 - loaded with redis-py, when a client is made
    except ImportError:
        return None
    from redis._parsers.encoders import Encoder  # noqa: PLC0415
    from redis.connection import PythonRespSerializer  # noqa: PLC0415

    encoder = Encoder(  # type: ignore[no-untyped-call]
        encoding="utf-8", encoding_errors="strict", decode_responses=False
    )
    fallback = PythonRespSerializer(_BUFFER_CUTOFF, encoder.encode)
    return HiredisPacker(hiredis.pack_command, fallback.pack)
