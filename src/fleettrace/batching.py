"""How the records the sender takes from the buffer become script calls.

A batch of records becomes one call (one stream entry per kind plus its counter
deltas) unless its encoded records would make an entry larger than
``MAX_ENTRY_BYTES``: a thousand records at the field maxima encode to about 36 MB,
which the worker refuses unread. Such a batch is cut, in record order, into calls
whose entries each stay under the limit, and each call carries the counter deltas
of its own records only, so a live counter still never counts a record the stream
does not hold. A single record always fits: the model's field limits keep one
record far below the limit.

Every call gets the next sequence number of its emitter (see
:mod:`fleettrace.batch_script`), in the order the sender will send them.

Tool calls and plan records (the plan tree, :mod:`fleettrace.tree_records`) go to the
trace stream as entries of their own kinds, in calls of their own after the batch's
call (:func:`tree_calls`): the script writes one entry per stream per call, and
these records change no live counter (a tool's metrics travel as metric samples),
so nothing is lost by applying them separately. A batch without them is one call,
as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from fleettrace.batch_script import BatchCall, build_call
from fleettrace.codec import (
    RECORD_SEPARATOR,
    Kind,
    encode_batch,
    encode_lines,
    encode_record,
    new_batch_id,
)
from fleettrace.counters import aggregate
from fleettrace.keys import FIELD_DATA, MAX_ENTRY_BYTES, PLAN_TTL_S, Keys
from fleettrace.model import LLMTrace, MetricSample
from fleettrace.tree_records import AnyRecord, PlanRecord, ToolCall

#: Bytes of an entry besides its records: five one-byte field names, the version,
#: kind, 32-digit batch id and count values (rounded up).
ENVELOPE_BYTES: Final = 64

Record = AnyRecord


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """The calls that carry a batch, and how many of its records JSON cannot carry."""

    calls: list[BatchCall]
    unencodable: int


def entry_bytes(entry: dict[bytes, bytes]) -> int:
    """The size of a stream entry as the limit counts it: names and values."""
    return sum(len(name) + len(value) for name, value in entry.items())


def _cut(lines: list[bytes], budget: int) -> list[tuple[int, int]]:
    """Split lines into consecutive (start, end) runs whose joined size fits budget."""
    runs: list[tuple[int, int]] = []
    start = size = 0
    for index, line in enumerate(lines):
        if index > start and size + len(line) > budget:
            runs.append((start, index))
            start, size = index, 0
        size += len(line) + len(RECORD_SEPARATOR)
    runs.append((start, len(lines)))
    return runs


def _encodable(records: Sequence[Record]) -> list[Record]:
    good = []
    for record in records:
        try:
            encode_record(record)
        except orjson.JSONEncodeError:
            continue
        good.append(record)
    return good


def encode_calls(
    keys: Keys,
    emitter_id: str,
    next_seq: Callable[[], int],
    taken: Sequence[Record],
    dropped: int,
    *,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    plan_ttl_s: int = PLAN_TTL_S,
) -> EncodedBatch:
    """The calls that apply ``taken`` (and report ``dropped`` records), in order.

    A record that pydantic accepted but JSON cannot carry (a lone surrogate) is left
    out and counted in ``unencodable`` (and in the first call's dropped figure).
    """
    tree = [r for r in taken if isinstance(r, ToolCall | PlanRecord)]
    if tree:
        flat = [r for r in taken if not isinstance(r, ToolCall | PlanRecord)]
        good = _encodable(tree)
        bad = len(tree) - len(good)
        encoded = (
            encode_calls(
                keys,
                emitter_id,
                next_seq,
                flat,
                dropped + bad,
                max_entry_bytes=max_entry_bytes,
                plan_ttl_s=plan_ttl_s,
            )
            if flat or dropped or bad
            else EncodedBatch([], 0)
        )
        calls = tree_calls(keys, emitter_id, next_seq, good, max_entry_bytes)  # type: ignore[arg-type]
        return EncodedBatch([*encoded.calls, *calls], encoded.unencodable + bad)
    traces = [r for r in taken if isinstance(r, LLMTrace)]
    samples = [r for r in taken if isinstance(r, MetricSample)]
    batch_id = new_batch_id()
    try:
        trace_entry = encode_batch(Kind.TRACE, traces, batch_id) if traces else None
        metric_entry = encode_batch(Kind.METRIC, samples, batch_id) if samples else None
    except orjson.JSONEncodeError:
        good = _encodable(taken)
        bad = len(taken) - len(good)
        encoded = encode_calls(
            keys,
            emitter_id,
            next_seq,
            good,
            dropped + bad,
            max_entry_bytes=max_entry_bytes,
            plan_ttl_s=plan_ttl_s,
        )
        return EncodedBatch(encoded.calls, encoded.unencodable + bad)

    def call(
        part_trace_entry: dict[bytes, bytes] | None,
        part_metric_entry: dict[bytes, bytes] | None,
        part_traces: list[LLMTrace],
        part_samples: list[MetricSample],
        part_dropped: int,
    ) -> BatchCall:
        """The next call of this emitter, for these entries and the records in them."""
        return build_call(
            keys,
            emitter_id,
            next_seq(),
            trace_entry=part_trace_entry,
            metric_entry=part_metric_entry,
            deltas=aggregate(part_traces, part_samples),
            records=len(part_traces) + len(part_samples),
            dropped=part_dropped,
            plan_ttl_s=plan_ttl_s,
        )

    fits = all(
        entry is None or entry_bytes(entry) <= max_entry_bytes
        for entry in (trace_entry, metric_entry)
    )
    if fits:
        return EncodedBatch([call(trace_entry, metric_entry, traces, samples, dropped)], 0)
    budget = max_entry_bytes - ENVELOPE_BYTES
    trace_lines = trace_entry[FIELD_DATA].split(RECORD_SEPARATOR) if trace_entry else []
    metric_lines = metric_entry[FIELD_DATA].split(RECORD_SEPARATOR) if metric_entry else []
    trace_runs = _cut(trace_lines, budget) if trace_lines else []
    metric_runs = _cut(metric_lines, budget) if metric_lines else []
    calls = []
    for index in range(max(len(trace_runs), len(metric_runs))):
        part_id = new_batch_id()
        part_traces: list[LLMTrace] = []
        part_samples: list[MetricSample] = []
        part_trace_entry = part_metric_entry = None
        if index < len(trace_runs):
            start, end = trace_runs[index]
            part_traces = traces[start:end]
            part_trace_entry = encode_lines(Kind.TRACE, trace_lines[start:end], part_id)
        if index < len(metric_runs):
            start, end = metric_runs[index]
            part_samples = samples[start:end]
            part_metric_entry = encode_lines(Kind.METRIC, metric_lines[start:end], part_id)
        calls.append(
            call(
                part_trace_entry,
                part_metric_entry,
                part_traces,
                part_samples,
                dropped if index == 0 else 0,
            )
        )
    return EncodedBatch(calls, 0)


def tree_calls(
    keys: Keys,
    emitter_id: str,
    next_seq: Callable[[], int],
    records: Sequence[ToolCall | PlanRecord],
    max_entry_bytes: int = MAX_ENTRY_BYTES,
) -> list[BatchCall]:
    """One call per kind (tool calls, then plan records) writing an entry of that kind
    to the trace stream, cut like any entry to stay under ``max_entry_bytes``. The
    records must be encodable (see :func:`encode_calls`)."""
    calls: list[BatchCall] = []
    for kind, model in ((Kind.TOOL, ToolCall), (Kind.PLAN, PlanRecord)):
        lines = [encode_record(r) for r in records if type(r) is model]
        if not lines:
            continue
        for start, end in _cut(lines, max_entry_bytes - ENVELOPE_BYTES):
            entry = encode_lines(kind, lines[start:end], new_batch_id())
            calls.append(
                build_call(
                    keys,
                    emitter_id,
                    next_seq(),
                    trace_entry=entry,
                    metric_entry=None,
                    deltas=aggregate((), ()),
                    records=end - start,
                    dropped=0,
                )
            )
    return calls
