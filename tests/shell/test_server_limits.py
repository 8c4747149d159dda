"""The control socket against abusive clients: the connection cap and each user's share of it,
clients trickling their bodies, the header, keep-alive and body timeouts, the event-stream cap,
strict JSON bodies (duplicate keys, deep nesting), range checks on every number, symlinks at the
socket path, and the throttled logs of repeated loop errors and failed requests.

Each test serves the app over :class:`FakeControl` (from ``test_server``) on a real Unix socket,
with short limits passed to ``make_app``; clients are raw sockets, so a test controls every byte.
Several users are played by replacing the gate's ``peer_uid`` (every test client is this process's
user). Waiting is on a condition with a deadline (the server closing a connection, a response
arriving, a count polled until it holds); the other sleeps are the pace of a slowloris client, of a
client trickling its body, and of the fake event stream, which are the behaviour under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from daydreamd.cli.client import ServiceClient
from daydreamd.core.control import MAX_APPROVAL_LIMIT, MAX_CONCURRENCY, MAX_REQUESTS_PER_MINUTE
from daydreamd.core.errors import DaydreamError
from daydreamd.daemon import connections, server
from daydreamd.daemon.connections import (
    LIMITS_ENV,
    ConnectionGate,
    LogThrottle,
    ServerLimits,
    connection_cap,
    raise_open_files_limit,
    throttle_loop_errors,
)
from daydreamd.daemon.server import (
    ERROR_REPORTS,
    MAX_JSON_DEPTH,
    REPORTS_PER_INTERVAL,
    SocketRunner,
    make_app,
    start_unix_site,
    stop,
)
from tests.shell.test_server import (  # noqa: F401 (_sock: the fixture ``sock``)
    STATUS,
    FakeControl,
    _sock,
    call,
    leave_stale_socket,
    raw_request,
)

SHORT = ServerLimits(
    max_connections=16,
    header_timeout_s=0.5,
    keepalive_timeout_s=0.5,
    body_timeout_s=0.5,
    max_event_streams=2,
    raise_open_files=False,
)
DEADLINE_S = 5.0
"""How long a test waits for something that should happen well within a second."""


class StreamingControl(FakeControl):
    """The fake, plus an event stream that sends a heartbeat every ``every_s`` until the client goes."""

    every_s = 0.05

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        @asynccontextmanager
        async def subscription() -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
            async def iterate() -> AsyncIterator[dict[str, Any]]:
                while True:
                    yield {"event": "heartbeat"}
                    await asyncio.sleep(self.every_s)

            yield iterate()

        return subscription()

    async def plan(self, request: Any) -> dict[str, Any]:
        self._record("plan", request)
        return {}

    async def limits(self, request: Any) -> dict[str, Any]:
        self._record("limits", request)
        return {}


@asynccontextmanager
async def serving_with(
    limits: ServerLimits,
    path: Path,
    control: FakeControl | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> AsyncIterator[SocketRunner]:
    """The app over ``control`` (a :class:`StreamingControl` by default) with ``limits``, on ``path``."""
    app = make_app(control or StreamingControl(), limits=limits, on_error=on_error)
    runner = await start_unix_site(app, path)
    try:
        yield runner
    finally:
        await stop(runner)


class Raw:
    """One client connection driven byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(*await asyncio.open_unix_connection(os.fspath(path)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_within(self, seconds: float) -> bytes:
        """Everything the server sends until it closes the connection; fails if it does not in time.

        A write that met the closed connection (EPIPE) makes the read raise: that is a close too.
        """
        async with asyncio.timeout(seconds):
            try:
                return await self.reader.read()
            except ConnectionError:
                return b""

    async def response(self) -> tuple[int, Any]:
        """One response with a Content-Length body, the connection left open."""
        async with asyncio.timeout(DEADLINE_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            body = await self.reader.readexactly(int(headers["Content-Length"]))
        return int(lines[0].split()[1]), json.loads(body)

    def close(self) -> None:
        self.writer.close()


REQUEST = b"GET /v1/status HTTP/1.1\r\nHost: daydreamd\r\n\r\n"


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (polling) until ``predicate`` holds; fail after DEADLINE_S."""
    with anyio.fail_after(DEADLINE_S):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def status_now(path: Path) -> dict[str, Any]:
    """The status through the real client (a new connection), within the deadline."""
    with anyio.fail_after(DEADLINE_S):
        result: dict[str, Any] = await call(ServiceClient(path, timeout=DEADLINE_S).get, "/v1/status")
        return result


# -- the connection cap ------------------------------------------------------------------------


async def test_the_cap_closes_the_connection_idle_longest(sock: Path) -> None:
    """At the cap, a new connection closes the one quiet longest; status still answers."""
    limits = ServerLimits(
        max_connections=8,
        max_user_share=1.0,  # every client here is one user
        header_timeout_s=30,
        keepalive_timeout_s=30,
        raise_open_files=False,
    )
    async with serving_with(limits, sock) as runner:
        assert runner.gate is not None and runner.gate.cap == 8
        idle = [await Raw.open(sock) for _ in range(8)]
        gate = runner.gate
        await until(lambda: gate.open == 8)
        extra = [await Raw.open(sock) for _ in range(3)]
        for connection in idle[:3]:
            assert await connection.closed_within(DEADLINE_S) == b""
        assert await status_now(sock) == STATUS  # its connection closed the fourth
        assert await idle[3].closed_within(DEADLINE_S) == b""
        assert runner.gate.closed["evicted"] == 4
        assert runner.gate.open <= 8
        for connection in idle[4:] + extra:
            assert not connection.reader.at_eof()
            connection.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(sock: Path) -> None:
    """When every open connection is handling a request (streams here), a new one is answered 503."""
    limits = ServerLimits(max_connections=8, max_user_share=1.0, max_event_streams=8, raise_open_files=False)
    async with serving_with(limits, sock) as runner:
        assert runner.gate is not None
        streams = [await Raw.open(sock) for _ in range(8)]
        for stream in streams:
            await stream.send(b"GET /v1/events HTTP/1.1\r\nHost: daydreamd\r\n\r\n")
            async with asyncio.timeout(DEADLINE_S):
                await stream.reader.readuntil(b'"heartbeat"}\n')
        refused = await Raw.open(sock)
        answer = await refused.closed_within(DEADLINE_S)
        assert answer.startswith(b"HTTP/1.1 503 ")
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["type"] == "unavailable" and "8 connections" in body["error"]["message"]
        assert runner.gate.closed["refused"] == 1
        streams[0].close()
        gate = runner.gate
        await until(lambda: gate.open == 7)
        assert await status_now(sock) == STATUS
        for stream in streams[1:]:
            stream.close()


BODY_HEAD = (
    b"POST /v1/approvals HTTP/1.1\r\nHost: daydreamd\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n"
)
"""A complete head announcing a body no real client would send a byte at a time."""


@asynccontextmanager
async def trickling(path: Path, clients: int, pace_s: float = 0.05) -> AsyncIterator[list[int]]:
    """The security review's attack, scaled down: ``clients`` connections each send a complete head
    for a 100,000-byte body, then a body byte every ``pace_s``, and reconnect once closed.

    Yields a one-item list: the connections opened so far. The clients stop on exit.
    """
    opened = [0]

    async def client() -> None:
        while True:
            connection = await Raw.open(path)
            try:
                await connection.send(BODY_HEAD + b"{")
                opened[0] += 1
                while True:
                    try:
                        async with asyncio.timeout(pace_s):
                            if not await connection.reader.read(1):
                                break  # closed by the server
                    except TimeoutError:
                        await connection.send(b" ")
            except ConnectionError:
                pass  # closed by the server (a write or a read met the reset)
            finally:
                connection.close()

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
        try:
            yield opened
        finally:
            tg.cancel_scope.cancel()


async def test_clients_trickling_bodies_cannot_keep_status_out(sock: Path) -> None:
    """More connections than the cap, each with a body arriving a byte at a time: status answers.

    A request whose body has not arrived is not being handled yet: its connection may be closed to
    make room like one still sending headers (before, each held its connection for the whole body
    timeout and status got 503s). The body timeout here is long, so that it is not what helps.
    """
    limits = ServerLimits(
        max_connections=16,
        max_user_share=1.0,  # one user plays every client
        header_timeout_s=30,
        keepalive_timeout_s=30,
        body_timeout_s=30,
        raise_open_files=False,
    )
    control, reported = StreamingControl(), list[BaseException]()
    async with serving_with(limits, sock, control, reported.append) as runner:
        gate = runner.gate
        assert gate is not None
        async with trickling(sock, clients=32) as opened:
            await until(lambda: gate.closed["evicted"] >= 16 and gate.open == gate.evictable == 16)
            for _ in range(10):
                assert await status_now(sock) == STATUS
            assert opened[0] >= 32 and gate.open <= 16
    assert [name for name, _ in control.calls] == ["status"] * 10
    assert reported == []  # a body cut off by a close for room is no error of the service


class Users:
    """Plays several users: each connection made from now on is from ``uid``."""

    def __init__(self, gate: ConnectionGate, uid: int = 1001) -> None:
        self.uid = uid
        gate.peer_uid = lambda _transport: self.uid


async def test_one_user_cannot_hold_more_than_their_share(sock: Path) -> None:
    """A user at their share closes their own connection quiet longest; others' are left alone."""
    limits = ServerLimits(
        max_connections=8, header_timeout_s=30, keepalive_timeout_s=30, raise_open_files=False
    )
    async with serving_with(limits, sock) as runner:
        gate = runner.gate
        assert gate is not None and gate.user_cap == 4
        users = Users(gate, 1001)
        greedy = [await Raw.open(sock) for _ in range(7)]
        await until(lambda: gate.closed["evicted"] == 3)
        assert (gate.open, gate.open_from(1001)) == (4, 4)
        for connection in greedy[:3]:
            assert await connection.closed_within(DEADLINE_S) == b""
        users.uid = 1002
        others = [await Raw.open(sock) for _ in range(4)]
        await until(lambda: gate.open == 8)
        assert gate.closed["evicted"] == 3  # there was room: nothing was closed for them
        users.uid = 1001
        more = [await Raw.open(sock) for _ in range(4)]
        await until(lambda: gate.closed["evicted"] == 7)
        assert (gate.open, gate.open_from(1001), gate.open_from(1002)) == (8, 4, 4)
        for connection in greedy[3:]:
            assert await connection.closed_within(DEADLINE_S) == b""
        for connection in others + more:
            assert not connection.reader.at_eof()
            connection.close()


async def test_a_user_with_a_request_on_each_of_their_share_gets_503_and_others_get_in(sock: Path) -> None:
    limits = ServerLimits(max_connections=8, max_event_streams=8, raise_open_files=False)
    async with serving_with(limits, sock) as runner:
        gate = runner.gate
        assert gate is not None
        users = Users(gate, 1001)
        streams = [await open_stream(sock) for _ in range(4)]
        assert [status for status, _ in streams] == [200] * 4
        refused = await Raw.open(sock)
        answer = await refused.closed_within(DEADLINE_S)
        assert answer.startswith(b"HTTP/1.1 503 ")
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"] == {
            "type": "unavailable",
            "message": "uid 1001 has 4 connections open on daydreamd's socket, the most one user may "
            "(of 8), and a request in hand on each; close some and try again",
        }
        assert gate.closed["refused_user"] == 1 and gate.open == 4
        users.uid = 1002
        assert await status_now(sock) == STATUS
        assert gate.closed["evicted"] == 0
        for _, stream in streams:
            stream.close()


async def test_the_user_is_the_peer_s_uid(sock: Path) -> None:
    limits = ServerLimits(header_timeout_s=30, raise_open_files=False)
    async with serving_with(limits, sock) as runner:
        gate = runner.gate
        assert gate is not None
        client = await Raw.open(sock)
        await until(lambda: gate.open_from(os.getuid()) == 1)
        client.close()
        await until(lambda: gate.open_from(os.getuid()) == 0)


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (REQUEST, True),
        (b"GET /v1/status HTTP/1.1\r\nHost: daydreamd\r\n", False),
        (BODY_HEAD + b"{", False),
        (b"POST /v1/pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", True),
        (b"POST /v1/pause HTTP/1.1\r\ncontent-length:  3 \r\nHost: d\r\n\r\n{}", False),
        (b"POST /v1/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", False),
        (b"POST /v1/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True),
        (b"GET /v1/status HTTP/1.1\r\nX-Long: " + b"a" * connections.PEEK_BYTES, True),
    ],
)
def test_whether_waiting_bytes_are_a_whole_request(data: bytes, complete: bool) -> None:
    """What decides whether a connection whose first bytes are unread may be closed for room."""
    assert connections.request_complete(data) is complete


def test_the_cap_leaves_descriptors_to_the_rest_of_the_service() -> None:
    limits = ServerLimits(max_connections=256)
    assert connection_cap(limits, 65536) == 256
    assert connection_cap(limits, 2048) == 256
    assert connection_cap(limits, 1024) == 128  # 1024 - 512 reserved - 384 in transit
    assert connection_cap(limits, 800) == connections.MIN_CONNECTIONS
    assert connection_cap(ServerLimits(max_connections=4), 100) == 4
    assert connection_cap(limits, resource.RLIM_INFINITY) == 256


# -- timeouts ----------------------------------------------------------------------------------


async def test_slowloris_headers_are_cut_off_at_the_header_timeout(sock: Path) -> None:
    """A client trickling its headers a byte at a time is closed once header_timeout_s has passed."""
    limits = ServerLimits(header_timeout_s=0.5, keepalive_timeout_s=30, raise_open_files=False)
    async with serving_with(limits, sock) as runner:
        assert runner.gate is not None
        slow = await Raw.open(sock)
        opened = time.monotonic()

        async def trickle() -> None:
            with suppress(ConnectionError):
                for byte in b"GET /v1/status HTTP/1.1\r\nHost: daydreamd\r\nX-Slow: " + b"a" * 1000:
                    await slow.send(bytes([byte]))
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        assert await slow.closed_within(DEADLINE_S) == b""
        took = time.monotonic() - opened
        task.cancel()
        assert 0.4 <= took < 2.0, took
        assert runner.gate.closed["header_timeout"] == 1
        assert await status_now(sock) == STATUS


async def test_a_connection_that_sends_nothing_is_closed(sock: Path) -> None:
    async with serving_with(SHORT, sock):
        silent = await Raw.open(sock)
        assert await silent.closed_within(DEADLINE_S) == b""


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(sock: Path) -> None:
    """Requests on one connection work; after the last response it is closed when idle too long."""
    limits = ServerLimits(header_timeout_s=30, keepalive_timeout_s=0.5, raise_open_files=False)
    async with serving_with(limits, sock) as runner:
        assert runner.gate is not None
        client = await Raw.open(sock)
        for _ in range(3):
            await client.send(REQUEST)
            assert await client.response() == (200, STATUS)
        answered = time.monotonic()
        assert await client.closed_within(DEADLINE_S) == b""
        assert 0.4 <= time.monotonic() - answered < 2.0  # the gate's timer, or aiohttp's own


async def test_a_body_that_does_not_arrive_is_408_and_the_connection_closes(sock: Path) -> None:
    control = StreamingControl()
    async with serving_with(SHORT, sock, control):
        client = await Raw.open(sock)
        await client.send(
            b"POST /v1/approvals HTTP/1.1\r\nHost: daydreamd\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"stage": '
        )
        answer = await client.closed_within(DEADLINE_S)
    assert answer.startswith(b"HTTP/1.1 408 ")
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"] == {
        "type": "timeout",
        "message": "the request body did not arrive within 0.5 s of its headers",
    }
    assert control.calls == []


