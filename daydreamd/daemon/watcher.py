"""Watching ``data/1_raw`` for edits (watchfiles), debounced, and turning them into rebuilds.

Event types are not trusted (an editor's atomic save can arrive as "added", or as added plus
deleted in one batch): any change under the tree just asks for a rebuild, and the rebuild
re-reads the whole tree and compares fingerprints. Edits that arrive while a rebuild runs
are coalesced into one more rebuild. A failed rebuild is retried with backoff.

The watch outlives the folder it watches. An inotify watch follows an inode, not a name, so
``rm -rf 1_raw`` and a fresh copy, ``mv 1_raw x`` and a new ``1_raw``, or a ``1_raw`` symlink
pointed at another folder would leave it on the old folder (or on nothing). So each watch is a
*session* on one folder: it ends, and a new one is armed on whatever ``1_raw`` is then, when
the folder itself is removed or moved, when the parent folder reports a change to the entry
``1_raw`` (a swapped symlink, a folder created or renamed there), when a periodic check finds
that ``1_raw`` is another folder (or none), or when the watch itself fails: watchfiles cannot
report a name that is not valid UTF-8 and breaks on it, so such an event re-arms the watch too.
Every new session asks for a rebuild once it is armed, so nothing done in between is missed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

# The Rust notifier that ``watchfiles.awatch`` wraps (documented in watchfiles as its backend):
# used directly because a session must know when its watch is armed, and must be able to end it.
from watchfiles._rust_notify import RustNotify

from daydreamd.core.snapshot import is_ignored_name

log = structlog.get_logger("daydreamd.daemon.watcher")

RECHECK_S = 1.0
"""How often a session checks that ``1_raw`` is still the folder it watches (and, while there is
none, how often it looks for it again)."""
STEP_MS = 20
"""How often a waiting watch looks at its stop flag (and how long a batch must be quiet)."""
WAIT_MS = 5_000
"""How long one wait for events lasts before it is simply started again."""
FAILED_ARM_MAX_S = 30.0
"""The longest pause between attempts to arm a watch that keeps failing (e.g. no inotify watches left)."""


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


def _relevant(root: str, path: str) -> bool:
    """Whether a change at ``path`` can matter: hidden and editor temp files under ``root`` never do
    (only the part under ``root`` is looked at: the data folder may well live in a hidden folder)."""
    return not any(is_ignored_name(part) for part in Path(os.path.relpath(path, root)).parts)


def spec_relevant(root: str, path: str) -> bool:
    """Whether a change under ``data/cohorts`` can matter: one inside a ``<name>/spec/`` folder, or a
    cohort folder itself (created, moved, removed). The membership and manifest written beside
    ``spec/``, and reports, are outputs and never do."""
    parts = Path(os.path.relpath(path, root)).parts
    if any(is_ignored_name(part) for part in parts):
        return False
    return len(parts) == 1 or (len(parts) >= 2 and parts[1] == "spec")


Relevance = Callable[[str, str], bool]
"""(watched folder, changed path) -> whether the change asks for a rebuild."""


def folder_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder ``path`` names now, through symlinks; None when there is none."""
    try:
        info = path.stat()
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class _Either:
    """A stop flag for the notifier's thread: set when the session or the service stops."""

    def __init__(self, *events: anyio.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)


