"""What the pool has done since the service started: calls, tokens, dollars, outcomes, rates.

Counted here and nowhere else, read by ``/metrics`` and ``/v1/status`` through the pool's
snapshot. Everything restarts from zero with the service (Prometheus handles restarts).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

from daydreamd.core.pricing import Price, call_cost
from daydreamd.llm.calls import AttemptRecord
from daydreamd.llm.types import Usage

RATE_HISTORY = 100_000
"""Finish times kept per stage for the rates (more than any window sees at realistic speeds)."""


class Counters:
    """Counters of calls (per model and outcome), tokens, dollars and finished generations."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        """Finished generations: ``done`` or their failure kind."""
        self.calls: Counter[tuple[str, str]] = Counter()
        """(model, attempt outcome) -> attempts."""
        self.tokens: Counter[tuple[str, str]] = Counter()
        """(model, prompt|completion|reasoning) -> tokens."""
        self.cost: defaultdict[str, float] = defaultdict(float)
        """Model -> dollars."""
        self.unpriced_calls: Counter[str] = Counter()
        """Model -> calls whose cost is unknown (counted as 0)."""
        self.finished: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=RATE_HISTORY))
        """Stage -> monotonic times generations finished."""

    def attempt(self, model_id: str, record: AttemptRecord, price: Price | None) -> float | None:
        """Count one LLM attempt; its cost in dollars (0 when unknown), or None when it reported no usage."""
        self.calls[(model_id, record.outcome)] += 1
        usage = record.usage
        if usage is None:
            return None
        cost = call_cost(usage.cost, usage.prompt_tokens, usage.completion_tokens, price)
        self._spend(model_id, usage, cost)
        return cost or 0.0

    def batch_call(self, model_id: str, outcome: str, usage: Usage | None, cost: float | None) -> None:
        """Count one call made in a batch (its cost already at the batch price; None: unknown)."""
        self.calls[(model_id, outcome)] += 1
        if usage is not None:
            self._spend(model_id, usage, cost)

    def _spend(self, model_id: str, usage: Usage, cost: float | None) -> None:
        for kind, n in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            self.tokens[(model_id, kind)] += n or 0
        if cost is None:
            self.unpriced_calls[model_id] += 1
        self.cost[model_id] += cost or 0.0

    def generation(self, stage: str, outcome: str, now: float) -> None:
        """Count a finished generation (``outcome``: ``done`` or its failure kind)."""
        self.outcomes[outcome] += 1
        self.finished[stage].append(now)

    def rates(self, now: float, window_s: float = 300.0) -> dict[str, float]:
        """Generations finished per minute, per stage, over the last ``window_s`` (or since start)."""
        rates = {}
        for stage, times in self.finished.items():
            while times and times[0] < now - window_s:
                times.popleft()
            if times:
                span = max(now - times[0], 60.0)
                rates[stage] = round(len(times) * 60.0 / span, 1)
        return rates

    def spent_usd(self) -> float:
        """Dollars since start over every model."""
        return round(sum(self.cost.values()), 6)