async def test_event_streams_outlive_every_timeout(sock: Path) -> None:
    """A stream is a request being handled: header and keep-alive timeouts do not apply to it."""
    async with serving_with(SHORT, sock):
        stream = await Raw.open(sock)
        await stream.send(b"GET /v1/events HTTP/1.1\r\nHost: daydreamd\r\n\r\n")
        started = time.monotonic()
        beats = 0
        async with asyncio.timeout(DEADLINE_S):
            while time.monotonic() - started < 3 * SHORT.keepalive_timeout_s:
                await stream.reader.readuntil(b'"heartbeat"}\n')
                beats += 1
        assert beats >= 10
        stream.close()


async def open_stream(path: Path) -> tuple[int, Raw]:
    """Ask for ``/v1/events``: the status, and the connection (a 503's body is read off it)."""
    stream = await Raw.open(path)
    await stream.send(b"GET /v1/events HTTP/1.1\r\nHost: daydreamd\r\n\r\n")
    async with asyncio.timeout(DEADLINE_S):
        head = await stream.reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    if status == 200:
        async with asyncio.timeout(DEADLINE_S):
            await stream.reader.readuntil(b'"heartbeat"}\n')
    return status, stream


async def test_event_streams_are_capped(sock: Path) -> None:
    """Beyond max_event_streams a stream is a 503 naming the cap; a closed stream frees its slot."""
    async with serving_with(SHORT, sock):
        streams = [await open_stream(sock) for _ in range(2)]
        assert [status for status, _ in streams] == [200, 200]
        status, _, body = await raw_request(sock, "GET", "/v1/events")
        assert status == 503 and body["error"]["type"] == "unavailable"
        assert "2 event streams are open" in body["error"]["message"]
        streams[0][1].close()
        with anyio.fail_after(DEADLINE_S):
            while True:  # the slot comes back once the server has seen the first stream go
                status, third = await open_stream(sock)
                third.close()
                if status == 200:
                    break
                await anyio.sleep(0.02)
        streams[1][1].close()


