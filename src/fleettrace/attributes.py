"""Tags, metadata, user and session: who and what an LLM call was for.

They are set on a plan, decision or actor scope (inherited through ``contextvars``
by every record inside it) or on one call, and merged innermost last: the tags of
an inner scope or of the call are added to those of the scopes around it (each tag
once, in the order first given), a metadata key set again overrides the outer
value, and an inner ``user_id`` / ``session_id`` replaces the outer one.

The limits below are the record's (``LLMTrace`` refuses a record that breaks them,
which is what ``record()`` with a hand-built record raises). A hook never raises for
them: :func:`clean` keeps the valid parts, drops the rest and says why for each
dropped part, so the emitter can count the rejection by reason
(``EmitterStats.rejected``) and log it once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

#: At most this many tags on one record.
MAX_TAGS: Final = 32
#: A tag is 1 to this many characters, without NUL.
MAX_TAG_CHARS: Final = 64
#: At most this many metadata keys on one record.
MAX_METADATA_KEYS: Final = 32
#: A metadata key is 1 to this many characters, without NUL.
MAX_METADATA_KEY_CHARS: Final = 64
#: A string metadata value is at most this many characters, without NUL.
MAX_METADATA_VALUE_CHARS: Final = 256
#: Whole-number metadata values stay within what a JSON double holds exactly.
MAX_METADATA_INT: Final = 2**53 - 1

#: Why a hook dropped part of the attributes it was given: the keys of
#: ``EmitterStats.rejected``.
REJECT_TAG_TYPE: Final = "tag_type"
REJECT_TAG_LENGTH: Final = "tag_length"
REJECT_TOO_MANY_TAGS: Final = "too_many_tags"
REJECT_METADATA_TYPE: Final = "metadata_type"
REJECT_METADATA_KEY: Final = "metadata_key"
REJECT_METADATA_VALUE: Final = "metadata_value"
REJECT_TOO_MANY_METADATA_KEYS: Final = "too_many_metadata_keys"
REJECT_ID: Final = "id"
REJECT_TTFT: Final = "ttft"
#: Why the sender left out a field given to an LLM call hook (:mod:`fleettrace.capture`):
#: ``invalid_<field>`` for a field of the record the value does not fit, a name that is
#: no field of the record, a token detail larger than its total.
REJECT_INVALID_PREFIX: Final = "invalid_"
REJECT_UNKNOWN_FIELD: Final = "unknown_field"
REJECT_DETAIL_OVER_TOTAL: Final = "detail_over_total"

#: The scalar types a metadata value may have.
MetadataValue = str | int | float | bool


def _text_ok(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and "\x00" not in value


def tag_problem(tag: object) -> str | None:
    """Why ``tag`` is not a valid tag, or None."""
    if not isinstance(tag, str):
        return REJECT_TAG_TYPE
    if not _text_ok(tag, MAX_TAG_CHARS):
        return REJECT_TAG_LENGTH
    return None


def metadata_key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid metadata key, or None."""
    return None if _text_ok(key, MAX_METADATA_KEY_CHARS) else REJECT_METADATA_KEY


