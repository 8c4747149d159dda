"""Generations started ahead of their call: prepared while every slot is busy, sent when one frees.

A slot is held only while a call is at the provider (see :mod:`~daydreamd.daemon.pool`).
Starting a generation (its row becomes ``running``, one transaction) and preparing it (inputs,
the rendered prompt, the never-pay-twice check, in worker threads) take a few milliseconds;
done inside the slot, they would leave the provider idle that long on every call. So the pool
*arms* a few generations ahead: each is started and prepared without a slot, then waits here
until the pool *launches* it (a slot, its model's concurrency, its place in the rate windows and
its approval's budget, all checked at that instant as for any call) or *calls it off* (a revoke,
a pause, an approval or rebuild that may change what is ready, an outage, shutdown): then its
task gives the row back to the queue (``running`` to ``queued`` under its fencing token) unsent.

A generation that needs no call (a copy, a reply saved before) finishes during its preparation
and never waits here. Everything in this module runs on the event loop; it does no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from daydreamd.daemon.scheduler import Lanes
from daydreamd.storage.ready import Key, Ready


class CalledOff(Exception):
    """An armed generation was called off before its call: its task gives its claim back."""


@dataclass(eq=False, slots=True)
class _Armed:
    ready: Ready
    go: anyio.Event = field(default_factory=anyio.Event)
    called_off: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Around the task's preparation: cancelled when it is called off, so a preparation that waits
    (a data folder that takes no writes, tried again with backoff) cannot hold up a revoke."""


class ArmedWork:
    """The generations armed now: started, being prepared or waiting for a slot, not yet sent."""

    def __init__(self, on_waiting: Callable[[], None]) -> None:
        """``on_waiting`` is called when a generation is prepared and waits to be launched."""
        self._on_waiting = on_waiting
        self._entries: dict[str, _Armed] = {}
        self._per_key: Counter[Key] = Counter()
        self.waiting = Lanes(batch=1)
        """The prepared ones, per key in the cohort's order: what :meth:`launch` may take."""
        self._giving_back: set[str] = set()
        self._all_given_back = anyio.Event()
        self._all_given_back.set()

    def __len__(self) -> int:
        return len(self._entries)

    def of(self, key: Key) -> int:
        """How many generations of ``key`` are armed."""
        return self._per_key[key]

    def arm(self, ready: Ready) -> None:
        """``ready`` was started ahead of its call."""
        self._entries[ready.gen_id] = _Armed(ready)
        self._per_key[ready.key] += 1

    async def until_launched(self, gen_id: str) -> None:
        """Wait, prepared, until the pool launches this generation; raise :class:`CalledOff` if it
        is called off instead (before or while it waits)."""
        armed = self._entries.get(gen_id)
        if armed is None or armed.called_off:
            raise CalledOff(gen_id)
        self.waiting.push(armed.ready)
        self._on_waiting()
        await armed.go.wait()
        if armed.called_off:
            raise CalledOff(gen_id)

    def scope(self, gen_id: str) -> anyio.CancelScope:
        """The scope the generation's task runs its preparation in: cancelled if it is called off
        before its launch (a fresh scope, never cancelled, for one no longer armed)."""
        armed = self._entries.get(gen_id)
        return armed.scope if armed is not None else anyio.CancelScope()

    def launch(self, ready: Ready) -> None:
        """Send ``ready`` (taken from :attr:`waiting`; the pool has taken its slot and places)."""
        armed = self._forget(ready.gen_id)
        if armed is not None:
            armed.go.set()

    def __contains__(self, gen_id: object) -> bool:
        return gen_id in self._entries

    def finished(self, gen_id: str) -> None:
        """The generation is done with here: its task ended (with or without a call, its row
        given back or not), or it was never started after all."""
        self._forget(gen_id)
        self._giving_back.discard(gen_id)
        if not self._giving_back:
            self._all_given_back.set()

    def call_off(self, only: Callable[[Ready], bool] | None = None) -> int:
        """Call off every armed generation (``only``: those it picks): none of them will be sent.
        Returns how many."""
        called = [armed for armed in self._entries.values() if only is None or only(armed.ready)]
        for armed in called:
            armed.called_off = True
            armed.go.set()
            armed.scope.cancel()
            self._giving_back.add(armed.ready.gen_id)
            self._forget(armed.ready.gen_id)
        if called and self._all_given_back.is_set():
            self._all_given_back = anyio.Event()
        return len(called)

    async def until_given_back(self) -> None:
        """Return once the task of every called-off generation has ended (each gives its row back
        to the queue first, or finishes without a call)."""
        await self._all_given_back.wait()

    def _forget(self, gen_id: str) -> _Armed | None:
        armed = self._entries.pop(gen_id, None)
        if armed is not None:
            self._per_key[armed.ready.key] -= 1
            self.waiting.discard(gen_id)
        return armed
