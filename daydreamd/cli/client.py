"""A synchronous client of the control socket, on the standard library only (sync shell).

``daydreamctl`` runs once per command, so its start-up time is the user's wait: importing
aiohttp alone costs about 300 ms, while ``http.client`` over an AF_UNIX socket costs a few.
Every way the service can be out of reach becomes :class:`ServiceUnavailable` (the CLI exits 3),
and every JSON error answer becomes :class:`ServiceError` (exit 1).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from daydreamd.core.errors import DaydreamError

HOST = "daydreamd"
"""The Host header sent (a Unix socket has no host name; curl examples use the same)."""


class ServiceUnavailable(DaydreamError):
    """The service cannot be reached on its socket: not running, stale socket, no permission, no answer."""

    def __init__(self, message: str, *, socket_path: Path) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class ServiceError(DaydreamError):
    """The service answered with an error: ``status`` (HTTP), ``type`` and ``message`` from its JSON body."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the Unix socket at ``socket_path`` instead of TCP."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__(HOST, timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect, waiting out a full listen backlog until the timeout.

        A Unix socket with a timeout connects without blocking, and the kernel answers EAGAIN at
        once while the service's backlog is full (other clients, or a flood of them): that is a
        busy service, not an absent one, so it is retried with a short backoff.
        """
        deadline = time.monotonic() + (self.timeout or 10.0)
        pause = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(os.fspath(self.socket_path))
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


class ServiceClient:
    """Send one request per call to daydreamd's control socket and return the decoded JSON.

    Args:
        socket_path: the service's socket (``paths.socket`` in the config).
        timeout: seconds to wait for the connection and for each read.
        config: the config file, to name in the "start it with" hint.
    """

    def __init__(self, socket_path: Path, timeout: float = 10.0, *, config: Path | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.config = config

    def get(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        """``GET path?params`` (None values left out); the decoded JSON answer.

        ``path`` may carry a query of its own, already encoded; ``params`` are added to it.
        """
        return self._request("GET", _target(path, params or {}), None)

    def post(self, path: str, body: object) -> Any:
        """``POST path`` with ``body`` as JSON; the decoded JSON answer."""
        return self._request("POST", _target(path, {}), json.dumps(body).encode())

    def stream(self, path: str) -> Iterator[Any]:
        """``GET path`` answered with newline-delimited JSON: yield each object until the service closes.

        There is no read timeout on the stream (the service sends heartbeats); connecting still has one.
        """
        connection = _UnixConnection(self.socket_path, self.timeout)
        try:
            connection.request("GET", _target(path, {}), headers={"Accept": "application/x-ndjson"})
            response = connection.getresponse()
            if response.status != 200:
                _decode(response.status, response.read())
            if connection.sock is not None:
                connection.sock.settimeout(None)
            for line in response:
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable(exc) from exc
        finally:
            connection.close()

    def _request(self, method: str, target: str, body: bytes | None) -> Any:
        connection = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            status, data = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable(exc) from exc
        finally:
            connection.close()
        return _decode(status, data)

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        """Say plainly why the socket is out of reach, and what to do about it."""
        where = self.socket_path
        start = f"start it with: daydreamd --config {self.config or 'PATH'}"
        if isinstance(exc, FileNotFoundError):
            message = f"daydreamd is not running (no socket at {where}); {start}"
        elif isinstance(exc, ConnectionRefusedError):
            message = f"daydreamd is not running (nothing listens on {where}); {start}"
        elif isinstance(exc, PermissionError):
            message = f"permission denied on {where}; the socket is for its owner and group only"
        elif isinstance(exc, TimeoutError):
            message = f"daydreamd did not answer within {self.timeout:g} s on {where}"
        else:
            message = f"cannot talk to daydreamd on {where}: {exc}"
        return ServiceUnavailable(message, socket_path=where)


def _target(path: str, params: Mapping[str, object]) -> str:
    """The request target: ``path`` percent-encoded (a gen_id is user input), then the query."""
    base, _, inline = path.partition("?")
    added = urlencode({key: value for key, value in params.items() if value is not None})
    query = "&".join(part for part in (inline, added) if part)
    return quote(base, safe="/%") + (f"?{query}" if query else "")


def _decode(status: int, data: bytes) -> Any:
    """The JSON of a 2xx answer; a :class:`ServiceError` for anything else."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if 200 <= status < 300 and value is not None:
        return value
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        raise ServiceError(status, str(error.get("type", "error")), str(error.get("message", "")))
    snippet = data[:200].decode("utf-8", "replace").strip() or "(empty body)"
    raise ServiceError(status, "bad_response", f"unexpected answer from daydreamd (HTTP {status}): {snippet}")
