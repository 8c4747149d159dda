"""sd_notify: the notifier against a plain datagram socket, the status line, and a real daemon.

The tests play systemd's side: they bind an ``AF_UNIX`` datagram socket (in a short folder
under /tmp: socket paths are limited to about 107 bytes) and point ``NOTIFY_SOCKET`` at it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from daydreamd.daemon.sdnotify import Notifier, one_line, status_line, status_loop, watchdog_loop
from tests.integration.daemon import Daemon, fast_config

Message = dict[str, str]


class Manager:
    """systemd's end of the protocol: a bound datagram socket and every message received on it."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        """What ``NOTIFY_SOCKET`` should hold: a path, or ``@name``."""
        self.received: list[tuple[float, Message]] = []
        """Each message with the monotonic time it was read."""

    @property
    def messages(self) -> list[Message]:
        return [message for _, message in self.received]

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}

    def read(self, timeout_s: float = 1.0) -> Message:
        """The next message (fails after ``timeout_s``)."""
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(65536)
        message = parse(data)
        self.received.append((time.monotonic(), message))
        return message

    def drain(self) -> list[Message]:
        """Whatever is queued now, without waiting."""
        found = []
        while True:
            try:
                found.append(self.read(timeout_s=0.01))
            except TimeoutError:
                return found

    def collect_sync(self, until: Callable[[list[Message]], bool], deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while not until(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; received so far: {self.messages}")
            try:
                self.read(timeout_s=min(left, 0.1))
            except TimeoutError:
                continue

    async def collect(self, until: Callable[[list[Message]], bool], deadline_s: float = 10.0) -> None:
        """Read (in a thread) until ``until(all messages so far)`` holds; fail at the deadline."""
        await anyio.to_thread.run_sync(self.collect_sync, until, deadline_s)


def parse(data: bytes) -> Message:
    """A datagram as its fields; every line must be KEY=value, as systemd requires."""
    fields = {}
    for line in data.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep and key, f"not a KEY=value line: {line!r} in {data!r}"
        fields[key] = value
    return fields


@pytest.fixture(name="manager")
def _manager() -> Iterator[Manager]:
    folder = tempfile.mkdtemp(prefix="ddn", dir="/tmp")
    path = str(Path(folder) / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield Manager(sock, path)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(name="abstract_manager")
def _abstract_manager() -> Iterator[Manager]:
    name = f"daydreamd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Manager(sock, "@" + name)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- the notifier ------------------------------------------------------------------------------


def test_each_notification_is_one_datagram_of_fields(manager: Manager) -> None:
    notifier = Notifier.from_env(manager.env())
    assert notifier.enabled
    assert notifier.ready("cohort c_1 | draft 0/9")
    assert manager.read() == {"READY": "1", "STATUS": "cohort c_1 | draft 0/9"}
    assert notifier.ready()
    assert manager.read() == {"READY": "1"}
    assert notifier.status("draft 3/9 (2 running)")
    assert manager.read() == {"STATUS": "draft 3/9 (2 running)"}
    assert notifier.watchdog()
    assert manager.read() == {"WATCHDOG": "1"}
    assert notifier.stopping()
    assert manager.read() == {"STOPPING": "1"}
    assert notifier.stopping("draining 2 calls")
    assert manager.read() == {"STOPPING": "1", "STATUS": "draining 2 calls"}


def test_reloading_carries_the_monotonic_clock(manager: Manager) -> None:
    notifier = Notifier.from_env(manager.env())
    before = monotonic_usec()
    assert notifier.reloading()
    after = monotonic_usec()
    message = manager.read()
    assert set(message) == {"RELOADING", "MONOTONIC_USEC"}
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_status_is_always_one_line(manager: Manager) -> None:
    """A newline in a status would start a field of its own (here, a forged READY=1)."""
    notifier = Notifier.from_env(manager.env())
    assert notifier.status("bad file\nREADY=1\r\nmore\0text")
    assert manager.read() == {"STATUS": "bad file READY=1 more text"}
    assert notifier.last_status == "bad file READY=1 more text"
    assert one_line("  a\n\nb  ") == "a  b"


def test_abstract_namespace_socket(abstract_manager: Manager) -> None:
    notifier = Notifier.from_env(abstract_manager.env())
    assert notifier.address == "\0" + abstract_manager.address[1:]
    assert notifier.ready("up")
    assert abstract_manager.read() == {"READY": "1", "STATUS": "up"}


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/sock"}])
def test_without_a_manager_everything_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier.from_env({**env, "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    sent = [notifier.ready("x"), notifier.status("x"), notifier.reloading(), notifier.stopping()]
    assert sent == [False] * 4
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None


def test_send_errors_are_swallowed(tmp_path: Path) -> None:
    """A vanished manager never raises into the service: the send just reports False."""
    for address in (str(tmp_path / "missing.sock"), str(tmp_path), "/x\0y", "@daydreamd-nobody-" + "z" * 20):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
        assert notifier.enabled
        assert notifier.ready("x") is False
        assert notifier.watchdog() is False
        assert notifier.reloading() is False


def test_a_full_queue_fails_fast_instead_of_blocking(manager: Manager) -> None:
    """Nobody reads: after the kernel's queue fills, sends return False at once."""
    notifier = Notifier.from_env(manager.env())
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 5.0
    assert results[0] is True
    assert False in results
    manager.drain()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "250000"}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1.5"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(manager: Manager, extra: dict[str, str], expected: float | None) -> None:
    assert Notifier.from_env(manager.env(**extra)).watchdog_interval() == expected


class RecordingNotifier(Notifier):
    """Remembers when each ping was sent (the manager reads them only afterwards)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        notifier = Notifier.from_env(env)
        super().__init__(None)
        self.address, self.watchdog_usec = notifier.address, notifier.watchdog_usec
        self.pings: list[float] = []

    def watchdog(self) -> bool:
        self.pings.append(time.monotonic())
        return super().watchdog()


async def test_watchdog_loop_pings_from_the_event_loop(manager: Manager) -> None:
    """Pings every interval/2; while the loop is blocked none are sent, then they resume."""
    notifier = RecordingNotifier(manager.env(WATCHDOG_USEC="100000"))
    interval = notifier.watchdog_interval()
    assert interval == 0.1
    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog_loop, notifier, interval)
        await anyio.sleep(0.28)
        blocked_at = time.monotonic()
        time.sleep(0.5)  # noqa: ASYNC251 - a wedged event loop
        unblocked_at = time.monotonic()
        await anyio.sleep(0.12)
        tg.cancel_scope.cancel()
    pings = notifier.pings
    assert len([t for t in pings if t < blocked_at]) >= 4  # every 0.05 s
    assert not [t for t in pings if blocked_at < t < unblocked_at]
    assert len([t for t in pings if t >= unblocked_at]) >= 2  # resumed
    assert manager.drain() == [{"WATCHDOG": "1"}] * len(pings)


async def test_watchdog_loop_without_a_watchdog_returns_at_once(manager: Manager) -> None:
    with anyio.fail_after(1):
        await watchdog_loop(Notifier.from_env(manager.env()), None)
        await watchdog_loop(Notifier.from_env({}), 1.0)
    assert manager.drain() == []


async def test_status_loop_sends_changes_only_and_survives_a_failed_fetch(manager: Manager) -> None:
    notifier = Notifier.from_env(manager.env())
    answers: list[Any] = [
        {"cohort_id": "c_1"},
        {"cohort_id": "c_1"},
        RuntimeError("store closed"),
        {"cohort_id": "c_2"},
    ]

    fetches = 0
    repeated = anyio.Event()

    async def fetch() -> Mapping[str, Any]:
        nonlocal fetches
        fetches += 1
        if fetches == 6:  # c_2 answered twice more after it was sent: a change would show by now
            repeated.set()
        answer = answers.pop(0) if answers else {"cohort_id": "c_2"}
        if isinstance(answer, Exception):
            raise answer
        return answer

    # Waits for the fetches themselves, not for a time (0.5 s was too short on a loaded machine).
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(status_loop, notifier, fetch, interval_s=0.05))
        with anyio.fail_after(10):
            await repeated.wait()
        tg.cancel_scope.cancel()
    assert manager.drain() == [{"STATUS": "cohort c_1"}, {"STATUS": "cohort c_2"}]


async def test_status_loop_without_a_manager_fetches_nothing() -> None:
    async def fetch() -> Mapping[str, Any]:
        raise AssertionError("fetched for nobody")

    with anyio.fail_after(1):
        await status_loop(Notifier.from_env({}), fetch, interval_s=0.01)


# -- the status line ---------------------------------------------------------------------------


def counts(**states: int) -> dict[str, int]:
    return {"pending": 0, "queued": 0, "running": 0, "done": 0, "failed": 0, "retired": 0, **states}


def test_status_line_example() -> None:
    status = {
        "cohort_id": "cohort_ab12",
        "stages": {
            "draft": counts(done=9, retired=4),
            "essay": counts(done=3, running=2, pending=13),
            "evaluation": counts(pending=36),
        },
        "errors": [{"level": "error", "file": "1_raw/llm_models.csv", "line": 3, "message": "bad"}],
        "pool": {"concurrency": 8, "paused": False, "parked": {"all": 812.5}},
    }
    assert status_line(status) == (
        "cohort cohort_ab12 | draft 9/9 done | essay 3/18 (2 running) | evaluation 0/36 "
        "| 1 error in 1_raw | parked"
    )


def test_status_line_counts_queued_failed_warnings_and_pause() -> None:
    status = {
        "cohort_id": "c_9",
        "stages": {"draft": counts(done=5, running=1, queued=2, failed=1, pending=1)},
        "errors": [
            {"level": "warning", "file": "1_raw/a.csv", "line": 1, "message": "w"},
            {"level": "warning", "file": "1_raw/b.csv", "line": 2, "message": "w"},
        ],
        "pool": {"paused": True, "parked": {}},
    }
    assert status_line(status) == (
        "cohort c_9 | draft 5/10 (1 running, 2 queued, 1 failed) | 2 warnings in 1_raw | paused"
    )


def test_status_line_names_paused_models_and_spending() -> None:
    status = {
        "cohort_id": "c_9",
        "stages": {"essay": counts(done=1, queued=1)},
        "pool": {"paused": False, "paused_models": ["m1", "m2"], "parked": {}},
        "spent_usd": 1.234567,
    }
    assert status_line(status) == "cohort c_9 | essay 1/2 (1 queued) | 2 models paused | $1.23 spent"
    status["pool"] = {"paused": True, "paused_models": ["m1"]}
    status["spent_usd"] = 0.0
    assert status_line(status) == "cohort c_9 | essay 1/2 (1 queued) | paused"


def test_status_line_without_a_cohort() -> None:
    """While 1_raw has errors there is no cohort; the line says so and counts the errors."""
    status = {
        "cohort_id": None,
        "stages": {"draft": counts(), "essay": counts(), "evaluation": counts()},
        "errors": [
            {"level": "error", "file": "1_raw/x.csv", "line": 2, "message": "one\ntwo"},
            {"level": "error", "file": "1_raw/y.csv", "line": None, "message": "three"},
            {"level": "warning", "file": "1_raw/z.csv", "line": 1, "message": "w"},
        ],
        "pool": {"paused": False, "parked": {}},
    }
    assert status_line(status) == (
        "no cohort | draft 0/0 | essay 0/0 | evaluation 0/0 | 2 errors, 1 warning in 1_raw"
    )


def test_status_line_tolerates_a_partial_status() -> None:
    assert status_line({}) == "no cohort"
    assert (
        status_line({"cohort_id": "c\nx", "stages": {"draft": {"done": 1}}}) == "cohort c x | draft 1/1 done"
    )


# -- a real daemon -----------------------------------------------------------------------------


def first(messages: list[Message], key: str, start: int = 0) -> int | None:
    """The index of the first message at or after ``start`` that has ``key``."""
    return next((i for i in range(start, len(messages)) if key in messages[i]), None)


def after(key: str, start_key: str | None = None, count: int = 1) -> Callable[[list[Message]], bool]:
    """``count`` messages with ``key`` after the first one with ``start_key`` (or from the start)."""

    def holds(messages: list[Message]) -> bool:
        start = 0
        if start_key is not None:
            found = first(messages, start_key)
            if found is None:
                return False
            start = found + 1
        return sum(1 for m in messages[start:] if key in m) >= count

    return holds


@pytest.fixture(name="daemon")
def _daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, fast_config(None, provider="mock"))
    yield daemon
    daemon.close()


async def test_a_real_daemon_talks_to_its_manager(
    daemon: Daemon, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY (with a status) once serving, watchdog pings, RELOADING then READY on SIGHUP, STOPPING."""
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    await daemon.start()
    await manager.collect(after("READY"), deadline_s=5.0)
    messages = manager.messages
    ready = first(messages, "READY")
    assert ready is not None
    assert any("STATUS" in m for m in messages[: ready + 1]), messages
    # the cohort's counts, at READY when the startup rebuild finished within its wait, else in a
    # status update every 5 s (a loaded machine can take longer than the wait to build it)
    await manager.collect(
        lambda ms: any("draft " in m.get("STATUS", "") for m in ms[ready:]), deadline_s=12.0
    )

    await manager.collect(after("WATCHDOG", "READY", count=3), deadline_s=5.0)

    hup_sent = monotonic_usec()
    daemon.send(signal.SIGHUP)
    await manager.collect(after("READY", "RELOADING"), deadline_s=10.0)
    messages = manager.messages
    reloading = first(messages, "RELOADING", ready + 1)
    assert reloading is not None
    assert messages[reloading]["RELOADING"] == "1"
    assert hup_sent <= int(messages[reloading]["MONOTONIC_USEC"]) <= monotonic_usec()
    ready_again = first(messages, "READY", reloading + 1)
    assert ready_again is not None

    assert await daemon.stop() == 0
    await manager.collect(after("STOPPING", "RELOADING"), deadline_s=5.0)
    manager.drain()
    messages = manager.messages
    stopping = first(messages, "STOPPING")
    assert stopping is not None and stopping > ready_again
    watchdog = first(messages, "WATCHDOG")
    assert watchdog is not None and ready < watchdog < reloading
    assert first(messages, "READY") == ready  # nothing claimed readiness before the socket was up
    assert all(first(messages[: ready + 1], key) is None for key in ("WATCHDOG", "STOPPING", "RELOADING"))
