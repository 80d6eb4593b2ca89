"""Prices LLM calls with ``genai-prices`` (offline), once per model and price period.

``genai_prices.calc_price`` costs 50-350 µs a call here, most of it spent resolving
the model, choosing its price for the call's time and decomposing the usage against
its unit registry: work that depends on the provider, the model and the price period,
not on the tokens. So a :class:`Pricer` looks the model up once per (provider, model),
picks its :class:`~genai_prices.types.ModelPrice` once per (provider, model, UTC day)
unless the price changes within a day (off-peak hours), and compiles each price
once into the few ``Decimal`` operations ``calc_price`` performs for it; a call is
then priced with those operations in the library's order, which gives the same
``Decimal`` and so the same float as ``calc_price`` (``tests/test_pricing.py``
compares them, cached, reasoning, audio and tiered prices included).

A price the compiled form cannot be sure to reproduce (a unit whose count the
library would infer from two reported ones, a price key it does not know) is left to
the library's own per-price calculation, which is exact by definition and slower.

Pricing runs on the emitter's sender thread (:mod:`fleettrace.sending`), never on
the caller's. Tokens map to genai-prices' usage keys: ``prompt_tokens`` ->
``input_tokens`` (the whole input), ``completion_tokens`` -> ``output_tokens``,
``cache_read_tokens``, ``cache_write_tokens``, ``reasoning_tokens`` ->
``output_reasoning_tokens``, ``audio_input_tokens`` -> ``input_audio_tokens``,
``audio_output_tokens`` -> ``output_audio_tokens``. A detail left ``None`` is not
reported. A call whose tokens are unknown, or whose model is unknown, is unpriced
(``None``), never zero. ``genai-prices``' own updater downloads prices and stays off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, TypeAlias

from fleettrace.model import LLMTrace
from fleettrace.tree_records import AnyRecord

if TYPE_CHECKING:
    # genai-prices (and its price data) loads on the first price asked for, on the
    # emitter's sender thread: not with `import fleettrace`.
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, ModelPrice, TieredPrices
    from genai_prices.units import UnitDef

logger = logging.getLogger("fleettrace.pricing")

Record = AnyRecord

#: LLMTrace field -> genai-prices usage key.
USAGE_KEYS: Final = {
    "prompt_tokens": "input_tokens",
    "completion_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "reasoning_tokens": "output_reasoning_tokens",
    "audio_input_tokens": "input_audio_tokens",
    "audio_output_tokens": "output_audio_tokens",
}
_REQUESTS: Final = "requests"
#: Always reported when a call is priced (a call with unknown tokens is not priced).
_ALWAYS_REPORTED: Final = frozenset(("input_tokens", "output_tokens"))

_ZERO: Final = Decimal(0)

#: A custom price, keyed by (provider, model) in lower case (see price_overrides).
Overrides: TypeAlias = "Mapping[tuple[str, str], ModelPrice]"


def _descends(ancestor: UnitDef, unit: UnitDef) -> bool:
    return ancestor.dimensions.items() <= unit.dimensions.items()


@dataclass(frozen=True, slots=True)
class CompiledPrice:
    """One ModelPrice as the operations calc_price performs for it.

    ``leaves``: per priced unit, in the library's decomposition order (most specific
    first), its usage key and the positions (in ``leaves``) of the priced units that
    are parts of it. ``terms``: per price, in the price's own key order, the position
    of its unit in ``leaves`` (-1: the per-request count, 1), the price and its
    ``per``. ``exact`` false: leave this price to the library.
    """

    model_price: ModelPrice
    leaves: tuple[tuple[str, tuple[int, ...]], ...]
    terms: tuple[tuple[int, Decimal | TieredPrices, int], ...]
    tiered: bool
    exact: bool

    def total(self, usage: dict[str, int]) -> Decimal | None:
        """The total price of ``usage`` (reported usage keys only); None when the
        library would refuse the usage (a part larger than its whole)."""
        if not self.exact:
            from genai_prices import Usage  # noqa: PLC0415

            try:
                return self.model_price.calc_price(Usage(**usage))["total_price"]
            except ValueError:
                return None
        leaf_values: list[int] = []
        for key, parts in self.leaves:
            value = usage.get(key, 0)
            if parts:
                for part in parts:
                    value -= leaf_values[part]
                if value < 0:
                    return None
            leaf_values.append(value)
        input_tokens = usage.get("input_tokens", 0) if self.tiered else 0
        total = _ZERO
        for position, price, per in self.terms:
            count = 1 if position < 0 else leaf_values[position]
            if not count:
                # The library adds an exact zero here: leaving it out changes no value.
                continue
            if isinstance(price, Decimal):
                total += price * count / per
            else:  # TieredPrices (compile_price admits nothing else)
                applicable = price.base
                for tier in reversed(price.tiers):
                    if input_tokens > tier.start:
                        applicable = tier.price
                        break
                # Decimal times int is Decimal(int) exactly: the library's product.
                total += applicable * count / per
        return total


def compile_price(model_price: ModelPrice) -> CompiledPrice:
    """Compile a price; anything unusual makes it inexact (left to the library)."""
    from genai_prices.types import TieredPrices  # noqa: PLC0415
    from genai_prices.units import _get_registry  # noqa: PLC0415
    from genai_prices.validation import validate_priced_units  # noqa: PLC0415

    registry = _get_registry()
    inexact = CompiledPrice(model_price, (), (), False, False)
    priced: list[tuple[UnitDef, Decimal | TieredPrices]] = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        try:
            unit = registry.unit_for_price_key(key)
        except KeyError:
            return inexact
        if isinstance(value, Decimal):
            if not value.is_finite() or value < 0:
                return inexact
        elif not isinstance(value, TieredPrices):
            return inexact
        priced.append((unit, value))
    try:
        # The library checks the price's units at every call and refuses some sets.
        validate_priced_units(tuple(unit for unit, _ in priced), registry)
    except ValueError:
        return inexact
    ours = [registry.units[key] for key in USAGE_KEYS.values()]
    token_units = [unit for unit, _ in priced if unit.usage_key != _REQUESTS]
    for unit in token_units:
        if unit.usage_key in _ALWAYS_REPORTED:
            continue
        # A priced unit the record may not report is inferred by the library: zero,
        # unless a reported unit is a part of it or two reported units join into it.
        others = [other for other in ours if other is not unit]
        if any(_descends(unit, other) for other in others):
            return inexact
        for i, left in enumerate(others):
            for right in others[i + 1 :]:
                if (
                    left.is_compatible_with(right)
                    and not _descends(left, right)
                    and not _descends(right, left)
                    and dict(unit.dimensions) == {**left.dimensions, **right.dimensions}
                ):
                    return inexact
    # The library's order: the most specific units first, so every part's leaf value
    # is known before its whole's.
    ordered = sorted(token_units, key=lambda u: (-len(u.dimensions), u.usage_key))
    leaves = tuple(
        (
            unit.usage_key,
            tuple(j for j, part in enumerate(ordered[:i]) if _descends(unit, part)),
        )
        for i, unit in enumerate(ordered)
    )
    position = {unit.usage_key: i for i, unit in enumerate(ordered)}
    terms = tuple(
        (-1 if unit.usage_key == _REQUESTS else position[unit.usage_key], price, unit.per)
        for unit, price in priced
    )
    tiered = any(isinstance(price, TieredPrices) for _, price in priced)
    return CompiledPrice(model_price, leaves, terms, tiered, True)


def usage_of(trace: LLMTrace) -> dict[str, int] | None:
    """The record's tokens as genai-prices usage keys; None when they are unknown."""
    values = trace.__dict__
    if values["prompt_tokens"] is None or values["completion_tokens"] is None:
        return None
    usage = {}
    for name, key in USAGE_KEYS.items():
        value = values[name]
        if value is not None:
            usage[key] = value
    return usage


