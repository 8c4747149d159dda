"""The control socket's connections: how many may be open, how long each may take (async shell).

Why this module exists: aiohttp has no limit on connections, and no timeout for a connection that
never completes a request (before 3.14 its keep-alive timer starts only after a first response), so
one client could hold descriptors for ever: 10,000 idle connections once used up the default 1,024
open files, made the service unreachable and failed its rebuilds with EMFILE. The API itself (its
handlers, error answers and the socket file) is :mod:`daydreamd.daemon.server`; this is what stands
between it and the socket's clients.

* **The cap** (:class:`ConnectionGate`, the protocol factory the socket serves): at most
  ``max_connections`` connections are open, and at most ``max_user_share`` of them from one user
  (the peer's uid, from ``SO_PEERCRED``); a new one beyond closes the one quiet longest that has
  not sent a complete request (head and body), or is answered 503 when every one is busy. Request
  heads must arrive within ``header_timeout_s``, and an idle keep-alive connection is closed after
  ``keepalive_timeout_s``. What clients are allowed is one :class:`ServerLimits` (overridable through
  :data:`LIMITS_ENV`); its body and event-stream limits are applied by the server's handlers.
* **The descriptor budget**: the soft open-files limit is raised towards the hard one
  (:func:`raise_open_files_limit`); where it stays low, :func:`connection_cap` shrinks the cap so that
  socket clients, plus those in transit (:data:`IN_TRANSIT`), leave :data:`RESERVED_FDS` to SQLite,
  data files, rebuilds, the watcher and LLM calls.
* **Log throttling** (:class:`LogThrottle`): each kind of closed connection, and each kind of
  event-loop error (``socket.accept() out of system resource``, :func:`throttle_loop_errors`), is
  logged at most once every ``log_interval_s``, with how many were not logged.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import resource
import socket
import struct
import sys
import termios
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, fields, replace
from itertools import islice
from typing import Any, cast

import structlog
from aiohttp import StreamReader, web

from daydreamd.core.errors import DaydreamError

log = structlog.get_logger("daydreamd")

MAX_CONNECTIONS = 256
"""Connections open on the control socket at once (``daydreamctl`` uses one per command)."""
HEADER_TIMEOUT_S = 5.0
"""A request's line and headers must be complete this long after the connection opens (or after
the first bytes of the next request on a kept-alive connection)."""
KEEPALIVE_TIMEOUT_S = 5.0
"""An idle keep-alive connection is closed after this long."""
BODY_TIMEOUT_S = 2.0
"""A request body must have arrived this long after its headers (else 408 and the connection closes):
every API body is a small JSON object, sent with its headers by any real client."""
MAX_USER_SHARE = 0.5
"""The share of ``max_connections`` one user (peer uid) may hold, so that one user cannot take the
socket from the others, however many connections they open."""
MAX_BODY_BYTES = 1024 * 1024
"""Largest request body (413 beyond); every API body is a small JSON object."""
MAX_EVENT_STREAMS = 64
"""``GET /v1/events`` streams open at once (503 beyond): a stream holds its connection for hours."""
RESERVED_FDS = 512
"""File descriptors kept for the rest of the service (SQLite, data files, rebuilds, the watcher, LLM
connections) when the open-files limit is too low for ``max_connections`` socket clients besides."""
ACCEPT_BATCH = 128
"""The listen backlog, and how many connections asyncio accepts at once before the gate sees them."""
IN_TRANSIT = 3 * ACCEPT_BATCH
"""Descriptors of connections accepted but not yet admitted, or closed but not yet released (each a
loop iteration away): under a flood about three accept batches, measured by ``bench/socket_abuse.py``."""
SETTLING_S = 0.5
"""A connection accepted this recently, with nothing sent yet, is closed for room only when no
older one may be: a client's request may still be on its way (a client whose thread or process
the machine has not scheduled since its connect), while the quiet slot-holders of a flood are
older. Only a preference: when every closable connection is that young, one of them is closed,
so a flood of new connections cannot turn the newcomer away by being young."""
VICTIM_SCAN = 32
"""Connections looked at, quiet longest first, for one to close for room."""
PEEK_BYTES = 16384
"""Unread bytes looked at to tell whether a connection's first bytes are a complete request (one
longer than this, not yet read, is taken for complete)."""
MIN_CONNECTIONS = 8
"""A low open-files limit never lowers the connection cap below this."""
OPEN_FILES_WANTED = 65536
"""The soft RLIMIT_NOFILE is raised towards the hard limit, up to this (the systemd unit sets both)."""
LOG_INTERVAL_S = 5.0
"""Repeated log lines of one kind (connections closed, event-loop errors) are written at most this often."""
LIMITS_ENV = "DAYDREAMD_SOCKET_LIMITS"
"""Overrides of :class:`ServerLimits` for tests and benchmarks, read once when the app is made:
``name=value`` pairs separated by commas, e.g. ``header_timeout_s=1,max_connections=64``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """What the control socket allows its clients (the defaults are the service's; tests shorten them).

    The connection fields are this module's; ``body_timeout_s``, ``max_body_bytes`` and
    ``max_event_streams`` are applied by the handlers of :mod:`daydreamd.daemon.server`.
    """

    max_connections: int = MAX_CONNECTIONS
    max_user_share: float = MAX_USER_SHARE
    """At most this share of the connection cap (at least one) is open from one peer uid at once."""
    header_timeout_s: float = HEADER_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_body_bytes: int = MAX_BODY_BYTES
    max_event_streams: int = MAX_EVENT_STREAMS
    reserved_fds: int = RESERVED_FDS
    log_interval_s: float = LOG_INTERVAL_S
    raise_open_files: bool = True
    """Raise the process's soft open-files limit as the socket opens (:func:`raise_open_files_limit`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerLimits:
        """The defaults with :data:`LIMITS_ENV`'s overrides.

        Raises:
            DaydreamError: a name that is not a field, or a value that is not a positive number.
        """
        text = env.get(LIMITS_ENV, "").strip()
        if not text:
            return cls()
        kinds = {f.name: f.type for f in fields(cls)}
        changes: dict[str, Any] = {}
        for item in text.split(","):
            name, _, value = (part.strip() for part in item.partition("="))
            kind = kinds.get(name)
            if kind is None:
                raise DaydreamError(f"{LIMITS_ENV}: {name!r} is not one of {', '.join(kinds)}")
            if kind == "bool":
                if value not in ("0", "1", "false", "true"):
                    raise DaydreamError(f"{LIMITS_ENV}: {name} must be 0, 1, false or true, got {value!r}")
                changes[name] = value in ("1", "true")
                continue
            try:
                number: float = float(value) if kind == "float" else int(value)
            except ValueError:
                number = 0
            if not 0 < number < 1e9:
                raise DaydreamError(f"{LIMITS_ENV}: {name} must be a positive number, got {value!r}")
            changes[name] = number
        return replace(cls(), **changes)


# -- connections: the cap and the timeouts ------------------------------------------------------

_RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class ConnectionGate:
    """The protocol factory the socket serves: it admits, times and evicts the connections.

    aiohttp has no limit on connections, and before 3.14 no timeout for a connection that never
    completes a request (its keep-alive timer starts after a first response), so a client could
    hold descriptors for ever: 10,000 idle connections used up the default 1,024 and made the
    service unreachable and its rebuilds fail with EMFILE. This gate wraps each connection's
    aiohttp protocol in a :class:`_GatedProtocol`, which reports to it when the connection opens,
    receives bytes and closes; a wrapper around aiohttp's request handler reports when a request's
    headers are complete (the handler starts) and when its handler is done.

    * **Cap.** At most ``cap`` connections are open. A new one beyond it closes the connection
      quiet longest (the one whose last bytes arrived longest ago) among those the service is not
      working on: idle ones (after a response, or never a byte), ones still sending their headers,
      and ones still sending their body (a request whose body has not fully arrived is not being
      handled yet, however long its handler has been waiting for it: 300 clients trickling a body
      a byte a second once held every connection, and ``daydreamctl status`` got 503s). Only a
      connection with a complete request in hand (head, and body if any), being handled or about
      to be, is never closed to make room: a client that sent its whole request at once (as every
      real one does) is so never closed, however fast others connect. If no connection can be
      closed, the new one is answered 503 and closed at once. Socket clients so never hold more
      than ``cap`` descriptors, plus those in transit (:data:`IN_TRANSIT`).
    * **Share of one user.** At most ``user_cap`` (``max_user_share`` of the cap, at least one) are
      open from one peer uid (``SO_PEERCRED``). A new connection from a user who has that many
      closes that user's own connection quiet longest, or is answered 503 if the service is working
      on every one of them. One user, whatever they do, so leaves the others at least
      ``cap - user_cap`` connections. The quota applies to every uid, root and the service's own
      included: ``daydreamctl`` needs one connection per command, not hundreds.
    * **Header timeout.** A connection must complete its request line and headers within
      ``header_timeout_s`` of opening (a slowloris client sending a byte now and then is closed
      then, however it trickles).
    * **Keep-alive timeout.** After a response, a connection may stay idle ``keepalive_timeout_s``;
      once the next request's first bytes arrive, its headers must be complete within
      ``header_timeout_s``. This also bounds how long a response may take to be read.
    * A connection handling a request (an event stream, a long approval) has no timer here: the
      body has its own timeout (``_body`` in :mod:`daydreamd.daemon.server`) and event streams
      their own cap.

    Closing is ``transport.abort()``, not ``close()``: ``close()`` waits for unsent data to drain,
    which a client that does not read never lets happen. Each kind of close is logged at most once
    per ``log_interval_s``, with how many were not logged.
    """

    def __init__(self, server: web.Server, limits: ServerLimits, *, cap: int) -> None:
        self._server = server
        self._limits = limits
        self.cap = cap
        self.user_cap = min(cap, max(1, int(cap * limits.max_user_share)))
        """Connections one peer uid may have open at once."""
        self.peer_uid: Callable[[asyncio.BaseTransport], int | None] = peer_uid
        """How a connection's user is found (tests replace it to play several users)."""
        self._open: set[_GatedProtocol] = set()
        self._users: Counter[int] = Counter()
        """Open connections by peer uid."""
        self._quiet: OrderedDict[_GatedProtocol, None] = OrderedDict()
        """Open connections that may be closed to make room: not with a complete request in hand
        (:meth:`_GatedProtocol.evictable`), the one quiet longest first."""
        self._quiet_by_user: dict[int | None, OrderedDict[_GatedProtocol, None]] = {}
        """The same, by peer uid (None: unknown), in the same order."""
        self._by_handler: dict[object, _GatedProtocol] = {}
        self.closed: Counter[str] = Counter()
        """Connections closed by the gate, by reason: ``evicted``, ``refused``, ``refused_user``,
        ``header_timeout``, ``idle_timeout``."""
        self._throttle = LogThrottle(limits.log_interval_s)
        self._loop = asyncio.get_running_loop()
        self.busy_answer = _busy_answer(
            f"daydreamd is handling a request on each of the {cap} connections its socket allows; "
            "try again shortly"
        )
        """What a connection the gate has no room for is sent before it is closed."""
        handler: _RequestHandler = server.request_handler
        server.request_handler = self._tracked(handler)

    def __call__(self) -> asyncio.Protocol:
        return _GatedProtocol(self)

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def evictable(self) -> int:
        """Open connections that may be closed to make room (those without a complete request in hand)."""
        return len(self._quiet)

    def open_from(self, uid: int) -> int:
        """Connections open now from peer uid ``uid``."""
        return self._users[uid]

    def close(self) -> None:
        """Cancel every timer (at stop; the connections themselves are closed by aiohttp)."""
        for guard in list(self._open):
            self._forget(guard)

    # -- what the protocols report -------------------------------------------------------------

    def admit(self, guard: _GatedProtocol) -> bytes | None:
        """A connection opened: make room for it (None), or the 503 to answer before closing it."""
        uid = guard.uid
        if uid is not None and self.user_cap < self.cap and self._users[uid] >= self.user_cap:
            victim = self._victim(self._quiet_by_user.get(uid))
            if victim is None:
                self._note("refused_user", uid=uid)
                return self._user_answer(uid)
            self._close(victim, "evicted")
        elif len(self._open) >= self.cap:
            victim = self._victim(self._quiet)
            if victim is None:
                self._note("refused")
                return self.busy_answer
            self._close(victim, "evicted")
        self._open.add(guard)
        if uid is not None:
            self._users[uid] += 1
        self._sync(guard, to_back=True)
        self._arm(guard, self._limits.header_timeout_s, "header_timeout")
        return None

    def handler_for(self, guard: _GatedProtocol) -> asyncio.Protocol:
        """aiohttp's protocol for an admitted connection (its requests name it)."""
        handler = self._server()
        self._by_handler[handler] = guard
        return handler

    def received(self, guard: _GatedProtocol, data: bytes) -> None:
        """Bytes arrived (before aiohttp reads them): the connection is active.

        After a response, the next headers' clock starts. Once the bytes include the blank line
        that ends a request head, the connection is no longer one to close for room, unless the
        head announces a body still to come (then it is not until the body is in: :meth:`parsed`);
        the header timer still runs until the request is handled.
        """
        if guard not in self._open:
            return
        if guard.payload is not None:  # a body arriving: progress, not yet a request in hand
            self._sync(guard, to_back=True)
            return
        if guard.busy or guard.head_in:  # more after a complete head
            return
        self._sync(guard, to_back=True)
        if guard.awaiting_request:
            guard.awaiting_request = False
            self._arm(guard, self._limits.header_timeout_s, "header_timeout")
        seen = guard.tail + data
        if b"\r\n\r\n" in seen and (guard.tail or request_complete(data)):
            # A request in hand (its handler starts on the next turn of the loop). One that came in
            # this one read with its body still to come is not: it stays closable for room.
            guard.head_in = True
            self._sync(guard)
        guard.tail = seen[-3:]

    def parsed(self, guard: _GatedProtocol) -> None:
        """aiohttp has read the bytes just received: the body being waited for may be complete."""
        if guard.payload is not None and guard.payload.is_eof() and guard in self._open:
            guard.payload = None
            self._sync(guard)

    def lost(self, guard: _GatedProtocol) -> None:
        """The connection is closed (by either side)."""
        self._forget(guard)

    # -- internals -------------------------------------------------------------------------------

    def _tracked(self, handler: _RequestHandler) -> _RequestHandler:
        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            guard = self._by_handler.get(request.protocol)
            if guard is not None and guard in self._open:  # headers complete: no timer while handled
                guard.busy, guard.head_in = True, False
                guard.payload = None if request.content.is_eof() else request.content
                guard.body_since = time.monotonic()
                self._sync(guard)
                self._disarm(guard)
            try:
                return await handler(request)
            finally:
                if guard is not None and guard in self._open:
                    guard.busy, guard.tail, guard.awaiting_request = False, b"", True
                    if guard.payload is not None and guard.payload.is_eof():
                        guard.payload = None  # else aiohttp reads and drops the rest, if it comes
                    self._sync(guard, to_back=True)
                    self._arm(guard, self._limits.keepalive_timeout_s, "idle_timeout")

        return tracked

    def _sync(self, guard: _GatedProtocol, *, to_back: bool = False) -> None:
        """Put ``guard`` among the connections to close for room, or take it out, as it now is.

        ``to_back``: it is active now (it goes behind every other one; else it keeps its place).
        """
        if not guard.evictable():
            self._unqueue(guard)
            return
        mine = self._quiet_by_user.get(guard.uid)
        if mine is None:
            mine = self._quiet_by_user[guard.uid] = OrderedDict()
        for queue in (self._quiet, mine):
            queue[guard] = None
            if to_back:
                queue.move_to_end(guard)

    def _unqueue(self, guard: _GatedProtocol) -> None:
        self._quiet.pop(guard, None)
        mine = self._quiet_by_user.get(guard.uid)
        if mine is not None:
            mine.pop(guard, None)
            if not mine:
                del self._quiet_by_user[guard.uid]

    def _victim(self, queue: OrderedDict[_GatedProtocol, None] | None) -> _GatedProtocol | None:
        """The connection in ``queue`` to close for room: the one quiet longest that may be.

        Under a flood of connections, asyncio accepts a batch of them before it reads from any, so a
        client's request can sit unread in the kernel while hundreds of newer connections arrive:
        a connection with bytes waiting counts as active (it is moved to the back), unless nothing
        of its request was read yet and what waits is not a complete request (a client of a flood
        that reconnects at once and sends a head for a body it trickles, say; were those protected,
        a batch of them could take every slot before any was read, and the 503 would go to the
        newcomer). At most :data:`VICTIM_SCAN` are looked at; if none may be closed, there is no victim.
        """
        if queue is None:
            return None
        now = time.monotonic()
        for candidate in islice(queue, VICTIM_SCAN):  # first, one that had time to send its request
            if now - candidate.admitted_at >= SETTLING_S and _closable(candidate):
                return candidate
        for _ in range(min(VICTIM_SCAN, len(queue))):
            candidate = next(iter(queue))
            if _closable(candidate):
                return candidate
            self._sync(candidate, to_back=True)
        return None

    def _arm(self, guard: _GatedProtocol, delay_s: float, reason: str) -> None:
        self._disarm(guard)
        guard.timer = self._loop.call_later(delay_s, self._expire, guard, reason)

    @staticmethod
    def _disarm(guard: _GatedProtocol) -> None:
        if guard.timer is not None:
            guard.timer.cancel()
            guard.timer = None

    def _expire(self, guard: _GatedProtocol, reason: str) -> None:
        guard.timer = None
        if guard in self._open and not guard.busy:
            self._close(guard, reason)

    def _close(self, guard: _GatedProtocol, reason: str) -> None:
        self._forget(guard)
        guard.transport.abort()
        self._note(reason, uid=guard.uid)

    def _forget(self, guard: _GatedProtocol) -> None:
        self._disarm(guard)
        if guard in self._open:
            self._open.discard(guard)
            if guard.uid is not None:
                self._users[guard.uid] -= 1
                if not self._users[guard.uid]:
                    del self._users[guard.uid]
        self._unqueue(guard)
        if guard.handler is not None:
            self._by_handler.pop(guard.handler, None)

    def _user_answer(self, uid: int) -> bytes:
        return _busy_answer(
            f"uid {uid} has {self._users[uid]} connections open on daydreamd's socket, the most one user "
            f"may (of {self.cap}), and a request in hand on each; close some and try again"
        )

    def _note(self, reason: str, **fields: object) -> None:
        self.closed[reason] += 1
        if reason == "idle_timeout":  # routine: a client that kept its connection and went away
            return
        not_logged = self._throttle.admit(reason)
        if not_logged is not None:
            log.warning(
                "control_connection_closed",
                reason=reason,
                open=len(self._open),
                max_connections=self.cap,
                **fields,
                not_logged=not_logged,
                total=self.closed[reason],
            )


