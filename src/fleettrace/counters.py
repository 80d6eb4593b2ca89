"""Live-counter deltas of one batch, summed before they are sent.

Six ``HINCRBY`` per record cut the producer's throughput about threefold; summing
the deltas of a whole batch first turns them into one increment per distinct hash
field, which is what lets one script call per batch carry the counters.

What a record adds (hash layout in :mod:`fleettrace.keys`):

- an ``LLMTrace``: ``actor.token_usage{provider,model,token_type}`` count +1 and
  sum +tokens for each token type it reports: ``prompt`` and ``completion``, and the
  details ``cache_read``, ``cache_write``, ``reasoning``, ``audio_input``,
  ``audio_output`` when not ``None``; a call whose prompt or completion tokens are
  unknown adds count +1 (sum +0) to ``unknown`` instead of adding a guess;
  ``llm.retries_count{provider,model}`` count +1 and sum +retry_count when it
  retried; ``llm.errors_count{provider,model,error_type}`` count and sum +1 when it
  failed; ``llm.latency_ms{provider,model}`` count +1, its exact sum +latency and
  the sketch bucket of the latency +1 (as a sample's histogram, below), so its count
  is the calls; ``llm.cost_usd{provider,model}`` count +1 and sum +cost when it was
  priced (an unpriced call adds nothing there, never a zero);
  ``plan.cost_usd{plan}`` count +1 and sum +cost when it belongs to a plan and was
  priced.
- a ``MetricSample``: its own key and labels. Counters and histograms: count +1,
  the value added to the exact sum (``sum.whole`` and ``sum.nanos``, integers, see
  :func:`fleettrace.sketch.sum_parts`), and for histograms the fine sketch bucket the
  value falls into +1 (:func:`fleettrace.sketch.fine_stat`). Gauges: count +1 and
  ``value`` set to the batch's last value.

Counts and buckets go through ``HINCRBY``. Sums go through ``HINCRBYFLOAT``: the
trace-derived sums and those of per-plan series as floats into ``sum``; the exact
sums of samples as whole numbers into ``sum.whole`` and ``sum.nanos`` (Redis adds
them in a long double, exact for integers up to 2**64 on x86-64, and, unlike
``HINCRBY``, never fails the batch with an overflow).

Series of a per-plan metric (its labels include ``plan``) go to that plan's own hash
instead of the metric key's live hash (``plan_*`` mappings, keyed by plan id, fields
without the plan label), so they can expire with the plan; see
:meth:`fleettrace.keys.Keys.plan`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleettrace.keys import (
    STAT_COUNT,
    STAT_SUM,
    STAT_SUM_NANOS,
    STAT_SUM_WHOLE,
    STAT_VALUE,
    encode_labels,
    live_field,
    plan_field,
)
from fleettrace.metrics import PLAN_LABEL, MetricKey, MetricType
from fleettrace.model import LLMTrace, MetricSample
from fleettrace.sketch import SUM_SCALE, bucket_index, fine_stat, fine_stat_of, sum_parts

#: (metric key, hash field) of one statistic of one label set; for the ``plan_*``
#: mappings (plan id, plan hash field).
FieldRef = tuple[str, str]

_TOKENS = MetricKey.ACTOR_TOKEN_USAGE.value
_RETRIES = MetricKey.LLM_RETRIES_COUNT.value
_ERRORS = MetricKey.LLM_ERRORS_COUNT.value
_PLAN_COST = MetricKey.PLAN_COST_USD.value
_LATENCY = MetricKey.LLM_LATENCY_MS.value
_LATENCY_BUCKETS = MetricKey.LLM_LATENCY_MS.spec.buckets
_COST = MetricKey.LLM_COST_USD.value
#: token_type label value per LLMTrace field, in the order they are counted.
TOKEN_TYPES = (
    ("prompt", "prompt_tokens"),
    ("completion", "completion_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("audio_input", "audio_input_tokens"),
    ("audio_output", "audio_output_tokens"),
)
#: The detail token types (after prompt and completion), counted only when reported.
DETAIL_TOKEN_TYPES = TOKEN_TYPES[2:]
UNKNOWN_TOKEN_TYPE = "unknown"  # noqa: S105 (a label value, not a secret)


@dataclass(slots=True)
class CounterDeltas:
    """What one batch adds to the live hashes, one entry per distinct field."""

    increments: dict[FieldRef, int] = field(default_factory=dict)
    float_increments: dict[FieldRef, float] = field(default_factory=dict)
    values: dict[FieldRef, float] = field(default_factory=dict)
    plan_increments: dict[FieldRef, int] = field(default_factory=dict)
    plan_float_increments: dict[FieldRef, float] = field(default_factory=dict)
    plan_values: dict[FieldRef, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.increments)
            + len(self.float_increments)
            + len(self.values)
            + len(self.plan_increments)
            + len(self.plan_float_increments)
            + len(self.plan_values)
        )

    def metric_keys(self) -> list[str]:
        """The metric keys touched, each once, in a stable order."""
        seen: dict[str, None] = {}
        for mapping in (self.increments, self.float_increments, self.values):
            for metric_key, _ in mapping:
                seen[metric_key] = None
        return list(seen)

    def plan_ids(self) -> list[str]:
        """The plans touched, each once, in a stable order."""
        seen: dict[str, None] = {}
        for mapping in (self.plan_increments, self.plan_float_increments, self.plan_values):
            for plan_id, _ in mapping:
                seen[plan_id] = None
        return list(seen)

    def _observe(
        self, metric_key: str, labels: str, count: int, total: float, plan: str | None = None
    ) -> None:
        self._add(metric_key, labels, STAT_COUNT, count, plan)
        if plan is None:
            sum_ref = (metric_key, live_field(labels, STAT_SUM))
            floats = self.float_increments
        else:
            sum_ref = (plan, plan_field(metric_key, labels, STAT_SUM))
            floats = self.plan_float_increments
        floats[sum_ref] = floats.get(sum_ref, 0.0) + total

    def _add(self, metric_key: str, labels: str, stat: str, amount: int, plan: str | None) -> None:
        """An integer increment of one stat, in the live hash or in the plan's hash."""
        if plan is None:
            ref = (metric_key, live_field(labels, stat))
            ints = self.increments
        else:
            ref = (plan, plan_field(metric_key, labels, stat))
            ints = self.plan_increments
        ints[ref] = ints.get(ref, 0) + amount

    def _add_exact_sum(self, metric_key: str, labels: str, whole: int, nanos: int) -> None:
        """An exact sum's whole units and billionths (:func:`fleettrace.sketch.sum_parts`),
        the billionths carried into units so each increment of sum.nanos is under 1e9;
        a zero part would add a field that says nothing."""
        carry, nanos = divmod(nanos, SUM_SCALE)
        for stat, amount in ((STAT_SUM_WHOLE, whole + carry), (STAT_SUM_NANOS, nanos)):
            if amount:
                ref = (metric_key, live_field(labels, stat))
                self.float_increments[ref] = self.float_increments.get(ref, 0) + amount

    def _set(self, metric_key: str, labels: str, value: float, plan: str | None) -> None:
        if plan is None:
            self.values[(metric_key, live_field(labels, STAT_VALUE))] = value
        else:
            self.plan_values[(plan, plan_field(metric_key, labels, STAT_VALUE))] = value


