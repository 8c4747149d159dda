"""GroupSync: writers that arrive while a sync runs share the next one, never the running one."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daydreamd.storage.group_sync import SYNCFS, GroupSync

TIMEOUT_S = 10.0


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (a few milliseconds in practice)."""
    done = threading.Event()
    for _ in range(int(TIMEOUT_S / 0.001)):
        if condition():
            return
        done.wait(0.001)
    raise AssertionError("condition not met in time")


class GatedSyncFs:
    """A syncfs that blocks each round until released, recording how many writes it covers."""

    def __init__(self, fail_rounds: frozenset[int] = frozenset()) -> None:
        self.rounds = 0
        self.gate = threading.Semaphore(0)
        self.fail_rounds = fail_rounds
        self.entered = threading.Semaphore(0)

    def __call__(self, fd: int) -> None:
        self.rounds += 1
        self.entered.release()
        assert self.gate.acquire(timeout=TIMEOUT_S)
        if self.rounds in self.fail_rounds:
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def start(group: GroupSync, directory: Path, results: list[BaseException | None]) -> threading.Thread:
    def save() -> None:
        try:
            group.sync(directory, [])
        except BaseException as exc:  # collected for the assertions
            results.append(exc)
        else:
            results.append(None)

    thread = threading.Thread(target=save)
    thread.start()
    return thread


def waiting(group: GroupSync) -> int:
    """Threads parked on the group's condition (waiting for the next sync)."""
    return len(group._cond._waiters)  # type: ignore[attr-defined]


def test_writers_arriving_during_a_sync_share_the_next_one(tmp_path: Path) -> None:
    syncfs = GatedSyncFs()
    group = GroupSync(syncfs)
    results: list[BaseException | None] = []
    leader = start(group, tmp_path, results)
    assert syncfs.entered.acquire(timeout=TIMEOUT_S)  # round 1 runs (for the leader's writes)
    followers = [start(group, tmp_path, results) for _ in range(5)]
    wait_for(lambda: waiting(group) == 5)  # their writes came after round 1 started

    syncfs.gate.release()  # round 1 ends: it must not release the five
    leader.join(TIMEOUT_S)
    assert syncfs.entered.acquire(timeout=TIMEOUT_S)  # one of them leads round 2 for all five
    assert results == [None] and syncfs.rounds == 2
    syncfs.gate.release()
    for thread in followers:
        thread.join(TIMEOUT_S)

    assert results == [None] * 6 and syncfs.rounds == 2 and group.rounds == 2


def test_a_failed_sync_fails_every_writer_it_covered_and_the_next_one_succeeds(tmp_path: Path) -> None:
    syncfs = GatedSyncFs(fail_rounds=frozenset({2}))
    group = GroupSync(syncfs)
    results: list[BaseException | None] = []
    leader = start(group, tmp_path, results)
    assert syncfs.entered.acquire(timeout=TIMEOUT_S)
    followers = [start(group, tmp_path, results) for _ in range(3)]
    wait_for(lambda: waiting(group) == 3)
    syncfs.gate.release()
    leader.join(TIMEOUT_S)
    assert syncfs.entered.acquire(timeout=TIMEOUT_S)
    syncfs.gate.release()  # round 2 fails
    for thread in followers:
        thread.join(TIMEOUT_S)

    assert results[0] is None
    assert all(
        isinstance(r, OSError) and r.errno == errno.EIO and str(tmp_path) in str(r) for r in results[1:]
    )
    assert len(results) == 4
    syncfs.gate.release()
    group.sync(tmp_path, [])  # round 3 succeeds: a write after the failure is durable again
    assert syncfs.rounds == 3


def test_without_syncfs_each_file_and_both_folders_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "gens" / "draft" / "g1"
    folder.mkdir(parents=True)
    for name in ("raw.txt", "metadata.json"):
        (folder / name).write_text(name)
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    GroupSync(None).sync(folder, ["raw.txt", "metadata.json"])

    expected = [(folder / "raw.txt"), (folder / "metadata.json"), folder, folder.parent]
    assert synced == [p.stat().st_ino for p in expected]


@pytest.mark.skipif(SYNCFS is None, reason="no syncfs on this system")
def test_the_real_syncfs_runs(tmp_path: Path) -> None:
    group = GroupSync()
    assert group.grouped
    group.sync(tmp_path, [])
    assert group.rounds == 1
