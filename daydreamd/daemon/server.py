"""The control server: HTTP/1.1 + JSON on a Unix socket, versioned under ``/v1/`` (async shell).

Any HTTP client is a client (``curl --unix-socket run/daydreamd.sock http://daydreamd/v1/status``),
and ``daydreamctl`` talks to it with the standard library. Handlers only parse, call the
:class:`~daydreamd.core.control.Control` and serialize; every failure, including unknown paths and
wrong methods, is answered as ``{"error": {"type": ..., "message": ...}}`` by one middleware.

The socket is the only listener (no TCP: approvals spend money, so only local users in the
socket's group may send them). It is born mode 0660, and a socket file left behind by a crash
is removed only once a connection attempt proves nothing is listening on it. The path is never
followed through a symbolic link: a link there is refused, and only a socket file at the path
itself is ever removed.

No client can take the socket away from the others or the service's file descriptors away from
its other parts (:class:`~daydreamd.daemon.connections.ServerLimits`). The socket's connections
(their cap, the header and keep-alive timeouts, the open-files budget, the throttled log of
event-loop errors) are :mod:`daydreamd.daemon.connections`' concern; here, a body must arrive
within ``body_timeout_s`` and be at most ``max_body_bytes``, and event streams are capped. A body
is strict JSON: a key given twice, or nesting deeper than :data:`MAX_JSON_DEPTH`, is a 400 naming
it. Every number a request carries is range-checked (a 400 naming it). An unexpected exception is
a 500, reported to ``on_error`` at most :data:`REPORTS_PER_INTERVAL` times per ``log_interval_s``
per exception type, so that a request that trips a bug cannot flood the log with tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from daydreamd.core.control import (
    STAGE_NAMES,
    STATE_NAMES,
    ApprovalRequest,
    Control,
    ControlError,
    LimitsRequest,
    PauseRequest,
    ReparseRequest,
    RetryRequest,
    bad_request,
    cohort_name,
    shown,
)
from daydreamd.core.errors import DaydreamError
from daydreamd.daemon.connections import (
    ConnectionGate,
    GatedSite,
    LogThrottle,
    ServerLimits,
    connection_cap,
    open_files_limit,
    raise_open_files_limit,
    shown_limit,
    throttle_loop_errors,
)

log = structlog.get_logger("daydreamd")

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
SOCKET_MODE = 0o660
MAX_SOCKET_PATH = 107
"""Bytes in an AF_UNIX path on Linux (108 with the terminating NUL)."""

MAX_LINE_BYTES = 8190
"""Longest request line and header field (aiohttp's own default, made explicit; 400 beyond)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a request body (400 beyond): every API body is a flat
object, and 200 KB of ``[[[[`` was a RecursionError, a 500 and a traceback in the log per request."""
REPORTS_PER_INTERVAL = 3
"""Unexpected exceptions of one type reported to ``on_error`` (the service logs each with its
traceback) per ``log_interval_s``; the next report after that is preceded by a count of the rest."""


CONTROL: web.AppKey[Control] = web.AppKey("control")
LIMITS: web.AppKey[ServerLimits] = web.AppKey("limits")
ERROR_REPORTS: web.AppKey[LogThrottle] = web.AppKey("error_reports")
"""Throttles the reports of unexpected exceptions to ``on_error``, by exception type."""
_QUERY_PARAMETERS = ("limit", "stage", "state", "cohort")
_ERROR_TYPES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _Streams:
    """Event streams open now (against ``max_event_streams``)."""

    open: int = 0


_STREAMS: web.AppKey[_Streams] = web.AppKey("streams")


def make_app(
    control: Control,
    *,
    on_error: Callable[[BaseException], None] | None = None,
    limits: ServerLimits | None = None,
) -> web.Application:
    """The ``/v1/`` application over ``control``.

    Args:
        control: what the handlers call.
        on_error: called with an unexpected exception before the 500 answer (the service logs it),
            at most :data:`REPORTS_PER_INTERVAL` times per exception type every ``log_interval_s``
            (``control_request_failed_not_logged`` then says how many were not).
        limits: what clients are allowed (:func:`start_unix_site` applies them to the socket);
            None: the defaults with the overrides in
            :data:`~daydreamd.daemon.connections.LIMITS_ENV`, if set.
    """
    limits = limits if limits is not None else ServerLimits.from_env(os.environ)
    app = web.Application(
        middlewares=[_json_errors(on_error)],
        client_max_size=limits.max_body_bytes,
        # aiohttp's own limits, for what it provides. The header timeout and the connection cap,
        # which it does not provide (before 3.14 its keep-alive timer only starts after a first
        # response; from 3.14 it also runs from the connection's start), are the ConnectionGate's,
        # which also applies keepalive_timeout_s: aiohttp's timer is a backstop that never fires first.
        handler_args={
            "keepalive_timeout": max(limits.keepalive_timeout_s, limits.header_timeout_s),
            "max_line_size": MAX_LINE_BYTES,
            "max_field_size": MAX_LINE_BYTES,
        },
    )
    app[CONTROL] = control
    app[LIMITS] = limits
    app[ERROR_REPORTS] = LogThrottle(limits.log_interval_s, burst=REPORTS_PER_INTERVAL)
    app[_STREAMS] = _Streams()
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/cohorts", _cohorts)
    app.router.add_get("/v1/generations", _generations)
    app.router.add_get("/v1/generations/{gen_id}", _generation)
    app.router.add_post("/v1/approvals", _approvals)
    app.router.add_post("/v1/revocations", _revocations)
    app.router.add_post("/v1/plans", _plans)
    app.router.add_post("/v1/retries", _retries)
    app.router.add_post("/v1/reparses", _reparses)
    app.router.add_post("/v1/pause", _pause)
    app.router.add_post("/v1/resume", _resume)
    app.router.add_get("/v1/limits", _get_limits)
    app.router.add_post("/v1/limits", _set_limits)
    app.router.add_get("/v1/events", _events)
    app.router.add_get("/metrics", _metrics)
    return app


# -- handlers ----------------------------------------------------------------------------------


async def _status(request: web.Request) -> web.Response:
    query = request.rel_url.query
    _reject_unknown_parameters(query, ("cohort",))
    status = await request.app[CONTROL].status(cohort_name(query.get("cohort")))
    return _json(status.to_json())


async def _cohorts(request: web.Request) -> web.Response:
    _reject_unknown_parameters(request.rel_url.query, allowed=())
    return _json(await request.app[CONTROL].cohorts())


async def _generations(request: web.Request) -> web.Response:
    query = request.rel_url.query
    _reject_unknown_parameters(query, _QUERY_PARAMETERS)
    rows = await request.app[CONTROL].generations(
        stage=_choice(query, "stage", STAGE_NAMES),
        state=_choice(query, "state", STATE_NAMES),
        limit=_limit(query),
        cohort=cohort_name(query.get("cohort")),
    )
    return _json({"generations": rows})


async def _generation(request: web.Request) -> web.Response:
    gen_id = request.match_info["gen_id"]
    row = await request.app[CONTROL].generation(gen_id)
    if row is None:
        raise ControlError(404, "not_found", f"no generation {gen_id}")
    return _json(row)


async def _approvals(request: web.Request) -> web.Response:
    approval = ApprovalRequest.from_json(await _body(request))
    return _json(await request.app[CONTROL].approve(approval))


async def _revocations(request: web.Request) -> web.Response:
    revocation = ApprovalRequest.from_json(await _body(request))
    if revocation.limit is not None:
        raise bad_request("limit: not accepted by revocations (every matching queued generation is revoked)")
    return _json(await request.app[CONTROL].revoke(revocation))


async def _plans(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].plan(ApprovalRequest.from_json(await _body(request))))


async def _retries(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].retry(RetryRequest.from_json(await _body(request))))


async def _reparses(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].reparse(ReparseRequest.from_json(await _body(request))))


async def _pause(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].pause(PauseRequest.from_json(await _body(request))))


async def _resume(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].resume(PauseRequest.from_json(await _body(request))))


async def _get_limits(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].limits(None))


async def _set_limits(request: web.Request) -> web.Response:
    return _json(await request.app[CONTROL].limits(LimitsRequest.from_json(await _body(request))))


async def _events(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON events until the client goes away (a heartbeat keeps idle links alive).

    At most ``max_event_streams`` at once (503 beyond): a stream is a connection that is never idle,
    so without this cap streams alone could fill every connection the socket allows.
    """
    streams, most = request.app[_STREAMS], request.app[LIMITS].max_event_streams
    if streams.open >= most:
        raise ControlError(
            503,
            "unavailable",
            f"{streams.open} event streams are open, the most daydreamd serves at once; "
            "close one (daydreamctl watch) and try again",
        )
    streams.open += 1
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        async with request.app[CONTROL].events() as events:
            async for event in events:
                await response.write(json.dumps(event, ensure_ascii=False, default=str).encode() + b"\n")
        return response
    finally:
        streams.open -= 1


async def _metrics(request: web.Request) -> web.Response:
    text = await request.app[CONTROL].metrics()
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"})


# -- request parsing ---------------------------------------------------------------------------


def _reject_unknown_parameters(query: Mapping[str, str], allowed: tuple[str, ...] = ()) -> None:
    """A 400 for a parameter not in ``allowed`` (a misspelt filter would widen what is answered)."""
    for name in query:
        if name not in allowed:
            expected = f"one of {', '.join(allowed)}" if allowed else "no parameters"
            raise bad_request(f"{name}: unknown parameter; expected {expected}")


def _choice(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    """The parameter's value when it is one of ``choices``; None when absent or empty."""
    value = query.get(name, "")
    if value and value not in choices:
        raise bad_request(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value or None


_DIGITS = re.compile(r"[0-9]{1,12}")
"""ASCII digits only, and few enough for int() (``str.isdigit`` accepts "²" and "١", which int()
refuses or reads, and int() refuses more than 4,300 digits: both were a 500)."""


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit", "")
    if not text:
        return DEFAULT_LIMIT
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise bad_request(f"limit: must be an integer from 1 to {MAX_LIMIT}, got {shown(text)}")
    return int(text)


async def _body(request: web.Request) -> object:
    """The decoded JSON body, which must arrive within ``body_timeout_s`` of the headers (else 408)."""
    timeout_s = request.app[LIMITS].body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            text = await request.text()
    except TimeoutError as exc:
        raise ControlError(
            408, "timeout", f"the request body did not arrive within {timeout_s:g} s of its headers"
        ) from exc
    except LookupError as exc:  # charset=nope in the Content-Type
        raise bad_request(f"charset {shown(request.charset)}: unknown; send the body in UTF-8") from exc
    except ValueError as exc:  # bytes that are not UTF-8
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    except (ConnectionError, RuntimeError) as exc:  # aiohttp's "Connection closed." is a RuntimeError
        if request.transport is not None:
            raise
        # The client went away, or the gate closed its connection for room: no one to answer.
        raise ControlError(400, "bad_request", "the connection closed before the body arrived") from exc
    return _decode(text)


class _DuplicateKey(ValueError):
    """A JSON object with ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refusing a key given twice (``json`` would keep the last silently)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _decode(text: str) -> object:
    """A request body decoded as strict JSON.

    Raises:
        ControlError: 400 when the text is not JSON, names a key twice in one object (naming it:
            ``{"stage": "draft", "stage": "essay"}`` was an approval of essays), or nests arrays and
            objects more than :data:`MAX_JSON_DEPTH` levels deep (deeper than the interpreter's
            recursion limit, that was a 500).
    """
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        name = exc.key if exc.key.isprintable() and len(exc.key) <= 40 else shown(exc.key)
        raise bad_request(f"{name}: given more than once in the request body") from None
    except RecursionError:  # deeper than the interpreter's recursion limit
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError, an integer of 4,300+ digits
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep()
    return value


def _too_deep() -> ControlError:
    return bad_request(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")


def _deeper_than(value: object, most: int) -> bool:
    """Whether arrays and objects nest more than ``most`` levels in ``value`` (without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > most:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# -- responses ---------------------------------------------------------------------------------


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return web.json_response(text=text, status=status, headers=headers)


def _error(status: int, type_: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"error": {"type": type_, "message": message}}, status, headers)


def _json_errors(on_error: Callable[[BaseException], None] | None) -> Any:
    """Middleware: every error answer is JSON with a matching status, whatever raised it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ControlError as exc:
            response = _error(exc.status, exc.type, exc.message)
            if exc.status == 408 or request.transport is None:  # the rest of that body is not waited for
                response.force_close()
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(request, exc)
        except Exception as exc:  # the per-request boundary: answer 500, let the service log it
            if isinstance(exc, ConnectionError) and request.transport is None:
                # The client went away (or the gate closed it for room) while a response was written:
                # nobody to answer, nothing wrong with the service.
                response = _error(400, "bad_request", "the connection closed before the request was answered")
                response.force_close()
                return response
            if on_error is not None:
                _report(on_error, request.app[ERROR_REPORTS], exc)
            return _error(500, "internal", f"internal error ({type(exc).__name__}); see the daydreamd log")

    return middleware


def _report(on_error: Callable[[BaseException], None], reports: LogThrottle, exc: Exception) -> None:
    """Pass ``exc`` to ``on_error``, unless as many of its type as an interval allows already were."""
    kind = type(exc)
    not_logged = reports.admit(f"{kind.__module__}.{kind.__qualname__}")
    if not_logged is None:
        return
    if not_logged:
        log.error(
            "control_request_failed_not_logged",
            error_type=kind.__name__,
            not_logged=not_logged,
            log_interval_s=reports.interval_s,
        )
    on_error(exc)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body too large) as JSON."""
    allow = exc.headers.get("Allow")
    if exc.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif exc.status == 405 and allow:
        message = f"{request.method} is not allowed on {request.path}; use {allow}"
    else:
        message = exc.reason
    return _error(
        exc.status, _ERROR_TYPES.get(exc.status, "http_error"), message, {"Allow": allow} if allow else None
    )


# -- the socket --------------------------------------------------------------------------------


class SocketRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` that owns one Unix socket file, removed again by :func:`stop`."""

    __slots__ = ("gate", "restore_exception_handler", "socket_inode", "socket_path")

    def __init__(self, app: web.Application, socket_path: Path, socket_inode: int) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=5.0)
        self.socket_path = socket_path
        self.socket_inode = socket_inode
        self.gate: ConnectionGate | None = None
        """Admits and times the connections (set once the site starts)."""
        self.restore_exception_handler: Callable[[], None] | None = None


async def start_unix_site(app: web.Application, path: Path) -> SocketRunner:
    """Serve ``app`` on the Unix socket ``path`` (mode 0660), and on nothing else.

    A leftover socket file is removed when nothing accepts connections on it. The app's
    :class:`ServerLimits` (``make_app(limits=...)``) apply to the socket's connections; unless they
    say otherwise, the process's soft open-files limit is raised first.

    Raises:
        DaydreamError: the path is too long, a symbolic link or not a socket, or another instance is
            listening there.
    """
    limits = app.get(LIMITS) or ServerLimits()
    soft, hard = raise_open_files_limit() if limits.raise_open_files else open_files_limit()
    stale_inode = _prepare_socket_path(path)
    if stale_inode is not None:
        if await _is_listening(path):
            raise DaydreamError(
                f"another daydreamd is already listening on {path}; stop it first or set another paths.socket"
            )
        _unlink(path, inode=stale_inode)
    sock, inode = _bind_unix(path)
    runner = SocketRunner(app, path, inode)
    loop = asyncio.get_running_loop()
    try:
        await runner.setup()
        server = runner.server
        assert server is not None  # set by setup()
        cap = connection_cap(limits, soft)
        runner.gate = ConnectionGate(server, limits, cap=cap)
        await GatedSite(runner, sock, runner.gate).start()
        runner.restore_exception_handler = throttle_loop_errors(loop, limits.log_interval_s)
    except BaseException:
        sock.close()
        await stop(runner)
        raise
    log.info(
        "control_socket_limits",
        max_connections=cap,
        max_connections_per_user=runner.gate.user_cap,
        header_timeout_s=limits.header_timeout_s,
        keepalive_timeout_s=limits.keepalive_timeout_s,
        body_timeout_s=limits.body_timeout_s,
        max_event_streams=limits.max_event_streams,
        open_files_soft=shown_limit(soft),
        open_files_hard=shown_limit(hard),
    )
    return runner


async def stop(runner: SocketRunner) -> None:
    """Stop serving and remove the socket file (unless another instance has replaced it since)."""
    try:
        await runner.cleanup()
    finally:
        if runner.gate is not None:
            runner.gate.close()
        if runner.restore_exception_handler is not None:
            runner.restore_exception_handler()
        _unlink(runner.socket_path, inode=runner.socket_inode)


# -- the socket file ---------------------------------------------------------------------------


def _prepare_socket_path(path: Path) -> int | None:
    """Check ``path`` can hold a socket and create its folder; the inode of a socket file already there.

    Nothing at ``path`` is followed: a symbolic link is refused (not removed, and neither is what
    it points to), as is anything else that is not a socket file.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DaydreamError(
            f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}; set a shorter paths.socket"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        found = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(found.st_mode):
        raise DaydreamError(
            f"{path} is a symbolic link (to {path.readlink()}); daydreamd does not follow it, so that a "
            "socket elsewhere is never removed or replaced: remove the link or set paths.socket to the real "
            "path"
        )
    if not stat.S_ISSOCK(found.st_mode):
        raise DaydreamError(f"{path} exists and is not a socket; move it away or set another paths.socket")
    return found.st_ino


async def _is_listening(path: Path) -> bool:
    """Whether something accepts connections on the socket file ``path`` (refused: a stale file)."""
    try:
        _, writer = await asyncio.open_unix_connection(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise DaydreamError(f"cannot check whether {path} is in use: {exc.strerror or exc}") from exc
    writer.close()
    await writer.wait_closed()
    return True


def _bind_unix(path: Path) -> tuple[socket.socket, int]:
    """A socket bound to ``path`` under umask 0o117, so the file is born 0660 with no window of wider access.

    Returns the socket and the file's inode (to recognise it at :func:`stop`). The umask is
    process-wide: bind before worker threads start creating files.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise DaydreamError(f"cannot bind the control socket {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(previous)
    sock.setblocking(False)
    return sock, path.lstat().st_ino


def _unlink(path: Path, *, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still the one with ``inode`` (a socket, not a link)."""
    try:
        found = path.lstat()
        if stat.S_ISSOCK(found.st_mode) and found.st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