def aggregate(traces: Iterable[LLMTrace], samples: Iterable[MetricSample]) -> CounterDeltas:
    """The summed counter deltas of a batch of traces and metric samples."""
    deltas = CounterDeltas()
    _add_traces(deltas, traces)
    _add_samples(deltas, samples)
    return deltas


def _add_traces(deltas: CounterDeltas, traces: Iterable[LLMTrace]) -> None:
    # Per-record work stays at a few dict updates keyed by plain tuples; label sets are
    # rendered once per distinct key at the end.
    # Per model: retried calls, retries, calls, latency in whole ms and billionths,
    # priced calls, calls with unknown tokens, then prompt and completion (calls that
    # reported them, tokens); beside it the priced cost and the latency sketch's buckets.
    per_model: dict[tuple[str, str], list[int]] = {}
    model_cost: dict[tuple[str, str], float] = {}
    latency_fine: dict[tuple[str, str], dict[tuple[int | None, int], int]] = {}
    tokens: dict[tuple[str, str, str], list[int]] = {}
    errors: dict[tuple[str, str, str], int] = {}
    plan_cost: dict[str, list[float]] = {}
    for trace in traces:
        values = trace.__dict__
        model_key = (values["provider"], values["model"])
        acc = per_model.get(model_key)
        if acc is None:
            acc = per_model[model_key] = [0] * 11
            latency_fine[model_key] = {}
        latency = values["latency_ms"]
        whole, nanos = sum_parts(latency)
        acc[2] += 1
        acc[3] += whole
        acc[4] += nanos
        index = bucket_index(latency) if latency > 0 else None  # None: zero's bucket
        bucket = (index, bisect_left(_LATENCY_BUCKETS, latency))
        fine = latency_fine[model_key]  # keyed by bucket, named once per batch below
        fine[bucket] = fine.get(bucket, 0) + 1
        prompt, completion = values["prompt_tokens"], values["completion_tokens"]
        if prompt is None or completion is None:
            acc[6] += 1
        if prompt is not None:
            acc[7] += 1
            acc[8] += prompt
        if completion is not None:
            acc[9] += 1
            acc[10] += completion
        for token_type, name in DETAIL_TOKEN_TYPES:
            value = values[name]
            if value is not None:
                _count_tokens(tokens, (*model_key, token_type), value)
        retries = values["retry_count"]
        if retries:
            acc[0] += 1
            acc[1] += retries
        if values["error"] is not None:
            error_key = (*model_key, trace.error_type or "error")
            errors[error_key] = errors.get(error_key, 0) + 1
        cost = values["cost_usd"]
        if cost is not None:
            acc[5] += 1
            model_cost[model_key] = model_cost.get(model_key, 0.0) + cost
            plan_id = values["plan_id"]
            if plan_id is not None:
                cost_acc = plan_cost.get(plan_id)
                if cost_acc is None:
                    cost_acc = plan_cost[plan_id] = [0.0, 0.0]
                cost_acc[0] += 1
                cost_acc[1] += cost

    for (provider, model), acc in per_model.items():
        for token_type, calls, total in (
            (UNKNOWN_TOKEN_TYPE, acc[6], 0),
            ("prompt", acc[7], acc[8]),
            ("completion", acc[9], acc[10]),
        ):
            if calls:
                tokens[(provider, model, token_type)] = [calls, total]
    for (provider, model, token_type), (calls, total) in tokens.items():
        labels = encode_labels(
            (("provider", provider), ("model", model), ("token_type", token_type))
        )
        deltas._observe(_TOKENS, labels, calls, total)
    for model_key, (retried, retries, calls, whole, nanos, priced_calls, *_) in per_model.items():
        labels = encode_labels((("provider", model_key[0]), ("model", model_key[1])))
        if retried:
            deltas._observe(_RETRIES, labels, retried, retries)
        if priced_calls:
            deltas._observe(_COST, labels, priced_calls, model_cost[model_key])
        deltas._add(_LATENCY, labels, STAT_COUNT, calls, None)
        deltas._add_exact_sum(_LATENCY, labels, whole, nanos)
        for (log_index, position), count in latency_fine[model_key].items():
            stat = fine_stat_of(log_index, position, _LATENCY_BUCKETS)
            deltas._add(_LATENCY, labels, stat, count, None)
    for (provider, model, error_type), failed in errors.items():
        labels = encode_labels(
            (("provider", provider), ("model", model), ("error_type", error_type))
        )
        deltas._observe(_ERRORS, labels, failed, failed)
    for plan_id, (priced, cost) in plan_cost.items():
        # In the plan's own hash, whose name says the plan: no other label.
        deltas._observe(_PLAN_COST, "", int(priced), cost, plan_id)