# -- range checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [f"limit={10**29}", "limit=10001", "limit=0", "limit=-1", "limit=%C2%B2", "limit=" + "9" * 5000],
)
async def test_a_huge_or_odd_limit_in_the_query_is_400(sock: Path, query: str) -> None:
    async with serving_with(SHORT, sock):
        status, _, body = await raw_request(sock, "GET", f"/v1/generations?{query}")
    assert status == 400, body
    assert body["error"]["message"].startswith("limit: must be an integer from 1 to 10000, got ")
    assert len(body["error"]["message"]) < 200


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/approvals",
            f'{{"stage": "draft", "limit": {10**29}}}',
            f"limit: must be an integer from 1 to {MAX_APPROVAL_LIMIT} or null, got {10**29}",
        ),
        (
            "/v1/plans",
            '{"stage": "draft", "limit": -5}',
            f"limit: must be an integer from 1 to {MAX_APPROVAL_LIMIT} or null, got -5",
        ),
        (
            "/v1/limits",
            f'{{"concurrency": {10**23}}}',
            f"concurrency: must be an integer from 1 to {MAX_CONCURRENCY} or null, got {10**23}",
        ),
        (
            "/v1/limits",
            f'{{"llm_model_id": "m", "requests_per_minute": {10**23}}}',
            f"requests_per_minute: must be an integer from 0 to {MAX_REQUESTS_PER_MINUTE} or null, "
            f"got {10**23}",
        ),
        (
            "/v1/limits",
            '{"llm_model_id": "m", "requests_per_minute": -1}',
            f"requests_per_minute: must be an integer from 0 to {MAX_REQUESTS_PER_MINUTE} or null, got -1",
        ),
        ("/v1/limits", '{"concurrency": 0}', "concurrency: must be at least 1 (pause a model to stop it)"),
        (
            "/v1/approvals",
            '{"stage": "draft", "budget_usd": 1e999}',
            "budget_usd: must be a number of dollars above 0 and below 1000000000, or null, got inf",
        ),
        (
            "/v1/approvals",
            '{"stage": "draft", "budget_usd": NaN}',
            "budget_usd: must be a number of dollars above 0 and below 1000000000, or null, got nan",
        ),
        (
            "/v1/approvals",
            f'{{"stage": "draft", "budget_usd": {10**400}}}',
            "budget_usd: must be a number of dollars above 0 and below 1000000000, or null, got "
            + "1"
            + "0" * 36
            + "...",
        ),
    ],
)
async def test_every_number_in_a_body_is_range_checked(
    sock: Path, path: str, body: str, message: str
) -> None:
    """Out of range is a 400 naming the field and the range, never a 500 (10**29 was an OverflowError)."""
    control = StreamingControl()
    async with serving_with(SHORT, sock, control):
        status, _, answer = await raw_request(sock, "POST", path, body.encode())
    assert (status, answer["error"]["message"]) == (400, message)
    assert control.calls == []


