"""The SQL of the attribute filters (``--tag``, ``--meta key=value``, ``--user``,
``--session``) of ``fleettrace traces list/cost``.

Each is written so that PostgreSQL can use the partial indexes of schema version 4
(``tags @> ARRAY[...]`` and ``metadata @> '{...}'`` imply ``IS NOT NULL``, the
predicate of those indexes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from psycopg import sql
from psycopg.types.json import Jsonb


def parse_meta(text: str) -> tuple[str, str]:
    """``key=value`` as (key, value); ValueError naming what is wrong otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--meta takes KEY=VALUE, got {text!r}")
    return key, value


def _candidates(key: str, value: str) -> list[Jsonb]:
    """``tier=2`` matches the number 2 and the string "2"; ``beta=true`` the boolean
    and the string: a command line cannot say which type a value was recorded with."""
    found = [Jsonb({key: value})]
    try:
        parsed = json.loads(value)
    except ValueError:
        return found
    if isinstance(parsed, bool | int | float):
        found.append(Jsonb({key: parsed}))
    return found


def conditions(
    tags: Sequence[str],
    metadata: Sequence[tuple[str, str]],
    user_id: str | None,
    session_id: str | None,
) -> tuple[list[sql.Composable], list[object]]:
    """Conditions (joined by AND) selecting rows with every tag and every metadata
    pair given, and the user and session given."""
    found: list[sql.Composable] = []
    params: list[object] = []
    if tags:
        found.append(sql.SQL("tags @> %s::text[]"))
        params.append(list(tags))
    for key, value in metadata:
        options = _candidates(key, value)
        found.append(
            sql.SQL("({})").format(sql.SQL(" OR ").join([sql.SQL("metadata @> %s")] * len(options)))
        )
        params.extend(options)
    for column, wanted in (("user_id", user_id), ("session_id", session_id)):
        if wanted is not None:
            found.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(wanted)
    return found, params
