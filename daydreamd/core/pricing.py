"""What calls cost: prices per model, and a call's cost from what the provider reported (pure).

A provider's reported cost wins (OpenRouter reports it per call). Otherwise the cost is
tokens x price, with prices from ``llm_models.csv`` (``input_usd_per_mtok``,
``output_usd_per_mtok``) or ``[prices.<llm_model_id>]`` in the config. A model without a price
has an unknown cost, and everything that shows money says so instead of showing zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daydreamd.core.experiment import LlmModel

INPUT_COLUMN = "input_usd_per_mtok"
OUTPUT_COLUMN = "output_usd_per_mtok"


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: float | None, completion_tokens: float | None) -> float:
        """Dollars for this many tokens (unknown counts count as zero)."""
        return (
            (prompt_tokens or 0) * self.input_per_mtok + (completion_tokens or 0) * self.output_per_mtok
        ) / 1e6


def price_for(model: LlmModel | None, configured: Mapping[str, Price]) -> Price | None:
    """The model's price from its CSV row, else from the config, else None (unknown)."""
    if model is None:
        return None
    text_in, text_out = model.extra_value(INPUT_COLUMN), model.extra_value(OUTPUT_COLUMN)
    try:
        if text_in and text_out:
            return Price(float(text_in), float(text_out))
    except ValueError:
        pass
    return configured.get(model.model_id)


def call_cost(
    reported: float | None, prompt_tokens: float | None, completion_tokens: float | None, price: Price | None
) -> float | None:
    """A call's dollars: reported cost, else tokens x price, else None (unknown)."""
    if reported is not None:
        return reported
    if price is None:
        return None
    return price.cost(prompt_tokens, completion_tokens)


def configured_prices(prices: tuple[tuple[str, object], ...]) -> dict[str, Price]:
    """``[prices.<id>]`` tables from the settings as Price values."""
    return {
        model_id: Price(getattr(p, "input_usd_per_mtok", 0.0), getattr(p, "output_usd_per_mtok", 0.0))
        for model_id, p in prices
    }