async def test_an_integer_too_long_to_read_is_invalid_json(sock: Path) -> None:
    async with serving_with(SHORT, sock):
        status, _, answer = await raw_request(
            sock, "POST", "/v1/approvals", f'{{"stage": "draft", "limit": {"9" * 5000}}}'.encode()
        )
    assert status == 400 and "not valid JSON" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"stage": "draft", "stage": "essay"}', "stage: given more than once in the request body"),
        ('{"stage": "draft", "limit": 1, "limit": 1}', "limit: given more than once in the request body"),
        ('{"stage": "draft", "x": {"a": 1, "a": 2}}', "a: given more than once in the request body"),
        ('{"\\n": 1, "\\n": 2}', "'\\n': given more than once in the request body"),
    ],
)
async def test_a_key_given_twice_is_400_naming_it(sock: Path, body: str, message: str) -> None:
    """``json`` keeps the last of two equal keys: an approval of drafts could silently be one of essays."""
    control = StreamingControl()
    async with serving_with(SHORT, sock, control):
        status, _, answer = await raw_request(sock, "POST", "/v1/approvals", body.encode())
    assert (status, answer["error"]) == (400, {"type": "bad_request", "message": message})
    assert control.calls == []


def nested(depth: int, *, closed: bool = True) -> bytes:
    return b"[" * depth + (b"]" * depth if closed else b"")


