"""The control server on a real Unix socket, queried by the real client, raw HTTP and curl.

The service behind it is :class:`FakeControl`, canned answers plus a record of every call, so
these tests pin the socket contract (paths, validation, JSON errors, socket file lifecycle)
without a store or a pool. ``tests/shell/test_ctl_live.py`` reuses the fake and ``serving``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from daydreamd.cli.client import ServiceClient, ServiceError, ServiceUnavailable
from daydreamd.core.control import ApprovalRequest, ControlError
from daydreamd.core.errors import DaydreamError
from daydreamd.daemon.server import make_app, start_unix_site, stop

STATUS: dict[str, Any] = {
    "cohort_id": "c_5e1f00d2a1b3",
    "stages": {
        "draft": {"pending": 0, "queued": 0, "running": 1, "done": 8, "failed": 0, "retired": 0},
        "essay": {"pending": 12, "queued": 4, "running": 2, "done": 0, "failed": 0, "retired": 3},
        "evaluation": {"pending": 36, "queued": 0, "running": 0, "done": 0, "failed": 1, "retired": 0},
    },
    "in_flight": 3,
    "pool": {"concurrency": 8, "paused": False},
    "models": {
        "openai/gpt-4o-mini": {
            "in_flight": 2,
            "concurrency": 4.0,
            "max_concurrency": 8,
            "requests_per_minute": 60,
            "requests_last_minute": 12,
            "provider": "openrouter",
            "paused": False,
        },
        "mock/judge": {"in_flight": 1, "concurrency": 8.0},
    },
    "errors": [
        {
            "level": "error",
            "file": "1_raw/essay_templates.csv",
            "line": 4,
            "message": "unknown parser 'nope'",
        },
        {"level": "warning", "file": "1_raw/draft_templates.csv", "line": None, "message": "no active rows"},
    ],
}
GENERATION: dict[str, Any] = {
    "gen_id": "e_0a1b2c3d4e5f6789",
    "stage": "essay",
    "state": "failed",
    "template_id": "polished-essay",
    "llm_model_id": "openai/gpt-4o-mini",
    "parent_gen_id": "d_99aa88bb77cc66dd",
    "error_kind": "rate_limit",
    "attempt_log": [{"attempt": 1, "outcome": "rate_limit", "status": 429, "message": None}],
}


class CannedStatus:
    """A status whose JSON is exactly ``STATUS`` (a partial document, as another version may send)."""

    def to_json(self) -> dict[str, Any]:
        return STATUS


class FakeControl:
    """A Control with canned answers that records each call as (method, argument)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        """Raised by every method when set."""

    def _record(self, method: str, argument: Any) -> None:
        self.calls.append((method, argument))
        if self.error is not None:
            raise self.error

    async def status(self, cohort: str | None = None) -> CannedStatus:
        self._record("status", cohort)
        return CannedStatus()

    async def generations(
        self, *, stage: str | None, state: str | None, limit: int, cohort: str | None = None
    ) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"stage": stage, "state": state, "limit": limit}
        if cohort is not None:
            args["cohort"] = cohort
        self._record("generations", args)
        return [GENERATION]

    async def cohorts(self) -> dict[str, Any]:
        self._record("cohorts", None)
        return {"cohorts": [{"cohort_id": "c1", "kind": "default"}]}

    async def generation(self, gen_id: str) -> dict[str, Any] | None:
        self._record("generation", gen_id)
        return GENERATION if gen_id == GENERATION["gen_id"] else None

    async def approve(self, request: ApprovalRequest) -> dict[str, Any]:
        self._record("approve", request)
        return {"approval_id": 7, "matched": 4, "stage": request.stage}

    async def revoke(self, request: ApprovalRequest) -> dict[str, Any]:
        self._record("revoke", request)
        return {"revoked": 2}


@pytest.fixture(name="sock")
def _sock() -> Iterator[Path]:
    """A socket path short enough for AF_UNIX (pytest's tmp_path can exceed 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="dd-", dir="/tmp")
    try:
        yield Path(folder) / "s.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def serving(
    control: Any, path: Path, on_error: Callable[[BaseException], None] | None = None
) -> AsyncIterator[ServiceClient]:
    """The app over ``control`` listening on ``path``, and a client for it; stopped on exit."""
    runner = await start_unix_site(make_app(control, on_error=on_error), path)
    try:
        yield ServiceClient(path, timeout=5.0)
    finally:
        await stop(runner)


async def call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking client call in a thread, so the server in this loop can answer it."""
    return await asyncio.to_thread(function, *args)


async def call_error(function: Callable[..., Any], *args: Any) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await call(function, *args)
    return caught.value


