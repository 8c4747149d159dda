"""Batched commits: the completions that finish while one transaction runs share the next one.

Each worker hands its :class:`~daydreamd.storage.store.Completion` to :meth:`CommitBatcher.commit`
and waits; :meth:`CommitBatcher.run` commits everything queued meanwhile in one
``Store.complete_each`` call. Under load that is one fsync for many generations instead of one
each. A failed transaction fails every waiter of that batch, and the batcher goes on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from daydreamd.core.retry import FailureKind
from daydreamd.daemon.runner import Outcome
from daydreamd.storage.store import AttemptRow, Claim, Completion, Store


def completion_of(claim: Claim, outcome: Outcome, attempts: Sequence[AttemptRow]) -> Completion:
    """What a run's outcome commits under its claim (an outcome without a kind that failed is a bug:
    ``internal``)."""
    g = claim.generation
    parse = outcome.parse
    kind = str(outcome.kind) if outcome.kind else (None if outcome.ok else str(FailureKind.INTERNAL))
    return Completion(
        gen_id=g.gen_id,
        token=claim.token,
        llm_model_id=g.llm_model_id,
        ok=outcome.ok,
        error_kind=kind,
        error_message=outcome.message or None,
        attempts=tuple(attempts),
        score=outcome.score,
        parse_key=key if parse and isinstance(key := parse.get("key"), str) else None,
        parse_info=json.dumps(parse, separators=(",", ":")) if parse else None,
    )


@dataclass(slots=True)
class _PendingCommit:
    """A completion waiting for the next batched commit."""

    completion: Completion
    done: anyio.Event
    committed: bool = False
    error: BaseException | None = None


class CommitBatcher:
    """Commits completions together; run :meth:`run` in a task for as long as commits may come."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[_PendingCommit] = []
        self._flush = anyio.Event()

    async def commit(self, completion: Completion) -> bool:
        """Queue ``completion`` for the next batch and wait; False when its token was stale.

        Raises:
            Exception: whatever the batch's transaction raised.
        """
        pending = _PendingCommit(completion, anyio.Event())
        self._pending.append(pending)
        self._flush.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.committed

    async def run(self) -> None:
        """Commit queued completions, one transaction for all that finished meanwhile (until cancelled)."""
        while True:
            await self._flush.wait()
            self._flush = anyio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            with anyio.CancelScope(shield=True):
                try:
                    results = await self._store.complete_each([p.completion for p in batch])
                except Exception as exc:  # every waiter sees the failure; the batcher goes on
                    results = []
                    for pending in batch:
                        pending.error = exc
            for pending, committed in zip(batch, results, strict=False):
                pending.committed = committed
            for pending in batch:
                pending.done.set()
