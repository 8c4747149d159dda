"""The control socket's connections: how many may be open, how long each may take (async shell).

Why this module exists: aiohttp has no limit on connections, and no timeout for a connection that
never completes a request (before 3.14 its keep-alive timer starts only after a first response), so
one client could hold descriptors for ever: 10,000 idle connections once used up the default 1,024
open files, made the service unreachable and failed its rebuilds with EMFILE. The API itself (its
handlers, error answers and the socket file) is :mod:`daydreamd.daemon.server`; this is what stands
between it and the socket's clients.

* **The cap** (:class:`ConnectionGate`, the protocol factory the socket serves): at most
  ``max_connections`` connections are open; a new one beyond closes the one quiet longest that has
  not sent a complete request, or is answered 503 when every one is busy. Request heads must arrive
  within ``header_timeout_s``, and an idle keep-alive connection is closed after
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
import resource
import socket
import sys
import termios
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, cast

import structlog
from aiohttp import web

from daydreamd.core.errors import DaydreamError

log = structlog.get_logger("daydreamd")

MAX_CONNECTIONS = 256
"""Connections open on the control socket at once (``daydreamctl`` uses one per command)."""
HEADER_TIMEOUT_S = 5.0
"""A request's line and headers must be complete this long after the connection opens (or after
the first bytes of the next request on a kept-alive connection)."""
KEEPALIVE_TIMEOUT_S = 5.0
"""An idle keep-alive connection is closed after this long."""
BODY_TIMEOUT_S = 10.0
"""A request body must have arrived this long after its headers (else 408 and the connection closes)."""
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
VICTIM_SCAN = 32
"""Connections looked at, oldest first, for one without unread bytes to close for room."""
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
      quiet longest among those that are neither handling a request nor holding a complete
      request head not yet handled: idle ones (after a response, or never a byte) and ones still
      sending their headers. A client that sent its whole request at once (as every real one does)
      is so never closed to make room, however fast others connect. If no connection can be
      closed, the new one is answered 503 and closed at once. Socket clients so never hold more
      than ``cap`` descriptors, plus those in transit (:data:`IN_TRANSIT`).
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
        self._open: set[_GatedProtocol] = set()
        self._quiet: OrderedDict[_GatedProtocol, None] = OrderedDict()
        """Open connections that may be closed to make room: not handling a request and without a
        complete request head, the one quiet longest first."""
        self._by_handler: dict[object, _GatedProtocol] = {}
        self.closed: Counter[str] = Counter()
        """Connections closed by the gate, by reason: ``evicted``, ``refused``, ``header_timeout``,
        ``idle_timeout``."""
        self._throttle = LogThrottle(limits.log_interval_s)
        self._loop = asyncio.get_running_loop()
        self.busy_answer = _busy_answer(cap)
        """What a connection the gate has no room for is sent before it is closed."""
        handler: _RequestHandler = server.request_handler
        server.request_handler = self._tracked(handler)

    def __call__(self) -> asyncio.Protocol:
        return _GatedProtocol(self)

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    def close(self) -> None:
        """Cancel every timer (at stop; the connections themselves are closed by aiohttp)."""
        for guard in list(self._open):
            self._forget(guard)

    # -- what the protocols report -------------------------------------------------------------

    def admit(self, guard: _GatedProtocol) -> bool:
        """A connection opened: make room for it (False: no room, answer 503 and close it)."""
        if len(self._open) >= self.cap:
            victim = self._victim()
            if victim is None:
                self._note("refused")
                return False
            self._close(victim, "evicted")
        self._open.add(guard)
        self._quiet[guard] = None
        self._arm(guard, self._limits.header_timeout_s, "header_timeout")
        return True

    def handler_for(self, guard: _GatedProtocol) -> asyncio.Protocol:
        """aiohttp's protocol for an admitted connection (its requests name it)."""
        handler = self._server()
        self._by_handler[handler] = guard
        return handler

    def received(self, guard: _GatedProtocol, data: bytes) -> None:
        """Bytes arrived: the connection is active; after a response, the next headers' clock starts.

        Once they include the blank line that ends a request head, the connection is no longer one
        to close for room (the header timer still runs until the request is handled).
        """
        if guard.busy or guard not in self._quiet:  # a body, or more after a complete head
            return
        self._quiet.move_to_end(guard)
        if guard.awaiting_request:
            guard.awaiting_request = False
            self._arm(guard, self._limits.header_timeout_s, "header_timeout")
        seen = guard.tail + data
        if b"\r\n\r\n" in seen:
            del self._quiet[guard]
        guard.tail = seen[-3:]

    def lost(self, guard: _GatedProtocol) -> None:
        """The connection is closed (by either side)."""
        self._forget(guard)

    # -- internals -------------------------------------------------------------------------------

    def _tracked(self, handler: _RequestHandler) -> _RequestHandler:
        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            guard = self._by_handler.get(request.protocol)
            if guard is not None and guard in self._open:  # headers complete: no timer while handled
                guard.busy = True
                self._quiet.pop(guard, None)
                self._disarm(guard)
            try:
                return await handler(request)
            finally:
                if guard is not None and guard in self._open:
                    guard.busy, guard.tail, guard.awaiting_request = False, b"", True
                    self._quiet[guard] = None
                    self._arm(guard, self._limits.keepalive_timeout_s, "idle_timeout")

        return tracked

    def _victim(self) -> _GatedProtocol | None:
        """The connection to close for room: the one quiet longest with nothing waiting to be read.

        Under a flood of connections, asyncio accepts a batch of them before it reads from any, so a
        client's request can sit unread in the kernel while hundreds of newer connections arrive:
        a connection with bytes waiting counts as active (it is moved to the back). At most
        :data:`VICTIM_SCAN` are looked at; if each has bytes waiting, there is no victim.
        """
        for _ in range(min(VICTIM_SCAN, len(self._quiet))):
            candidate = next(iter(self._quiet))
            if not _bytes_waiting(candidate.transport):
                return candidate
            self._quiet.move_to_end(candidate)
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
        self._note(reason)

    def _forget(self, guard: _GatedProtocol) -> None:
        self._disarm(guard)
        self._open.discard(guard)
        self._quiet.pop(guard, None)
        if guard.handler is not None:
            self._by_handler.pop(guard.handler, None)

    def _note(self, reason: str) -> None:
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
                not_logged=not_logged,
                total=self.closed[reason],
            )