async def raw_request(
    path: Path, method: str, target: str, body: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 exchange by hand, for requests the client cannot send (bad JSON, other methods)."""
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    head = f"{method} {target} HTTP/1.1\r\nHost: daydreamd\r\nConnection: close\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    header_block, _, payload = response.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, json.loads(payload)


# -- the API -----------------------------------------------------------------------------------


async def test_status_round_trip(sock: Path) -> None:
    """GET /v1/status returns the Control's status unchanged."""
    async with serving(FakeControl(), sock) as client:
        assert await call(client.get, "/v1/status") == STATUS


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_reads_status_and_errors(sock: Path) -> None:
    """Any HTTP client is a client: curl --unix-socket gets the status and JSON errors."""
    async with serving(FakeControl(), sock):
        ok = await _curl(sock, "http://daydreamd/v1/status")
        missing = await _curl(sock, "http://daydreamd/v1/nope")
    assert json.loads(ok) == STATUS
    assert json.loads(missing)["error"]["type"] == "not_found"


async def _curl(sock: Path, url: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "5", "--unix-socket", str(sock), url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out


async def test_generations_passes_filters_and_default_limit(sock: Path) -> None:
    """Stage and state reach the Control; limit defaults to 100; empty values mean no filter."""
    control = FakeControl()
    async with serving(control, sock) as client:
        listing = await call(client.get, "/v1/generations", {"stage": "essay", "state": "retired"})
        await call(client.get, "/v1/generations?stage=&state=&limit=10000")
    assert listing == {"generations": [GENERATION]}
    assert [argument for _, argument in control.calls] == [
        {"stage": "essay", "state": "retired", "limit": 100},
        {"stage": None, "state": None, "limit": 10_000},
    ]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("stage=essays", "stage"),
        ("state=approved", "state"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=-3", "limit"),
        ("limit=ten", "limit"),
        ("stat=done", "stat"),
    ],
)
async def test_generations_rejects_bad_parameters(sock: Path, query: str, parameter: str) -> None:
    """A bad query parameter is a 400 whose message starts with the parameter's name."""
    control = FakeControl()
    async with serving(control, sock) as client:
        error = await call_error(client.get, f"/v1/generations?{query}")
    assert (error.status, error.type) == (400, "bad_request")
    assert error.message.startswith(f"{parameter}: ")
    assert control.calls == []


async def test_cohort_scoping_reaches_the_control(sock: Path) -> None:
    """``cohort`` on status, listings and approvals reaches the Control; /v1/cohorts lists them."""
    control = FakeControl()
    async with serving(control, sock) as client:
        await call(client.get, "/v1/status", {"cohort": "rejudge-top5"})
        await call(client.get, "/v1/status")
        await call(client.get, "/v1/generations", {"cohort": "rejudge-top5", "state": "done"})
        listing = await call(client.get, "/v1/cohorts")
        await call(client.post, "/v1/approvals", {"stage": "evaluation", "cohort": "rejudge-top5"})
    assert listing == {"cohorts": [{"cohort_id": "c1", "kind": "default"}]}
    assert control.calls[:4] == [
        ("status", "rejudge-top5"),
        ("status", None),
        ("generations", {"stage": None, "state": "done", "limit": 100, "cohort": "rejudge-top5"}),
        ("cohorts", None),
    ]
    assert control.calls[4] == ("approve", ApprovalRequest(stage="evaluation", cohort="rejudge-top5"))


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/status?cohort=../etc", "cohort"),
        ("/v1/status?cohorts=x", "cohorts"),
        ("/v1/generations?cohort=a%20b", "cohort"),
        ("/v1/cohorts?stage=draft", "stage"),
    ],
)
async def test_bad_cohort_parameters_are_400_naming_them(sock: Path, path: str, parameter: str) -> None:
    control = FakeControl()
    async with serving(control, sock) as client:
        error = await call_error(client.get, path)
    assert (error.status, error.type) == (400, "bad_request")
    assert error.message.startswith(f"{parameter}: ")
    assert control.calls == []


async def test_generation_found_and_not_found(sock: Path) -> None:
    """A known gen_id returns its row; an unknown one is a 404 naming the id."""
    async with serving(FakeControl(), sock) as client:
        row = await call(client.get, f"/v1/generations/{GENERATION['gen_id']}")
        error = await call_error(client.get, "/v1/generations/e_ffff")
    assert row == GENERATION
    assert (error.status, error.type, error.message) == (404, "not_found", "no generation e_ffff")


async def test_unknown_path_is_404_json(sock: Path) -> None:
    """A path outside the API is a JSON 404 naming the method and path."""
    async with serving(FakeControl(), sock) as client:
        error = await call_error(client.get, "/v2/status")
    assert (error.status, error.type) == (404, "not_found")
    assert "GET /v2/status" in error.message