def _count_tokens(
    tokens: dict[tuple[str, str, str], list[int]], key: tuple[str, str, str], value: int
) -> None:
    acc = tokens.get(key)
    if acc is None:
        tokens[key] = [1, value]
    else:
        acc[0] += 1
        acc[1] += value


def _add_samples(deltas: CounterDeltas, samples: Iterable[MetricSample]) -> None:
    # Per sample: a few updates of one small list per series; field names are
    # rendered once per distinct series and stat at the end.
    rendered: dict[tuple[MetricKey, tuple[tuple[str, str], ...]], str] = {}
    series: dict[tuple[MetricKey, str, str | None], _Series] = {}
    for sample in samples:
        key = sample.key
        spec = key.spec
        pairs = sample.label_pairs
        plan = None
        if spec.per_plan:  # the plan names the hash; the field keeps the other labels
            plan = sample.labels[PLAN_LABEL]
            pairs = tuple(pair for pair in pairs if pair[0] != PLAN_LABEL)
        labels = rendered.get((key, pairs))
        if labels is None:
            labels = rendered[(key, pairs)] = encode_labels(pairs)
        acc = series.get((key, labels, plan))
        if acc is None:
            acc = series[(key, labels, plan)] = _Series()
        value = sample.value
        acc.count += 1
        if spec.type is MetricType.GAUGE:
            acc.last = value
            continue
        if plan is not None:  # per-plan counters: the plan's float sum, as readers expect
            acc.float_sum += value
        else:
            whole, nanos = sum_parts(value)
            acc.whole += whole
            acc.nanos += nanos
        if spec.type is MetricType.HISTOGRAM:
            stat = fine_stat(value, spec.buckets)
            acc.fine[stat] = acc.fine.get(stat, 0) + 1

    for (key, labels, plan), acc in series.items():
        metric_key = key.value
        deltas._add(metric_key, labels, STAT_COUNT, acc.count, plan)
        if acc.last is not None:
            deltas._set(metric_key, labels, acc.last, plan)
            continue
        if plan is not None:
            floats = deltas.plan_float_increments
            ref = (plan, plan_field(metric_key, labels, STAT_SUM))
            floats[ref] = floats.get(ref, 0.0) + acc.float_sum
        deltas._add_exact_sum(metric_key, labels, acc.whole, acc.nanos)
        for stat, count in acc.fine.items():
            deltas._add(metric_key, labels, stat, count, plan)


@dataclass(slots=True)
class _Series:
    """What one batch's samples add to one series."""

    count: int = 0
    whole: int = 0
    nanos: int = 0
    float_sum: float = 0.0
    last: float | None = None
    fine: dict[str, int] = field(default_factory=dict)
