"""Prices an LLM call from provider, model and tokens with ``genai-prices`` (offline).

A lookup costs tens of microseconds, so results are cached per (provider, model,
tokens): agents repeat the same shapes of call, and the cache keeps the common case
off the hot path. ``genai-prices``' own updater downloads prices and stays off.
"""

from __future__ import annotations

from functools import lru_cache

from genai_prices import Usage, calc_price


@lru_cache(maxsize=16384)
def price_usd(
    provider: str, model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """The cost in USD, or ``None`` when genai-prices does not know the provider or model."""
    try:
        calculation = calc_price(
            Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return None
    return float(calculation.total_price)