async def test_wrong_method_is_405_json_with_allow(sock: Path) -> None:
    """GET on an endpoint that takes POST is a JSON 405 that keeps the Allow header."""
    async with serving(FakeControl(), sock):
        status, headers, body = await raw_request(sock, "GET", "/v1/approvals")
        delete_status, _, _ = await raw_request(sock, "DELETE", "/v1/status")
    assert status == 405 and headers["Allow"] == "POST"
    assert body["error"]["type"] == "method_not_allowed"
    assert "use POST" in body["error"]["message"]
    assert delete_status == 405


@pytest.mark.parametrize("body", [b"", b"{stage: essay}", b"\xff\xfe"])
async def test_bad_json_body_is_400(sock: Path, body: bytes) -> None:
    """A body that is not JSON is a 400 saying so, and nothing is approved."""
    control = FakeControl()
    async with serving(control, sock):
        status, _, answer = await raw_request(sock, "POST", "/v1/approvals", body)
    assert status == 400 and answer["error"]["type"] == "bad_request"
    assert "not valid JSON" in answer["error"]["message"]
    assert control.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "stage"),
        ({"stage": "drafts"}, "stage"),
        ({"stage": ["essay"]}, "stage"),
        ({"stage": "essay", "limit": 0}, "limit"),
        ({"stage": "essay", "limit": True}, "limit"),
        ({"stage": "essay", "limit": "5"}, "limit"),
        ({"stage": "essay", "limit": 2.5}, "limit"),
        ({"stage": "essay", "template_id": ""}, "template_id"),
        ({"stage": "essay", "llm_model_id": 3}, "llm_model_id"),
        ({"stage": "essay", "requested_by": None}, "requested_by"),
        ({"stage": "essay", "model": "gpt"}, "model"),
        ({"stage": "essay", "cohort": "../x"}, "cohort"),
        ({"stage": "essay", "cohort": 7}, "cohort"),
    ],
)
async def test_approval_request_validation(sock: Path, body: dict[str, Any], field: str) -> None:
    """Every malformed approval is a 400 whose message starts with the field at fault."""
    control = FakeControl()
    async with serving(control, sock) as client:
        error = await call_error(client.post, "/v1/approvals", body)
    assert (error.status, error.type) == (400, "bad_request")
    assert error.message.startswith(f"{field}: ")
    assert control.calls == []


async def test_approval_body_must_be_an_object(sock: Path) -> None:
    """A JSON array is not an approval request."""
    async with serving(FakeControl(), sock) as client:
        error = await call_error(client.post, "/v1/approvals", ["essay"])
    assert error.status == 400 and "JSON object" in error.message


async def test_approve_and_revoke_reach_the_control(sock: Path) -> None:
    """Valid requests become ApprovalRequests; the Control's answers come back unchanged."""
    control = FakeControl()
    request = ApprovalRequest(stage="essay", template_id="t1", llm_model_id="m1", limit=5, requested_by="ann")
    async with serving(control, sock) as client:
        approved = await call(client.post, "/v1/approvals", request.to_dict())
        revoked = await call(client.post, "/v1/revocations", {"stage": "draft"})
    assert approved == {"approval_id": 7, "matched": 4, "stage": "essay"}
    assert revoked == {"revoked": 2}
    assert control.calls == [("approve", request), ("revoke", ApprovalRequest(stage="draft"))]


async def test_revocation_refuses_a_limit(sock: Path) -> None:
    """Revocations take no limit: a 400 naming it, rather than a silently ignored field."""
    async with serving(FakeControl(), sock) as client:
        error = await call_error(client.post, "/v1/revocations", {"stage": "draft", "limit": 3})
    assert error.status == 400 and error.message.startswith("limit: ")


async def test_control_error_keeps_its_status_and_type(sock: Path) -> None:
    """A ControlError from the service (e.g. 409, 503) is answered with its own status and type."""
    control = FakeControl()
    control.error = ControlError(409, "conflict", "the cohort changed; run status again")
    async with serving(control, sock) as client:
        error = await call_error(client.post, "/v1/approvals", {"stage": "essay"})
    assert (error.status, error.type, error.message) == (
        409,
        "conflict",
        "the cohort changed; run status again",
    )


async def test_unexpected_exception_is_500_json_and_reported(sock: Path) -> None:
    """A bug in the service is a JSON 500 naming the exception type; the hook gets the exception."""
    control = FakeControl()
    control.error = KeyError("stages")
    reported: list[BaseException] = []
    async with serving(control, sock, on_error=reported.append) as client:
        error = await call_error(client.get, "/v1/status")
        after = await call_error(client.get, "/v1/status")
    assert (error.status, error.type) == (500, "internal")
    assert "KeyError" in error.message
    assert reported == [control.error, control.error]
    assert after.status == 500  # the server survived the first one


