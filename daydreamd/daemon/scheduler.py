"""Ready work held in memory, one lane per ``(mode, model)``, and the fair choice of what starts next.

The pool reads ready work from SQLite ahead of need (:mod:`~daydreamd.storage.ready`) into these
lanes, so choosing what to start costs no query, and a model with nothing to do costs nothing.
A lane knows whether it holds *all* of its key's ready work (the last read came back short):
then it needs no more reads until something new can be ready, and what becomes ready (the
children of a generation that just finished) is added to it directly.

:meth:`Lanes.choose` takes work round-robin across the lanes that may start now, one
generation per lane per pass, so a model held back by its rate window never stands in front
of another that could send: no slot waits for a rate window.

Everything here is synchronous and in memory: no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from daydreamd.storage.ready import Key, Ready


@dataclass(slots=True)
class _Lane:
    """The ready work of one key that is in memory, parents' stages first."""

    heap: list[tuple[tuple[int, int], str]] = field(default_factory=list)
    complete: bool = False
    """True when the last read returned everything the database had ready for this key."""


class Lanes:
    """Per-key queues of ready work (see the module docstring)."""

    def __init__(self, batch: int) -> None:
        """``batch``: how many generations one read fetches per key; a lane below half of it
        that may hold less than all its key's work is read again."""
        self.batch = max(1, batch)
        self._lanes: dict[Key, _Lane] = {}
        self._items: dict[str, Ready] = {}
        self._turn = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, gen_id: object) -> bool:
        return gen_id in self._items

    def held(self, key: Key) -> int:
        """How many generations of ``key`` are in memory."""
        lane = self._lanes.get(key)
        return len(lane.heap) if lane else 0

    def forget(self) -> None:
        """Drop everything: something may have made work ready (or not ready) that no lane knows of."""
        self._lanes.clear()
        self._items.clear()

    def needs_read(self, key: Key) -> bool:
        """Whether ``key`` should be read from the database: never read, or running low while the
        database may hold more."""
        lane = self._lanes.get(key)
        return lane is None or (not lane.complete and len(lane.heap) < (self.batch + 1) // 2)

    def known(self, key: Key) -> bool:
        """Whether ``key`` was read since the last :meth:`forget`."""
        return key in self._lanes

    def fill(self, key: Key, rows: Sequence[Ready], *, asked: int, busy: Iterable[str] = ()) -> None:
        """Replace ``key``'s lane with a fresh read of ``asked`` rows (``busy``: ids already started,
        which a read that raced their start may still return)."""
        lane = self._lanes.get(key)
        if lane is not None:
            for _, gen_id in lane.heap:
                self._items.pop(gen_id, None)
        skip = set(busy)
        lane = self._lanes[key] = _Lane(complete=len(rows) < asked)
        for row in rows:
            if row.gen_id not in skip and row.gen_id not in self._items:
                self._items[row.gen_id] = row
                lane.heap.append((row.order, row.gen_id))
        heapq.heapify(lane.heap)

    def add(self, rows: Iterable[Ready], *, busy: Iterable[str] = ()) -> int:
        """Add newly ready rows to lanes that were read (an unread lane gets them at its first read).
        Returns how many were added."""
        skip = set(busy)
        added = 0
        for row in rows:
            lane = self._lanes.get(row.key)
            if lane is None or row.gen_id in self._items or row.gen_id in skip:
                continue
            self._items[row.gen_id] = row
            heapq.heappush(lane.heap, (row.order, row.gen_id))
            added += 1
        return added

    def push(self, row: Ready) -> None:
        """Add one row to its key's lane, making the lane if it has none (for work that is known
        to be complete here: what is not read from the database, such as armed work)."""
        if row.gen_id in self._items:
            return
        lane = self._lanes.setdefault(row.key, _Lane(complete=True))
        self._items[row.gen_id] = row
        heapq.heappush(lane.heap, (row.order, row.gen_id))

    def discard(self, gen_id: str) -> None:
        """Take one row out, wherever it is (a no-op when it is not here)."""
        row = self._items.pop(gen_id, None)
        if row is None:
            return
        lane = self._lanes[row.key]
        lane.heap = [entry for entry in lane.heap if entry[1] != gen_id]
        heapq.heapify(lane.heap)

    def choose(
        self,
        free: int,
        keys: Sequence[Key],
        *,
        may_start: Callable[[Key], bool],
        allowed: Callable[[Ready], bool] = lambda _: True,
        take: Callable[[Ready], None] = lambda _: None,
    ) -> list[Ready]:
        """Up to ``free`` generations to start now, round-robin over ``keys``.

        ``may_start(key)`` says whether the key's limits allow one more now; ``allowed(ready)``
        whether this generation may start (its approval's budget); ``take(ready)`` is called for
        each one chosen before the next is considered, so the limits it takes count at once. The
        first key of the rotation moves on by one each call, so no key is always served first.
        """
        chosen: list[Ready] = []
        order = [k for k in keys if self.held(k)]
        if not order:
            return chosen
        self._turn = (self._turn + 1) % len(order)
        order = order[self._turn :] + order[: self._turn]
        while len(chosen) < free and order:
            still = []
            for key in order:
                if len(chosen) >= free:
                    break
                if not may_start(key):
                    continue
                ready = self._pop(key, allowed)
                if ready is None:
                    continue
                take(ready)
                chosen.append(ready)
                still.append(key)
            order = still
        return chosen

    def _pop(self, key: Key, allowed: Callable[[Ready], bool]) -> Ready | None:
        """The first generation of ``key``'s lane that is ``allowed``, taken out of the lane."""
        lane = self._lanes.get(key)
        if lane is None or not lane.heap:
            return None
        first = self._items[lane.heap[0][1]]
        if allowed(first):
            heapq.heappop(lane.heap)
            return self._items.pop(first.gen_id)
        ordered = sorted(lane.heap)
        for position, (_, gen_id) in enumerate(ordered):
            if allowed(self._items[gen_id]):
                del ordered[position]
                lane.heap = ordered  # a sorted list is a valid heap
                return self._items.pop(gen_id)
        return None
