"""Custom prices from a file (``FLEETTRACE_PRICES``): TOML or JSON, read once per emitter.

They price custom, fine-tuned or self-hosted models genai-prices does not know, and
replace genai-prices' price for a model they list. Each entry names a provider and a
model (matched without regard to case) and prices in USD per million tokens under
genai-prices' own price keys (``input_mtok``, ``output_mtok``, ``cache_read_mtok``,
``cache_write_mtok``, ``output_reasoning_mtok``, ``input_audio_mtok``,
``output_audio_mtok``, ...; ``requests_kcount`` per thousand calls). A price may be
tiered like genai-prices' own: ``{base = 1.25, tiers = [{start = 128000, price = 2.5}]}``
(above ``start`` input tokens, every token pays the tier's price)::

    [[prices]]
    provider = "self-hosted"
    model = "llama-3.1-70b-support-ft"
    input_mtok = 0.60
    output_mtok = 0.80

The same as JSON: ``{"prices": [{"provider": "self-hosted", ...}]}``. A file that
cannot be read or does not mean a price list is refused with a one-line
:class:`~fleettrace.errors.ConfigurationError` naming the file and the entry.
"""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal, InvalidOperation
from os import PathLike
from pathlib import Path
from typing import Any, Final

from genai_prices.types import ModelPrice, Tier, TieredPrices
from genai_prices.units import _get_registry

from fleettrace.errors import ConfigurationError
from fleettrace.settings import PRICES_VARIABLE, first_set

PRICES_ENV: Final = PRICES_VARIABLE
_NAME_KEYS: Final = ("provider", "model")


def prices_path_from_env() -> str | None:
    """``FLEETTRACE_PRICES``, else None."""
    return first_set((PRICES_VARIABLE,))


def load_prices(path: str | PathLike[str]) -> dict[tuple[str, str], ModelPrice]:
    """The prices in a file, keyed by (provider, model) in lower case."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"price file {file}: cannot read it ({error})") from None
    try:
        if file.suffix.lower() == ".json":
            document: Any = json.loads(text)
        else:
            document = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if file.suffix.lower() == ".json" else "TOML"
        raise ConfigurationError(f"price file {file}: not valid {kind} ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("prices"), list):
        raise ConfigurationError(f"price file {file}: expected a list named 'prices'")
    prices: dict[tuple[str, str], ModelPrice] = {}
    for index, entry in enumerate(document["prices"], 1):
        where = f"price file {file}, entry {index}"
        key, price = _entry(entry, where)
        if key in prices:
            raise ConfigurationError(f"{where}: {key[0]}/{key[1]} is listed twice")
        prices[key] = price
    return prices


def _entry(entry: object, where: str) -> tuple[tuple[str, str], ModelPrice]:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: expected a table of provider, model and prices")
    names = []
    for name in _NAME_KEYS:
        value = entry.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{where}: '{name}' must be a non-empty string")
        names.append(value.strip().lower())
    registry = _get_registry()
    values: dict[str, Decimal | TieredPrices] = {}
    for price_key, value in entry.items():
        if price_key in _NAME_KEYS:
            continue
        try:
            registry.unit_for_price_key(price_key)
        except KeyError:
            raise ConfigurationError(
                f"{where}: unknown price key {price_key!r} (genai-prices' keys, such as "
                "input_mtok, output_mtok, cache_read_mtok, cache_write_mtok)"
            ) from None
        values[price_key] = _price(value, f"{where}, {price_key}")
    if not values:
        raise ConfigurationError(f"{where}: no price given")
    return (names[0], names[1]), ModelPrice(**values)


def _amount(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(f"{where}: expected a number of USD, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigurationError(f"{where}: expected a number of USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(f"{where}: must be a finite number >= 0, got {value!r}")
    return amount


def _price(value: object, where: str) -> Decimal | TieredPrices:
    if not isinstance(value, dict):
        return _amount(value, where)
    tiers = value.get("tiers")
    if set(value) != {"base", "tiers"} or not isinstance(tiers, list) or not tiers:
        raise ConfigurationError(f"{where}: a tiered price is {{base = N, tiers = [...]}}")
    parsed = []
    for tier in tiers:
        start = tier.get("start") if isinstance(tier, dict) else None
        if type(start) is not int or start < 0 or set(tier) != {"start", "price"}:
            raise ConfigurationError(f"{where}: each tier is {{start = TOKENS, price = N}}")
        parsed.append(Tier(start=start, price=_amount(tier["price"], where)))
    return TieredPrices(base=_amount(value["base"], where), tiers=parsed)
