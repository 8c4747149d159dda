"""Watching ``data/1_raw`` for edits (watchfiles), debounced, and turning them into rebuilds.

Event types are not trusted (an editor's atomic save can arrive as "added", or as added plus
deleted in one batch): any change under the tree just asks for a rebuild, and the rebuild
re-reads the whole tree and compares fingerprints. Edits that arrive while a rebuild runs
are coalesced into one more rebuild. A failed rebuild is retried with backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import structlog
from watchfiles import awatch

from daydreamd.core.snapshot import is_ignored_name

log = structlog.get_logger("daydreamd.daemon.watcher")


class Trigger:
    """A latch: many ``fire()`` calls between two ``wait()`` calls count as one."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.reasons: list[str] = []

    def fire(self, reason: str) -> None:
        """Ask for a rebuild."""
        self.reasons.append(reason)
        self._event.set()

    async def wait(self) -> str:
        """Wait for at least one request; return (and clear) the reasons as one string."""
        await self._event.wait()
        self._event = anyio.Event()
        reasons, self.reasons = self.reasons, []
        return ",".join(dict.fromkeys(reasons))


def _relevant(_change: object, path: str) -> bool:
    return not any(is_ignored_name(part) for part in Path(path).parts)


async def watch_tree(raw_dir: Path, trigger: Trigger, *, debounce_ms: int, stop: anyio.Event) -> None:
    """Fire ``trigger`` on every debounced batch of changes under ``raw_dir`` until ``stop`` is set."""
    directory = anyio.Path(raw_dir)
    while not stop.is_set():
        if not await directory.is_dir():  # wait for the directory to appear, then rebuild from it
            with anyio.move_on_after(1.0):
                await stop.wait()
            if await directory.is_dir():
                trigger.fire("directory_created")
            continue
        try:
            async for changes in awatch(
                raw_dir,
                watch_filter=_relevant,
                debounce=debounce_ms,
                step=20,
                stop_event=stop,
                recursive=True,
                raise_interrupt=False,
            ):
                log.debug("files_changed", changes=len(changes))
                trigger.fire("files_changed")
        except FileNotFoundError:  # the directory was removed while watched
            trigger.fire("directory_removed")


async def rebuild_loop(trigger: Trigger, rebuild: Callable[[str], Awaitable[object]]) -> None:
    """Run ``rebuild`` for each trigger; retry a failed one with backoff (it never stops the service)."""
    delay = 1.0
    while True:
        reason = await trigger.wait()
        try:
            await rebuild(reason)
            delay = 1.0
        except Exception as exc:  # the service must outlive any failed rebuild; it is retried
            log.error("rebuild_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay, exc_info=True)
            await anyio.sleep(delay)
            delay = min(delay * 2, 60.0)
            trigger.fire("retry")