class _Session:
    """One watch on one folder (and on its parent, for the entry's name), until something ends it."""

    def __init__(
        self, raw_dir: Path, identity: tuple[int, int], stop: anyio.Event, relevant: Relevance = _relevant
    ) -> None:
        self.raw_dir = raw_dir
        self.relevant = relevant
        self.root = os.path.normpath(raw_dir)
        self.identity = identity
        self.done = anyio.Event()
        self.stop_flag = _Either(self.done, stop)
        self.reason = "stopped"

    def end(self, reason: str) -> None:
        if not self.done.is_set():
            self.reason = reason
            self.done.set()

    async def pump(
        self, notify: RustNotify, debounce_ms: int, on_changes: Callable[[set[tuple[int, str]]], None]
    ) -> None:
        """Wait for batches of changes until the session ends; a failing watch ends it."""
        while not self.done.is_set():
            try:
                result = await anyio.to_thread.run_sync(
                    notify.watch, debounce_ms, STEP_MS, WAIT_MS, self.stop_flag
                )
            except (RuntimeError, OSError) as exc:  # e.g. "Unable to decode path": a name not in UTF-8
                log.warning("watch_failed", error=f"{type(exc).__name__}: {exc}", folder=str(self.raw_dir))
                self.end("watch_failed")
                return
            if result == "stop":
                self.end("stopped")
                return
            if isinstance(result, set):
                on_changes(result)

    def on_tree(self, trigger: Trigger) -> Callable[[set[tuple[int, str]]], None]:
        def changed(changes: set[tuple[int, str]]) -> None:
            paths = [path for _, path in changes]
            if any(os.path.normpath(path) == self.root for path in paths):  # removed or moved away
                self.end("directory_moved")
            elif any(self.relevant(self.root, path) for path in paths):
                log.debug("files_changed", changes=len(changes))
                trigger.fire("files_changed")

        return changed

    def on_parent(self, changes: set[tuple[int, str]]) -> None:
        if any(os.path.normpath(path) == self.root for _, path in changes):  # the entry itself changed
            self.end("directory_replaced")

    async def check_identity(self) -> None:
        """End the session when ``1_raw`` is no longer the folder it watches (the backstop)."""
        try:
            while not self.done.is_set():
                with anyio.move_on_after(RECHECK_S):
                    await self.done.wait()
                if self.stop_flag.is_set():
                    self.end("stopped")
                elif folder_identity(self.raw_dir) != self.identity:
                    self.end("directory_replaced")
        finally:
            self.done.set()  # also on cancellation: the pumps' threads return within STEP_MS


def _arm(path: Path, *, recursive: bool) -> RustNotify:
    return RustNotify([str(path)], False, False, 300, recursive, False)


def _close(notifiers: Iterable[RustNotify]) -> None:
    for notify in notifiers:
        notify.close()


async def _watch_session(
    raw_dir: Path,
    identity: tuple[int, int],
    trigger: Trigger,
    *,
    debounce_ms: int,
    stop: anyio.Event,
    armed: str,
    relevant: Relevance,
) -> str:
    """Watch one folder until the session ends; return why it ended. Raises OSError if it cannot arm."""
    session = _Session(raw_dir, identity, stop, relevant)
    tree = await anyio.to_thread.run_sync(lambda: _arm(raw_dir, recursive=True))
    notifiers = [tree]
    try:
        try:  # the parent shows a swapped symlink or a re-created folder at once; the check is the backstop
            parent = await anyio.to_thread.run_sync(lambda: _arm(raw_dir.parent, recursive=False))
            notifiers.append(parent)
        except (OSError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("parent_watch_failed", error=error, folder=str(raw_dir.parent))
            parent = None
        log.debug("watch_armed", folder=str(raw_dir), reason=armed)
        trigger.fire(armed)  # whatever changed before the watch was armed is read now
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.pump, tree, debounce_ms, session.on_tree(trigger))
            if parent is not None:
                tg.start_soon(session.pump, parent, debounce_ms, session.on_parent)
            tg.start_soon(session.check_identity)
    finally:
        _close(notifiers)
    return session.reason


async def watch_tree(
    raw_dir: Path,
    trigger: Trigger,
    *,
    debounce_ms: int,
    stop: anyio.Event,
    relevant: Relevance = _relevant,
) -> None:
    """Fire ``trigger`` on every debounced batch of changes under ``raw_dir`` until ``stop`` is set.

    ``relevant`` tells which changes count (default: any but hidden and editor temp files);
    ``data/cohorts`` is watched with :func:`spec_relevant`, so only spec folders count.

    Whatever happens to the folder (removed, replaced, moved, a symlink swapped, a name watchfiles
    cannot decode), the watch is armed again on what ``raw_dir`` names then; it never raises.
    """
    armed = "watch_started"
    failures = 0
    while not stop.is_set():
        identity = folder_identity(raw_dir)
        if identity is None:  # wait for the folder to appear (the rebuild reports it missing meanwhile)
            with anyio.move_on_after(RECHECK_S):
                await stop.wait()
            armed = "directory_created"
            continue
        try:
            ended = await _watch_session(
                raw_dir, identity, trigger, debounce_ms=debounce_ms, stop=stop, armed=armed, relevant=relevant
            )
        except (OSError, RuntimeError) as exc:  # gone before it was armed, or no inotify watch left
            if folder_identity(raw_dir) is not None:
                failures += 1
                delay = min(RECHECK_S * 2**failures, FAILED_ARM_MAX_S)
                log.error("watch_arm_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                with anyio.move_on_after(delay):
                    await stop.wait()
            armed = "watch_rearmed"
            continue
        failures = 0
        if ended != "stopped":
            log.info("watch_rearming", reason=ended, folder=str(raw_dir))
            trigger.fire(ended)
        armed = "watch_rearmed"


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
