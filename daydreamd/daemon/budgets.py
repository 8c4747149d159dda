"""Dollar budgets of approvals: what each has spent, and which may start no more calls.

``daydreamctl approve --budget-usd`` records a budget with the approval. Spend is read back from
the recorded attempts (reported cost, else tokens x price) when the service starts or a
budgeted approval arrives, then counted as calls finish. An approval is exhausted when one more
call at its average cost, with the calls already in flight, would pass its budget: its queued
work stays queued. Until one of its calls has finished there is no average to go by, so a
budgeted approval runs one call at a time until then: a first burst of calls of unknown cost
cannot pass the budget by a whole round of concurrency.

A call counts from the moment it starts (the pool checks as it starts each one); work the pool
has merely read ahead is not started and costs nothing. Work of an approval newer than the last
refresh (:meth:`Budgets.unknown`) waits for the next one: an approval's rows are queued before
its budget is read back, and a pool that started them meanwhile would not know to hold them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from daydreamd.core.pricing import Price
from daydreamd.core.status import BudgetStatus
from daydreamd.storage.store import Store

PriceOf = Callable[[str], Price | None]
"""The price of a model id (None: unknown)."""


class Budgets:
    """Budgeted approvals and their spend."""

    def __init__(self) -> None:
        self.budgets: dict[int, float] = {}
        """Approval id -> dollars."""
        self.spend: defaultdict[int, float] = defaultdict(float)
        self.calls: Counter[int] = Counter()
        self.known_through = 0
        """The newest approval id at the last refresh: later ones may carry a budget not read yet."""

    async def refresh(self, store: Store, price_of: PriceOf) -> None:
        """Reload budgeted approvals and what they have spent so far."""
        self.known_through, self.budgets = await store.budgets()
        self.spend.clear()
        self.calls.clear()
        for row in await store.usage_by_approval(list(self.budgets)):
            price = price_of(row["model"])
            priced = price.cost(row["unpriced_prompt"], row["unpriced_completion"]) if price else 0.0
            self.spend[row["approval_id"]] += (row["cost"] or 0.0) + priced
            self.calls[row["approval_id"]] += row["calls"]

    def unknown(self, approval_id: int) -> bool:
        """True for an approval newer than the last refresh (its budget, if any, is not known)."""
        return approval_id > self.known_through

    def record(self, approval_id: int | None, cost: float) -> None:
        """Count one finished call of ``approval_id`` (ignored unless it has a budget)."""
        if approval_id is not None and approval_id in self.budgets:
            self.spend[approval_id] += cost
            self.calls[approval_id] += 1

    def exhausted(self, in_flight: Mapping[int, int]) -> list[int]:
        """Approvals where one more call would pass the budget (spent + ``in_flight`` calls per approval)."""
        exhausted = []
        for approval_id, budget in self.budgets.items():
            spent, calls = self.spend[approval_id], self.calls[approval_id]
            per_call = spent / calls if calls else 0.0
            running = in_flight.get(approval_id, 0)
            unknown = calls == 0 and running > 0  # no cost known yet: one call at a time
            if unknown or spent + (running + 1) * per_call > budget or spent >= budget:
                exhausted.append(approval_id)
        return exhausted

    def statuses(self, exhausted: set[int]) -> dict[str, BudgetStatus]:
        """Every budget for the status, by approval id as text."""
        return {
            str(approval_id): BudgetStatus(
                budget_usd=budget,
                spent_usd=round(self.spend[approval_id], 6),
                exhausted=approval_id in exhausted,
            )
            for approval_id, budget in sorted(self.budgets.items())
        }
