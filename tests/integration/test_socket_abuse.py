"""The control socket under abuse, with the real process: idle and slowloris connections, bodies
trickled a byte at a time, huge numbers, bodies that are not strict JSON, a symbolic link at the
socket path.

- Hundreds of idle connections (more than one user's share of the cap of 256) and a few slowloris
  clients trickling their headers: ``/v1/status`` still answers promptly while they are attached (a
  new connection closes the one quiet longest), the header timeout closes every one of them within
  a bound, and the log says so in a handful of lines, not one per connection.
- Twice as many clients as the cap, each sending a complete head for a 100,000-byte body and then
  a byte at a time, reconnecting when closed (the security review's attack, scaled down): every
  status answers, promptly.
- ``limit=10**29`` in a query or a body, ``concurrency`` 10**23: a 400 naming the field and the
  range (the body's limit was an OverflowError from SQLite and a 500). A key given twice, and
  200 KB of ``[[[[`` (a RecursionError, a 500 and a traceback in the log per request): a 400
  naming the problem, and nothing in the log.
- A symbolic link at ``paths.socket`` to a stale socket elsewhere: the service refuses to start
  and leaves the link and its target alone.

The daemon gets short timeouts through ``DAYDREAMD_SOCKET_LIMITS`` (read once at its startup).
Waiting is on conditions with deadlines (polled); the other sleeps are a slowloris client's pauses
between bytes and a connect retried while the listen backlog is full, which are the behaviour under
test.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from daydreamd.cli.client import ServiceClient, ServiceError
from daydreamd.core.control import MAX_APPROVAL_LIMIT, MAX_CONCURRENCY, MAX_REQUESTS_PER_MINUTE
from daydreamd.daemon.connections import LIMITS_ENV, MAX_CONNECTIONS, MAX_USER_SHARE
from tests.integration.daemon import Daemon, fast_config
from tests.shell.test_server import raw_request
from tests.shell.test_server_limits import trickling, until

HEADER_TIMEOUT_S = 3.0
IDLE = 300
"""Idle connections: more than the cap, so some are closed to make room."""
SHARE = int(MAX_CONNECTIONS * MAX_USER_SHARE)
"""Connections one user may hold (every client here is the test's user)."""
SLOWLORIS = 5
PROMPT_S = 1.0
"""A status answer slower than this, with the connections attached, fails the test."""


def start_config() -> str:
    return fast_config(None, provider="mock")


def connect(path: Path, deadline_s: float = 10.0) -> socket.socket:
    """A connection (non-blocking once made); a full listen backlog (EAGAIN) is retried until the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(os.fspath(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)  # the server is accepting the backlog: try again


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (end of stream or reset); nothing is consumed."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


class Watch:
    """Client connections and when the server was first seen closing each one."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.opened = time.monotonic()
        self.closed_at: dict[int, float] = {}

    def poll(self) -> int:
        now = time.monotonic()
        for index, sock in enumerate(self.socks):
            if index not in self.closed_at and closed_by_server(sock):
                self.closed_at[index] = now
        return len(self.socks) - len(self.closed_at)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


async def timed_status(daemon: Daemon) -> float:
    started = time.monotonic()
    status = await daemon.status()
    assert status is not None and "stages" in status, status
    return time.monotonic() - started


async def test_status_answers_while_idle_and_slowloris_connections_are_attached(
    tmp_path: Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LIMITS_ENV, f"header_timeout_s={HEADER_TIMEOUT_S},keepalive_timeout_s=2")
    daemon = Daemon(tmp_path, start_config())
    daemons.append(daemon)
    await daemon.start()

    idle = Watch(await anyio.to_thread.run_sync(lambda: [connect(daemon.socket) for _ in range(IDLE)]))
    slow = Watch(await anyio.to_thread.run_sync(lambda: [connect(daemon.socket) for _ in range(SLOWLORIS)]))
    stop_trickling = anyio.Event()

    async def trickle() -> None:
        """Each slowloris client sends a request line, then one header byte every 0.2 s."""
        for sock in slow.socks:
            sock.send(b"GET /v1/status HTTP/1.1\r\nHost: daydreamd\r\nX-Slow: ")
        while not stop_trickling.is_set():
            for sock in slow.socks:
                with suppress(OSError):  # closed by the server: that is the point
                    sock.send(b"a")
            with anyio.move_on_after(0.2):
                await stop_trickling.wait()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            # While they are attached (the header timeout has not passed), status is prompt.
            latencies = [await timed_status(daemon) for _ in range(5)]
            assert max(latencies) < PROMPT_S, latencies
            attached = idle.poll()
            assert time.monotonic() - idle.opened < HEADER_TIMEOUT_S, "too slow to test while attached"
            # Beyond the user's share, their connections quiet longest were closed to make room, no more.
            assert SHARE - SLOWLORIS - len(latencies) <= attached < SHARE, attached
            assert slow.poll() == SLOWLORIS

            # The header timeout closes every slowloris client (however it trickles) and every idle one.
            with anyio.fail_after(HEADER_TIMEOUT_S + 5):
                while True:
                    if not (slow.poll() or idle.poll()):
                        break
                    await anyio.sleep(0.02)
            stop_trickling.set()
        for index, at in slow.closed_at.items():
            took = at - slow.opened
            assert HEADER_TIMEOUT_S - 0.2 <= took <= HEADER_TIMEOUT_S + 2, (index, took)
        assert await timed_status(daemon) < PROMPT_S
    finally:
        idle.close()
        slow.close()

    # A few throttled lines tell of it all: not one per connection closed.
    log_lines = (tmp_path / "state" / "dd.log").read_text().splitlines()
    closes = [line for line in log_lines if "control_connection_closed" in line]
    assert 1 <= len(closes) <= 6, closes
    assert any('"reason": "evicted"' in line for line in closes)
    assert any('"reason": "header_timeout"' in line for line in closes)


TRICKLE_CAP = 32


async def test_status_answers_while_clients_trickle_their_bodies(
    tmp_path: Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More clients than the cap, each with a body arriving a byte at a time and reconnecting once
    closed: the service closes them for room (they are not being handled until their body is in),
    and status answers every time, promptly (before, most status calls got a 503 or a reset)."""
    monkeypatch.setenv(LIMITS_ENV, f"max_connections={TRICKLE_CAP}")
    daemon = Daemon(tmp_path, start_config())
    daemons.append(daemon)
    await daemon.start()
    async with trickling(daemon.socket, clients=2 * TRICKLE_CAP, pace_s=0.2) as opened:
        await until(lambda: opened[0] >= 4 * TRICKLE_CAP)  # every slot taken, and taken again
        latencies = [await timed_status(daemon) for _ in range(10)]
    assert max(latencies) < PROMPT_S, latencies
    log_lines = (tmp_path / "state" / "dd.log").read_text().splitlines()
    assert not [line for line in log_lines if "control_request_failed" in line]
    closes = [line for line in log_lines if "control_connection_closed" in line]
    assert 1 <= len(closes) <= 8, closes
    assert any('"reason": "evicted"' in line for line in closes)


async def test_huge_numbers_are_400_naming_the_field_and_range(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = Daemon(tmp_path, start_config())
    daemons.append(daemon)
    await daemon.start()

    async def error(method: str, path: str, payload: Any) -> ServiceError:
        client = ServiceClient(daemon.socket, timeout=10.0)
        call = (
            (lambda: client.get(path, payload)) if method == "GET" else (lambda: client.post(path, payload))
        )
        with pytest.raises(ServiceError) as caught:
            await anyio.to_thread.run_sync(call)
        return caught.value

    huge = 10**29
    cases = [
        (
            "GET",
            "/v1/generations",
            {"limit": huge},
            f"limit: must be an integer from 1 to 10000, got '{huge}'",
        ),
        (
            "POST",
            "/v1/approvals",
            {"stage": "draft", "limit": huge},
            f"limit: must be an integer from 1 to {MAX_APPROVAL_LIMIT} or null, got {huge}",
        ),
        (
            "POST",
            "/v1/plans",
            {"stage": "draft", "limit": huge},
            f"limit: must be an integer from 1 to {MAX_APPROVAL_LIMIT} or null, got {huge}",
        ),
        (
            "POST",
            "/v1/limits",
            {"concurrency": 10**23},
            f"concurrency: must be an integer from 1 to {MAX_CONCURRENCY} or null, got {10**23}",
        ),
        (
            "POST",
            "/v1/limits",
            {"llm_model_id": "sonnet_4", "requests_per_minute": 10**23},
            f"requests_per_minute: must be an integer from 0 to {MAX_REQUESTS_PER_MINUTE} or null, "
            f"got {10**23}",
        ),
    ]
    for method, path, payload, message in cases:
        caught = await error(method, path, payload)
        assert (caught.status, caught.type, caught.message) == (400, "bad_request", message), path

    not_strict = [
        (b'{"stage": "draft", "stage": "essay"}', "stage: given more than once in the request body"),
        (b"[" * 200_000, "the request body nests arrays and objects more than 32 levels deep"),
    ]
    for _ in range(3):
        for body, message in not_strict:
            status_code, _, answer = await raw_request(daemon.socket, "POST", "/v1/approvals", body)
            assert (status_code, answer["error"]["message"]) == (400, message)

    status = await daemon.status()  # nothing was approved, nothing changed
    assert status is not None and status["stages"]["draft"]["queued"] == 0
    limits = await daemon.get("/v1/limits")
    assert limits["concurrency"] == 8
    log = (tmp_path / "state" / "dd.log").read_text()
    assert "control_request_failed" not in log and "RecursionError" not in log


async def test_a_symlink_at_the_socket_path_stops_the_service_and_is_left_alone(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = Daemon(tmp_path, start_config())
    daemons.append(daemon)
    elsewhere = daemon.socket_dir / "elsewhere.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:  # a crashed process's socket
        stale.bind(os.fspath(elsewhere))
    inode = elsewhere.lstat().st_ino
    daemon.socket.symlink_to(elsewhere)

    process = daemon.spawn()
    code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
    assert code == 2, daemon.log_tail()  # a configuration error: restarting cannot help
    output = daemon.stdout.read_text()
    assert f"{daemon.socket} is a symbolic link (to {elsewhere})" in output
    assert "Traceback" not in output
    assert daemon.socket.is_symlink() and daemon.socket.readlink() == elsewhere
    assert elsewhere.lstat().st_ino == inode