class _GatedProtocol(asyncio.Protocol):
    """One connection: aiohttp's protocol for it, with every event reported to the gate first."""

    __slots__ = ("awaiting_request", "busy", "gate", "handler", "tail", "timer", "transport")

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.handler: asyncio.Protocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        """A request is being handled."""
        self.awaiting_request = False
        """A response was sent and no byte of the next request has arrived."""
        self.tail = b""
        """The last bytes received (a request head's blank line may come split)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.gate.admit(self):
            self.transport.write(self.gate.busy_answer)  # a fresh socket's buffer takes it at once
            self.transport.close()
            return
        self.handler = self.gate.handler_for(self)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.gate.received(self, data)
            self.handler.data_received(data)

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


def _bytes_waiting(transport: asyncio.Transport) -> bool:
    """Whether the kernel holds bytes from this connection that the server has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return int.from_bytes(waiting, sys.byteorder) > 0


def _busy_answer(cap: int) -> bytes:
    """The 503 a connection gets when every one of the ``cap`` open connections is handling a request."""
    body = json.dumps(
        {
            "error": {
                "type": "unavailable",
                "message": f"daydreamd is handling a request on each of the {cap} connections its socket "
                "allows; try again shortly",
            }
        }
    ).encode()
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
    """At most one log line per kind of event every ``interval_s`` seconds; the rest are counted.

    :meth:`admit` says whether to log now and how many of that kind were left out since the last
    line, so the next line carries the count: a flood costs one line per kind per interval.
    """

    MAX_KINDS = 512
    """Kinds remembered at once (a new kind beyond this forgets those quiet for an interval)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._skipped: Counter[Hashable] = Counter()

    def admit(self, kind: Hashable) -> int | None:
        """None: do not log this one (it is counted); else log it, saying that many were not logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._skipped[kind] += 1
            return None
        if last is None and len(self._last) >= self.MAX_KINDS:
            for old in [k for k, at in self._last.items() if now - at >= self.interval_s]:
                del self._last[old]
                self._skipped.pop(old, None)
        self._last[kind] = now
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