_set = object.__setattr__


def with_cost(trace: LLMTrace, cost: float) -> LLMTrace:
    """``trace.model_copy(update={"cost_usd": cost})`` in a third of its time (the
    sender does this for every priced call): the same values, the same set fields,
    built the way pydantic's own copy builds a model (``__dict__`` and the three
    ``__pydantic_*__`` slots), without validating again values already validated."""
    values = trace.__dict__.copy()
    values["cost_usd"] = cost
    priced = LLMTrace.__new__(LLMTrace)
    _set(priced, "__dict__", values)
    _set(priced, "__pydantic_fields_set__", trace.__pydantic_fields_set__ | {"cost_usd"})
    _set(priced, "__pydantic_extra__", None)
    _set(priced, "__pydantic_private__", None)
    return priced


def _daily(model: ModelInfo) -> bool:
    """Whether the model's price can only change at a UTC day boundary."""
    from genai_prices.types import ConditionalPrice, ModelPrice, StartDateConstraint  # noqa: PLC0415

    if isinstance(model.prices, ModelPrice):
        return True
    return all(
        isinstance(p, ConditionalPrice)
        and (p.constraint is None or isinstance(p.constraint, StartDateConstraint))
        for p in model.prices
    )


#: Entries a cache of a Pricer holds before it starts over (one per model, or per
#: model and UTC day of the calls): ample for any fleet, and a bound on memory for a
#: process that runs for months or sees model names made up at random.
MAX_CACHED: Final = 4096


