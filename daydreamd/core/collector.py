"""Python's cyclic garbage collector paused for a bulk build.

A million rows or generations are a few million tuples, lists and dicts, none of them in a cycle
(reference counting frees them); with the collector on, its repeated full passes over everything
already made take a third to a half of such a build's time.
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