def metadata_value_problem(value: object) -> str | None:
    """Why ``value`` is not a valid metadata value (a scalar), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_METADATA_INT else REJECT_METADATA_VALUE
    if isinstance(value, float):
        return None if math.isfinite(value) else REJECT_METADATA_VALUE
    if isinstance(value, str):
        if len(value) <= MAX_METADATA_VALUE_CHARS and "\x00" not in value:
            return None
        return REJECT_METADATA_VALUE
    return REJECT_METADATA_VALUE


@dataclass(frozen=True, slots=True)
class Attributes:
    """The attributes in force in a scope (or given to one call), already valid."""

    tags: tuple[str, ...] = ()
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    user_id: str | None = None
    session_id: str | None = None

    def __bool__(self) -> bool:
        return bool(self.tags or self.metadata or self.user_id or self.session_id)

    def inside(self, outer: Attributes) -> tuple[Attributes, list[str]]:
        """These attributes set inside ``outer``: tags added, keys overriding, ids
        replacing. Returns the merge and the reasons of anything the limits dropped."""
        if not outer:
            return self, []
        if not self:
            return outer, []
        rejected: list[str] = []
        tags = list(outer.tags)
        for tag in self.tags:
            if tag in tags:
                continue
            if len(tags) >= MAX_TAGS:
                rejected.append(REJECT_TOO_MANY_TAGS)
                continue
            tags.append(tag)
        metadata = dict(outer.metadata)
        for key, value in self.metadata.items():
            if key not in metadata and len(metadata) >= MAX_METADATA_KEYS:
                rejected.append(REJECT_TOO_MANY_METADATA_KEYS)
                continue
            metadata[key] = value
        merged = Attributes(
            tuple(tags),
            metadata,
            self.user_id or outer.user_id,
            self.session_id or outer.session_id,
        )
        return merged, rejected

    def fields(self) -> dict[str, object]:
        """The ``LLMTrace`` fields these attributes set (only those that are set)."""
        found: dict[str, object] = {}
        if self.tags:
            found["tags"] = list(self.tags)
        if self.metadata:
            found["metadata"] = dict(self.metadata)
        if self.user_id is not None:
            found["user_id"] = self.user_id
        if self.session_id is not None:
            found["session_id"] = self.session_id
        return found


EMPTY: Final = Attributes()


def clean(
    tags: Iterable[object] | None = None,
    metadata: object = None,
    user_id: object = None,
    session_id: object = None,
    *,
    id_chars: int = 128,
) -> tuple[Attributes, list[str]]:
    """Valid attributes out of whatever a hook was given, and the reason of each part
    dropped. Never raises: a value of the wrong type is one more rejection."""
    rejected: list[str] = []
    kept_tags: list[str] = []
    if tags is not None:
        if isinstance(tags, str | bytes) or not isinstance(tags, Iterable):
            # A lone string is not a list of one-character tags.
            tags = [tags]
        for tag in tags:
            problem = tag_problem(tag)
            if problem is not None:
                rejected.append(problem)
            elif tag in kept_tags:
                continue
            elif len(kept_tags) >= MAX_TAGS:
                rejected.append(REJECT_TOO_MANY_TAGS)
            else:
                kept_tags.append(tag)  # type: ignore[arg-type]
    kept_metadata: dict[str, MetadataValue] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            rejected.append(REJECT_METADATA_TYPE)
        else:
            for key, value in metadata.items():
                problem = metadata_key_problem(key) or metadata_value_problem(value)
                if problem is not None:
                    rejected.append(problem)
                elif len(kept_metadata) >= MAX_METADATA_KEYS:
                    rejected.append(REJECT_TOO_MANY_METADATA_KEYS)
                else:
                    kept_metadata[key] = value
    ids: list[str | None] = []
    for value in (user_id, session_id):
        if value is None:
            ids.append(None)
        elif _text_ok(value, id_chars):
            ids.append(value)  # type: ignore[arg-type]
        else:
            rejected.append(REJECT_ID)
            ids.append(None)
    return Attributes(tuple(kept_tags), kept_metadata, ids[0], ids[1]), rejected


#: The attributes in force in this context (set by the plan, decision and actor scopes).
current: ContextVar[Attributes] = ContextVar("fleettrace_attributes", default=EMPTY)


def ttft_problem(value: object) -> str | None:
    """Why ``value`` is not a time to first token (finite ms, 0 to a day), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return REJECT_TTFT
    if not math.isfinite(value) or not 0 <= value <= 86_400_000:
        return REJECT_TTFT
    return None


#: The LLMTrace fields a call may set that :func:`take` cleans.
_CALL_FIELDS: Final = frozenset(("tags", "metadata", "user_id", "session_id", "ttft_ms"))


def given(
    tags: Iterable[object] | None,
    metadata: object,
    user_id: object,
    session_id: object,
) -> tuple[Attributes, list[str]] | None:
    """What a scope was given, cleaned; None when it was given no attributes at all."""
    if tags is None and metadata is None and user_id is None and session_id is None:
        return None
    return clean(tags, metadata, user_id, session_id)


def take(fields: dict[str, object], scope: Attributes) -> list[str]:
    """Replace the attribute fields of one call's ``LLMTrace`` fields by their valid
    parts merged into ``scope``; returns the reason of each part dropped."""
    if not scope and fields.keys().isdisjoint(_CALL_FIELDS):
        return []  # the common call: no attributes anywhere, nothing to do
    own, rejected = clean(
        fields.pop("tags", None),  # type: ignore[arg-type]
        fields.pop("metadata", None),
        fields.pop("user_id", None),
        fields.pop("session_id", None),
    )
    merged, over = own.inside(scope)
    fields.update(merged.fields())
    ttft = fields.pop("ttft_ms", None)
    if ttft is not None:
        if ttft_problem(ttft) is None:
            fields["ttft_ms"] = ttft
        else:
            rejected.append(REJECT_TTFT)
    return rejected + over