class _GatedProtocol(asyncio.Protocol):
    """One connection: aiohttp's protocol for it, with every event reported to the gate first."""

    __slots__ = (
        "admitted_at",
        "awaiting_request",
        "body_since",
        "busy",
        "gate",
        "handler",
        "head_in",
        "payload",
        "tail",
        "timer",
        "transport",
        "uid",
    )

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.handler: asyncio.Protocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.uid: int | None = None
        """The peer's user id (None where the platform does not say)."""
        self.busy = False
        """A request is being handled."""
        self.head_in = False
        """A complete request head has arrived and its handler has not started yet."""
        self.payload: StreamReader | None = None
        """The body of the request being handled (or just answered) while it has not fully arrived."""
        self.body_since = 0.0
        """When its handler started with the body not all there (see :func:`_closable`)."""
        self.awaiting_request = False
        """A response was sent and no byte of the next request has arrived."""
        self.admitted_at = time.monotonic()
        """When it was accepted (see :data:`SETTLING_S`)."""
        self.tail = b""
        """The last bytes received (a request head's blank line may come split)."""

    def evictable(self) -> bool:
        """Whether the gate may close this connection to make room: no complete request in hand."""
        return self.payload is not None or not (self.busy or self.head_in)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.uid = self.gate.peer_uid(transport)
        refusal = self.gate.admit(self)
        if refusal is not None:
            self.transport.write(refusal)  # a fresh socket's buffer takes it at once
            self.transport.close()
            return
        self.handler = self.gate.handler_for(self)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.gate.received(self, data)
            self.handler.data_received(data)
            self.gate.parsed(self)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.lost(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


_PEERCRED = struct.Struct("3i")
"""``struct ucred``: pid, uid, gid."""


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The user id of the process at the other end of a Unix socket connection (``SO_PEERCRED``).

    None where it cannot be known (not Linux, not a Unix socket): the connection then has no
    per-user quota, only the cap.
    """
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    except (OSError, struct.error):
        return None
    return int(uid)


def _closable(guard: _GatedProtocol) -> bool:
    """Whether an evictable connection may be closed now: nothing waits to be read, or nothing of its
    request has been read and what waits is not a whole request, or what waits is more of a body
    that has been arriving for :data:`SETTLING_S` already (every API body is small and comes with
    its head: one still trickling in is a slow client's, however busy the loop is reading it)."""
    waiting = _bytes_waiting(guard.transport)
    if not waiting:
        return True
    if guard.payload is not None:  # the rest of a body: more of it arriving
        return time.monotonic() - guard.body_since >= SETTLING_S
    if guard.tail:  # the rest of a request head
        return False
    return not request_complete(_peek(guard.transport, min(waiting, PEEK_BYTES)))


def _bytes_waiting(transport: asyncio.Transport) -> int:
    """How many bytes the kernel holds from this connection that the server has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(waiting, sys.byteorder)


def _peek(transport: asyncio.Transport, size: int) -> bytes:
    """Up to ``size`` of the bytes waiting on the connection, left there for aiohttp to read."""
    transport_socket = transport.get_extra_info("socket")
    if transport_socket is None:
        return b""
    sock = socket.socket(fileno=transport_socket.fileno())  # asyncio's wrapper has no recv()
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return b""
    finally:
        sock.detach()  # the descriptor stays asyncio's


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,12})[ \t]*(?:\r\n|$)")


def request_complete(data: bytes) -> bool:
    """Whether ``data``, the first bytes of a request, hold all of it (its head, and its body).

    A rough reading (aiohttp's parser decides what the request is): a chunked body is complete once
    its last chunk is there, and ``data`` of :data:`PEEK_BYTES` or more is taken for complete.
    """
    if len(data) >= PEEK_BYTES:
        return True
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].lower()
    if b"\r\ntransfer-encoding:" in head:
        return data.endswith(b"0\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    return len(data) - end - 4 >= (int(length.group(1)) if length else 0)


def _busy_answer(message: str) -> bytes:
    """A complete 503 answer (``unavailable``, ``message``) sent to a connection closed at once."""
    body = json.dumps({"error": {"type": "unavailable", "message": message}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GatedSite(web.SockSite):
    """An :class:`aiohttp.web.SockSite` that serves the gate's protocols instead of aiohttp's own."""

    __slots__ = ("_gate",)

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, gate: ConnectionGate) -> None:
        super().__init__(runner, sock, backlog=ACCEPT_BATCH)
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site (SockSite.start would serve aiohttp's factory)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._gate, sock=self._sock, backlog=self._backlog)


# -- descriptors and the log ---------------------------------------------------------------------


def open_files_limit() -> tuple[int, int]:
    """The process's (soft, hard) RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most ``wanted``); the (soft, hard) in force.

    Common practice for servers: the soft limit is 1,024 by default (for programs still using
    select()), the hard one much higher, and raising the first up to the second needs no privilege.
    asyncio uses epoll, SQLite and the HTTP client need no select(). Where it fails (a seccomp
    filter, as in the systemd unit, which sets ``LimitNOFILE=`` itself) the limit stays and the
    connection cap shrinks to fit (:func:`connection_cap`).
    """
    soft, hard = open_files_limit()
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open_files_limit_not_raised", soft=soft, hard=shown_limit(hard), error=str(exc))
        else:
            soft = target
    return soft, hard


def connection_cap(limits: ServerLimits, soft_limit: int) -> int:
    """``max_connections``, lowered so socket clients leave ``reserved_fds`` to the rest of the service."""
    if soft_limit == resource.RLIM_INFINITY:
        return limits.max_connections
    room = soft_limit - limits.reserved_fds - IN_TRANSIT
    return min(limits.max_connections, max(MIN_CONNECTIONS, room))


def shown_limit(value: int) -> int | str:
    """A resource limit for the log: ``"unlimited"`` for RLIM_INFINITY."""
    return "unlimited" if value == resource.RLIM_INFINITY else value


class LogThrottle:
    """At most ``burst`` log lines per kind of event every ``interval_s`` seconds; the rest are counted.

    :meth:`admit` says whether to log now and how many of that kind were left out since the last
    line, so the next line carries the count: a flood costs ``burst`` lines per kind per interval.
    """

    MAX_KINDS = 512
    """Kinds remembered at once (a new kind beyond this forgets those quiet for an interval)."""

    def __init__(
        self, interval_s: float, clock: Callable[[], float] = time.monotonic, *, burst: int = 1
    ) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        """When the kind's current interval began (its first line logged)."""
        self._logged: Counter[Hashable] = Counter()
        self._skipped: Counter[Hashable] = Counter()

    def admit(self, kind: Hashable) -> int | None:
        """None: do not log this one (it is counted); else log it, saying that many were not logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            if self._logged[kind] >= self.burst:
                self._skipped[kind] += 1
                return None
            self._logged[kind] += 1
            return self._skipped.pop(kind, 0)
        if last is None and len(self._last) >= self.MAX_KINDS:
            for old in [k for k, at in self._last.items() if now - at >= self.interval_s]:
                del self._last[old]
                self._logged.pop(old, None)
                self._skipped.pop(old, None)
        self._last[kind] = now
        self._logged[kind] = 1
        return self._skipped.pop(kind, 0)


def throttle_loop_errors(loop: asyncio.AbstractEventLoop, interval_s: float) -> Callable[[], None]:
    """Log each kind of event-loop error at most once per ``interval_s``; returns the undo.

    asyncio reports errors it cannot raise anywhere through the loop's exception handler, among
    them ``socket.accept() out of system resource`` (EMFILE), which its accept loop reports once per
    connection waiting and again after each one-second pause: 141,678 lines in 80 s once, with
    tracebacks. A kind is the message, the exception's type and its errno; a line logged after
    others were left out says how many.
    """
    previous = loop.get_exception_handler()
    throttle = LogThrottle(interval_s)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        not_logged = throttle.admit((message, type(exc).__name__, getattr(exc, "errno", None)))
        if not_logged is None:
            return
        if not_logged:
            context = {**context, "message": f"{message} ({not_logged} more like it not logged)"}
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)

    def undo() -> None:
        if loop.get_exception_handler() is handler:
            loop.set_exception_handler(previous)

    return undo