@pytest.mark.parametrize(
    "body",
    [
        nested(200_000, closed=False),  # the review's 200 KB of [[[[: a RecursionError, a 500 and a traceback
        nested(100_000),
        b'{"stage": ' + nested(MAX_JSON_DEPTH) + b"}",  # one level too many, well within recursion
        b'{"stage": "draft", "x": {"y": ' + b'{"z": ' * 40 + b"1" + b"}" * 42,
    ],
)
async def test_deeply_nested_json_is_400_and_not_an_error_of_the_service(sock: Path, body: bytes) -> None:
    control, reported = StreamingControl(), list[BaseException]()
    async with serving_with(SHORT, sock, control, reported.append):
        status, _, answer = await raw_request(sock, "POST", "/v1/approvals", body)
    assert (status, answer["error"]) == (
        400,
        {
            "type": "bad_request",
            "message": f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
        },
    )
    assert control.calls == [] and reported == []


async def test_json_nested_to_the_limit_is_read(sock: Path) -> None:
    """At MAX_JSON_DEPTH levels the body is decoded (and refused for what it says, not its shape)."""
    async with serving_with(SHORT, sock):
        body = b'{"stage": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
        status, _, answer = await raw_request(sock, "POST", "/v1/approvals", body)
    assert status == 400 and answer["error"]["message"].startswith("stage: ")