# -- the socket file ---------------------------------------------------------------------------


async def test_socket_is_born_0660_and_is_the_only_listener(sock: Path) -> None:
    """Even under umask 0 the socket is mode 0660; the umask is restored; no TCP address exists."""
    previous = os.umask(0)
    try:
        runner = await start_unix_site(make_app(FakeControl()), sock)
        umask_after = os.umask(0)
    finally:
        os.umask(previous)
    try:
        mode = (await anyio.Path(sock).lstat()).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert umask_after == 0
        assert runner.addresses == [str(sock)]
    finally:
        await stop(runner)


async def test_stale_socket_file_is_replaced(sock: Path) -> None:
    """A socket file nobody listens on (left by a crash) is removed and the server starts."""
    leave_stale_socket(sock)
    async with serving(FakeControl(), sock) as client:
        assert (await call(client.get, "/v1/status"))["cohort_id"] == STATUS["cohort_id"]


async def test_live_socket_refuses_a_second_instance(sock: Path) -> None:
    """A second server on a socket in use fails with a clear error and leaves the first serving."""
    async with serving(FakeControl(), sock) as client:
        with pytest.raises(DaydreamError, match="already listening on"):
            await start_unix_site(make_app(FakeControl()), sock)
        assert (await call(client.get, "/v1/status")) == STATUS


async def test_refuses_a_path_that_is_not_a_socket(sock: Path) -> None:
    """A regular file at the socket path is never deleted."""
    await anyio.Path(sock).write_text("notes\n")
    with pytest.raises(DaydreamError, match="not a socket"):
        await start_unix_site(make_app(FakeControl()), sock)
    assert await anyio.Path(sock).read_text() == "notes\n"


async def test_refuses_a_path_too_long_for_af_unix(sock: Path) -> None:
    """An over-long path is refused up front with a message naming the setting."""
    with pytest.raises(DaydreamError, match=r"paths\.socket"):
        await start_unix_site(make_app(FakeControl()), sock.parent / ("x" * 120) / "s.sock")


async def test_stop_unlinks_the_socket(sock: Path) -> None:
    """After stop the socket file is gone, and the client says the service is not running."""
    async with serving(FakeControl(), sock) as client:
        assert await anyio.Path(sock).exists()
    assert not await anyio.Path(sock).exists()
    with pytest.raises(ServiceUnavailable, match="not running"):
        await call(client.get, "/v1/status")


async def test_stop_leaves_a_replaced_socket_alone(sock: Path) -> None:
    """stop removes only its own socket file, not one another process has put there since."""
    runner = await start_unix_site(make_app(FakeControl()), sock)
    await anyio.Path(sock).unlink()
    leave_stale_socket(sock)
    await stop(runner)
    assert await anyio.Path(sock).exists()


# -- the client on its own ---------------------------------------------------------------------


async def test_client_without_a_socket_names_it(sock: Path) -> None:
    """No socket file: ServiceUnavailable says daydreamd is not running and how to start it."""
    client = ServiceClient(sock, config=Path("/x/config.toml"))
    with pytest.raises(ServiceUnavailable) as caught:
        await call(client.get, "/v1/status")
    assert str(caught.value) == (
        f"daydreamd is not running (no socket at {sock}); start it with: daydreamd --config /x/config.toml"
    )
    assert caught.value.socket_path == sock


async def test_client_on_a_stale_socket_says_not_running(sock: Path) -> None:
    """A socket file with nothing listening is 'not running' too, naming the socket."""
    leave_stale_socket(sock)
    with pytest.raises(ServiceUnavailable, match=f"nothing listens on {sock}"):
        await call(ServiceClient(sock).get, "/v1/status")


async def test_client_sends_host_and_reports_non_json_errors(sock: Path) -> None:
    """The client sends Host: daydreamd; a non-JSON error answer becomes a ServiceError with a snippet."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, os.fspath(sock))
    async with server:
        error = await call_error(
            ServiceClient(sock).get, "/v1/generations", {"stage": "essay", "state": None}
        )
    assert received[0].startswith(b"GET /v1/generations?stage=essay HTTP/1.1\r\n")
    assert b"\r\nHost: daydreamd\r\n" in received[0]
    assert (error.status, error.type) == (502, "bad_response")
    assert "oops!" in error.message


def leave_stale_socket(path: Path) -> None:
    """Bind a socket file and close it without ever listening: what a killed process leaves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(os.fspath(path))
