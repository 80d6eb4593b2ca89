"""Where a plan sits in its tree, and the token that carries that to another process.

A plan scope (``fleettrace.plan``) knows its root plan's id and start and the ids of
its ancestors; nested scopes pass that down through ``contextvars``. A child plan
started in another process or on another host gets it from a *plan token*: a short
string the parent hands over (``plan.token()``, then ``fleettrace.plan(...,
parent=token)`` there). It is printable ASCII, safe in an environment variable, a
command line, an HTTP header or a message body::

    ftp1.<base64url of the JSON {"r": root id, "s": root start (µs since the epoch),
                                 "p": [ancestor ids..., the parent plan id]}>

The token holds ids and a time, never a secret or anything the agent did. Reading
one never raises into agent code: :func:`parse_token` returns ``None`` for a string
that is not a token, and the hooks then treat the string as a plain parent plan id
(as ``parent=`` always took), so a corrupted token still makes a child plan, only
one whose root is not known beyond its parent.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from fleettrace.model import MAX_ID_CHARS, MAX_PLAN_DEPTH

TOKEN_PREFIX: Final = "ftp1."  # noqa: S105 (a format tag, not a secret)
#: A token longer than this is refused unread (MAX_PLAN_DEPTH ids at MAX_ID_CHARS,
#: base64 grown by a third, with room for the JSON around them).
MAX_TOKEN_CHARS: Final = (MAX_PLAN_DEPTH * (MAX_ID_CHARS + 3) + 64) * 4 // 3 + 16
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PlanPlace:
    """A plan's place in its tree: the root plan and when it started, and the path of
    plan ids from the root down to the plan itself (included)."""

    root_plan_id: str
    root_started_at: datetime
    path: tuple[str, ...]

    @property
    def plan_id(self) -> str:
        return self.path[-1]

    @property
    def ancestors(self) -> list[str]:
        """The plan's ancestors, root first (what records carry as ``plan_path``)."""
        return list(self.path[:-1])

    def child(self, plan_id: str) -> PlanPlace:
        """The place of a child plan of this one. Past ``MAX_PLAN_DEPTH`` the path keeps
        the root and the nearest ancestors, so the parent and the root stay right."""
        path = (*self.path, plan_id)
        if len(path) > MAX_PLAN_DEPTH + 1:
            path = (path[0], *path[-MAX_PLAN_DEPTH:])
        return PlanPlace(self.root_plan_id, self.root_started_at, path)

    def token(self) -> str:
        """The token a child plan in another process takes as ``parent=``."""
        micros = (self.root_started_at - _EPOCH) // timedelta(microseconds=1)
        body = orjson.dumps({"r": self.root_plan_id, "s": micros, "p": list(self.path)})
        return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode("ascii").rstrip("=")


def root_place(plan_id: str, started_at: datetime) -> PlanPlace:
    """The place of a plan that starts a tree of its own."""
    return PlanPlace(plan_id, started_at, (plan_id,))


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and "\x00" not in value


def parse_token(token: str) -> PlanPlace | None:
    """The parent's place a token carries, or ``None`` when ``token`` is not one
    (never raises: a token arrives from elsewhere and may be damaged)."""
    if (
        not isinstance(token, str)
        or not token.startswith(TOKEN_PREFIX)
        or len(token) > MAX_TOKEN_CHARS
    ):
        return None
    encoded = token[len(TOKEN_PREFIX) :]
    try:
        body = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    root, micros, path = body.get("r"), body.get("s"), body.get("p")
    if (
        not _valid_id(root)
        or type(micros) is not int
        or not isinstance(path, list)
        or not 0 < len(path) <= MAX_PLAN_DEPTH + 1
        or not all(_valid_id(p) for p in path)
        or path[0] != root
    ):
        return None
    try:
        started = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
    return PlanPlace(str(root), started, tuple(str(p) for p in path))