class Pricer:
    """Prices records; caches per (provider, model) and price period. Thread-safe:
    a lost race computes the same entry twice; each cache is bounded (MAX_CACHED)."""

    def __init__(self, overrides: Overrides | None = None) -> None:
        self._overrides = {key: compile_price(price) for key, price in (overrides or {}).items()}
        self._models: dict[tuple[str, str], ModelInfo | None] = {}
        self._by_day: dict[tuple[str, str, date], CompiledPrice] = {}
        self._compiled: dict[int, CompiledPrice] = {}
        self._snapshot: object = None
        self._get_snapshot: Callable[[], DataSnapshot] | None = None
        self._lock = threading.Lock()

    def price(self, trace: LLMTrace) -> float | None:
        """The cost of the call in USD; None when it cannot be priced."""
        usage = usage_of(trace)
        if usage is None:
            return None
        compiled = self._price_for(trace.provider, trace.model, trace.started_at)
        if compiled is None:
            return None
        total = compiled.total(usage)
        return None if total is None else float(total)

    def price_records(self, records: Sequence[Record]) -> list[Record]:
        """The records with ``cost_usd`` filled in where the caller left it out."""
        return [self._priced(record) for record in records]

    def _priced(self, record: Record) -> Record:
        if type(record) is not LLMTrace or "cost_usd" in record.__pydantic_fields_set__:
            return record
        try:
            cost = self.price(record)
        except Exception:
            logger.warning("fleettrace could not price a call of %s", record.model, exc_info=True)
            return record
        if cost is None:
            return record
        return with_cost(record, cost)

    def _price_for(self, provider: str, model: str, at: datetime) -> CompiledPrice | None:
        key = (provider.lower(), model.lower())
        override = self._overrides.get(key)
        if override is not None:
            return override
        get_snapshot = self._get_snapshot
        if get_snapshot is None:
            from genai_prices import data_snapshot  # noqa: PLC0415

            get_snapshot = self._get_snapshot = data_snapshot.get_snapshot
        snapshot = get_snapshot()
        if snapshot is not self._snapshot:  # prices updated: start over
            with self._lock:
                self._models.clear()
                self._by_day.clear()
                self._compiled.clear()
                self._snapshot = snapshot
        try:
            info = self._models[key]
        except KeyError:
            try:
                _, info = snapshot.find_provider_model(model, None, provider, None)
            except LookupError:
                info = None
            if len(self._models) >= MAX_CACHED:
                self._models.clear()
            self._models[key] = info
        if info is None:
            return None
        if _daily(info):
            day_key = (*key, at.date())
            compiled = self._by_day.get(day_key)
            if compiled is None:
                if len(self._by_day) >= MAX_CACHED:
                    self._by_day.clear()
                compiled = self._by_day[day_key] = self._compile(info.get_prices(at))
            return compiled
        return self._compile(info.get_prices(at))

    def _compile(self, model_price: ModelPrice) -> CompiledPrice:
        compiled = self._compiled.get(id(model_price))
        if compiled is None or compiled.model_price is not model_price:
            compiled = self._compiled[id(model_price)] = compile_price(model_price)
        return compiled


_default_pricer = Pricer()


def price_trace(trace: LLMTrace, pricer: Pricer | None = None) -> float | None:
    """The cost of a call now, on the caller's thread (what the sender would compute,
    without price overrides unless ``pricer`` has them). ``cost_usd`` if it was set."""
    if "cost_usd" in trace.model_fields_set:
        return trace.cost_usd
    return (pricer or _default_pricer).price(trace)


def price_usd(
    provider: str, model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """genai-prices' own price of a call made now; ``None`` for an unknown model."""
    from genai_prices import Usage, calc_price  # noqa: PLC0415

    try:
        calculation = calc_price(
            Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return None
    return float(calculation.total_price)
