"""Python's cyclic garbage collector paused for a bulk build, and kept off what the build made.

A million rows or generations are a few million tuples, lists and dicts, none of them in a cycle
(reference counting frees them); with the collector on, its repeated full passes over everything
already made take a third to a half of such a build's time. In the service the cohort then lives
on, and each later full pass over it would hold the interpreter for a quarter of a second or more
at a million generations: :func:`frozen_when_built` takes it out of the collector's sight.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off for the block, switched back on only if it was on (re-entrant).

    Other threads allocate meanwhile as usual, and are collected after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def frozen_when_built() -> Iterator[None]:
    """:func:`paused_gc` for a build whose result lives on (the service's cohort), and what is
    alive when the block ends moved out of the collector's passes (``gc.freeze``) before the
    collector is back on.

    Without the freeze, the first collection after the pause would walk every object the build
    made (they all sit in the youngest generation) and hold the interpreter a second at a million
    generations. Frozen objects are still freed by reference counting (the previous cohort goes as
    soon as the service drops it); only a cycle alive now and dropped later is never reclaimed, a
    few objects per rebuild against the full passes over millions this saves.
    """
    with paused_gc():
        yield
        gc.freeze()
