"""The collector helpers: paused for a build, and kept off what the service keeps."""

from __future__ import annotations

import gc
import weakref

from daydreamd.core.collector import frozen_when_built, paused_gc


class Node:
    """A plain object: tracked by the collector, and weakly referable."""


def test_paused_gc_restores_the_collector_only_if_it_was_on() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block found it off and leaves it off
    assert gc.isenabled()


def test_what_a_build_made_leaves_the_collectors_passes_and_is_still_freed() -> None:
    try:
        with frozen_when_built():
            assert not gc.isenabled()
            kept = [Node() for _ in range(1000)]  # tracked by the collector
        assert gc.isenabled()
        oldest = {id(o) for o in gc.get_objects(generation=2)}
        assert gc.get_freeze_count() >= len(kept)
        assert not any(id(item) in oldest for item in kept)
        probe = weakref.ref(kept[0])
        del kept
        assert probe() is None  # frozen, and still freed by reference counting
    finally:
        gc.unfreeze()
