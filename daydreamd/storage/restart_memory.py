"""What a restart keeps of the pool: learned concurrency, recent requests, pauses.

A restarted service resumes each model at the concurrency it had learned, refills its rate
windows with the requests of the last minute (so a quick restart cannot overshoot a provider's
limit), and stays paused if it was paused. All of it lives in the run state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence

from daydreamd.core.timestamps import utc_now
from daydreamd.storage.store import Store

RECENT_REQUESTS_FACT = "pool.recent_requests"
"""The rate windows a stopping service saved: ``{"saved_at": t, "models": {id: [t, ...]}}`` (Unix times)."""
PAUSES_FACT = "pool.paused"
"""What is paused: ``{"all": bool, "models": [id, ...]}``, so a restart keeps it paused."""


class RestartMemory:
    """The pool's memory in the run state (shares the store's connection and write lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- learned limits ------------------------------------------------------------------------

    async def load_limits(self) -> dict[str, float]:
        """Learned per-model concurrency, so a restart resumes at the known-good level."""
        async with self.store.db.execute("SELECT llm_model_id, concurrency FROM model_limits") as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def save_limits(self, limits: dict[str, float]) -> None:
        """Record learned per-model concurrency."""
        now = utc_now()
        async with self.store.transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO model_limits (llm_model_id, concurrency, updated_at) VALUES (?, ?, ?)",
                [(model, value, now) for model, value in limits.items()],
            )

    # -- what a restart keeps: recent requests, pauses -----------------------------------------

    async def recent_requests(self, window_s: float, *, now: float | None = None) -> dict[str, list[float]]:
        """Per model, when (Unix times, oldest first) its requests of the last ``window_s`` seconds
        were sent, as far as the run state knows: a restart refills its rate windows with them.

        Three sources, none counted twice: the windows the last service to stop cleanly saved
        (:meth:`save_recent_requests`; exact); attempts recorded after that save, at their
        ``finished_at`` (a request leaves before its reply ends, so never too early); and one
        request at ``now`` for each LLM generation still ``running``, whose dead process may have
        had it on the wire unrecorded. Call it before :meth:`recover`.
        """
        now = time.time() if now is None else now
        since = now - window_s
        found: dict[str, list[float]] = {}
        saved_at, saved = _saved_requests(await self.store.get_fact(RECENT_REQUESTS_FACT))
        for model, stamps in saved.items():
            found.setdefault(model, []).extend(t for t in stamps if t > since)
        async with self.store.db.execute(
            "SELECT a.llm_model_id, a.finished_at FROM attempts a LEFT JOIN generations g ON g.gen_id = a.gen_id "
            "WHERE a.finished_at > ? AND g.mode IS NOT 'batch'",  # a batch's calls are not the online windows'
            (max(since, saved_at),),
        ) as cursor:
            for model, finished_at in await cursor.fetchall():
                found.setdefault(str(model), []).append(float(finished_at))
        async with self.store.db.execute(
            "SELECT llm_model_id FROM generations WHERE state = 'running' AND mode = 'llm'"
        ) as cursor:
            for (model,) in await cursor.fetchall():
                found.setdefault(str(model), []).append(now)
        return {model: sorted(stamps) for model, stamps in found.items() if stamps}

    async def save_recent_requests(
        self, requests: Mapping[str, Sequence[float]], *, now: float | None = None
    ) -> None:
        """Record the rate windows (per model, Unix times of its requests) as the service stops."""
        value = {
            "saved_at": time.time() if now is None else now,
            "models": {model: list(stamps) for model, stamps in requests.items() if stamps},
        }
        await self.store.set_fact(RECENT_REQUESTS_FACT, json.dumps(value, sort_keys=True))

    async def pauses(self) -> tuple[bool, list[str]]:
        """Whether claiming is paused for every model, and the models paused one by one."""
        try:
            value = json.loads(await self.store.get_fact(PAUSES_FACT) or "{}")
            return bool(value.get("all", False)), sorted(str(m) for m in value.get("models", []))
        except (ValueError, TypeError, AttributeError):  # an unreadable record: say paused, not run
            return True, []

    async def save_pauses(self, paused: bool, models: Iterable[str]) -> None:
        """Record what is paused, so a restart stays paused until ``resume``."""
        await self.store.set_fact(PAUSES_FACT, json.dumps({"all": paused, "models": sorted(models)}))


def _saved_requests(raw: str | None) -> tuple[float, dict[str, list[float]]]:
    """(saved_at, per-model Unix times) of a :data:`RECENT_REQUESTS_FACT`; an unreadable one is none."""
    try:
        value = json.loads(raw or "{}")
        models = {str(m): [float(t) for t in stamps] for m, stamps in value.get("models", {}).items()}
        return float(value.get("saved_at", 0.0)), models
    except (ValueError, TypeError, AttributeError):
        return 0.0, {}