async def test_an_unknown_charset_is_400(sock: Path) -> None:
    control = StreamingControl()
    async with serving_with(SHORT, sock, control):
        client = await Raw.open(sock)
        body = b'{"stage": "draft"}'
        await client.send(
            b"POST /v1/approvals HTTP/1.1\r\nHost: daydreamd\r\n"
            b"Content-Type: application/json; charset=nope\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        status, answer = await client.response()
        client.close()
    assert (status, answer["error"]["message"]) == (400, "charset 'nope': unknown; send the body in UTF-8")
    assert control.calls == []


async def test_failed_requests_are_reported_a_few_times_per_interval(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that trips a bug, sent in a loop, costs a few tracebacks per interval, then a count."""
    now = [0.0]
    logged = structlog.testing.CapturingLogger()
    monkeypatch.setattr(server, "log", logged)
    control, reported = StreamingControl(), list[BaseException]()
    control.error = KeyError("stages")
    app = make_app(control, limits=SHORT, on_error=reported.append)
    app[ERROR_REPORTS] = LogThrottle(60.0, clock=lambda: now[0], burst=REPORTS_PER_INTERVAL)
    runner = await start_unix_site(app, sock)
    try:
        for _ in range(10):
            status, _, answer = await raw_request(sock, "GET", "/v1/status")
            assert (status, answer["error"]["type"]) == (500, "internal")
        assert len(reported) == REPORTS_PER_INTERVAL
        control.error = ValueError("another kind")
        assert (await raw_request(sock, "GET", "/v1/status"))[0] == 500
        assert reported[-1] is control.error  # each type has its own allowance
        now[0] = 60.0
        control.error = KeyError("stages")
        assert (await raw_request(sock, "GET", "/v1/status"))[0] == 500
    finally:
        await stop(runner)
    assert len(reported) == REPORTS_PER_INTERVAL + 2
    counts = [call.kwargs for call in logged.calls if call.args == ("control_request_failed_not_logged",)]
    assert counts == [
        {"error_type": "KeyError", "not_logged": 10 - REPORTS_PER_INTERVAL, "log_interval_s": 60.0}
    ]


# -- the socket path ---------------------------------------------------------------------------


async def test_a_symlink_at_the_socket_path_is_refused_and_left_alone(sock: Path) -> None:
    """A link to a stale socket elsewhere: neither the link nor its target is removed or replaced."""
    elsewhere, link = sock.with_name("elsewhere.sock"), anyio.Path(sock)
    leave_stale_socket(elsewhere)
    inode = (await anyio.Path(elsewhere).lstat()).st_ino
    await link.symlink_to(elsewhere)
    with pytest.raises(DaydreamError, match=r"is a symbolic link \(to .*elsewhere\.sock\).*paths\.socket"):
        await start_unix_site(make_app(StreamingControl(), limits=SHORT), sock)
    assert await link.is_symlink() and await link.readlink() == anyio.Path(elsewhere)
    assert (await anyio.Path(elsewhere).lstat()).st_ino == inode


async def test_a_symlink_to_a_live_socket_or_to_nothing_is_refused(sock: Path) -> None:
    live, link, nothing = sock.with_name("live.sock"), anyio.Path(sock), anyio.Path(sock.with_name("n.sock"))
    async with serving_with(SHORT, live):
        await link.symlink_to(live)
        with pytest.raises(DaydreamError, match="is a symbolic link"):
            await start_unix_site(make_app(StreamingControl(), limits=SHORT), sock)
        assert await status_now(live) == STATUS
    await link.unlink()
    await link.symlink_to(nothing)
    with pytest.raises(DaydreamError, match="is a symbolic link"):
        await start_unix_site(make_app(StreamingControl(), limits=SHORT), sock)
    assert await link.is_symlink() and not await nothing.exists()


async def test_stop_never_removes_a_link_put_in_the_socket_s_place(sock: Path) -> None:
    runner = await start_unix_site(make_app(StreamingControl(), limits=SHORT), sock)
    link = anyio.Path(sock)
    await link.unlink()
    await link.symlink_to(sock.with_name("other.sock"))
    await stop(runner)
    assert await link.is_symlink()


# -- descriptors and the log -------------------------------------------------------------------


def test_the_soft_open_files_limit_is_raised_towards_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"now": (1024, 524288)}
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, value: limits.update(now=value))
    assert raise_open_files_limit() == (65536, 524288)
    limits["now"] = (1024, 4096)
    assert raise_open_files_limit() == (4096, 4096)
    limits["now"] = (100000, 200000)
    assert raise_open_files_limit() == (100000, 200000)  # never lowered


def test_an_open_files_limit_that_cannot_be_raised_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_kind: int, _value: tuple[int, int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (1024, 524288))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_open_files_limit() == (1024, 524288)


def test_the_log_throttle_keeps_one_line_per_kind_per_interval() -> None:
    now = [0.0]
    throttle = LogThrottle(5.0, clock=lambda: now[0])
    assert throttle.admit("emfile") == 0
    assert [throttle.admit("emfile") for _ in range(1000)] == [None] * 1000
    assert throttle.admit("other") == 0
    now[0] = 5.0
    assert throttle.admit("emfile") == 1000
    assert throttle.admit("emfile") is None
    now[0] = 20.0
    assert throttle.admit("emfile") == 1


def test_the_log_throttle_may_let_a_few_through_per_interval() -> None:
    now = [0.0]
    throttle = LogThrottle(5.0, clock=lambda: now[0], burst=3)
    assert [throttle.admit("bug") for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 4.9
    assert throttle.admit("bug") is None
    now[0] = 5.0
    assert [throttle.admit("bug") for _ in range(4)] == [3, 0, 0, None]


async def test_repeated_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's 'out of system resource' report, 10,000 times over: one line, then a count."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    undo = throttle_loop_errors(loop, 60.0)
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(10_000):
                error = OSError(24, "Too many open files")
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
            loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    finally:
        undo()
    messages = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    assert messages == ["socket.accept() out of system resource", "something else"]
    assert loop.get_exception_handler() is before


def test_limits_from_the_environment() -> None:
    assert ServerLimits.from_env({}) == ServerLimits()
    changed = ServerLimits.from_env(
        {LIMITS_ENV: "header_timeout_s=1.5, max_connections=64,raise_open_files=0"}
    )
    assert (changed.header_timeout_s, changed.max_connections, changed.raise_open_files) == (1.5, 64, False)
    with pytest.raises(DaydreamError, match="'nope' is not one of"):
        ServerLimits.from_env({LIMITS_ENV: "nope=1"})
    with pytest.raises(DaydreamError, match="max_connections must be a positive number"):
        ServerLimits.from_env({LIMITS_ENV: "max_connections=-3"})
