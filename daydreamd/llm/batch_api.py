"""OpenAI's Batch API: upload a file of requests, create a batch, follow it, download its results.

A batch's requests are ``POST /chat/completions`` bodies exactly as an online call sends them
(:meth:`OpenAiCompatibleClient.payload`), one JSON line each with its ``custom_id`` (the gen_id).
Its results are read exactly as online answers are (:meth:`OpenAiCompatibleClient.answer`): the
same checks, failure kinds and scrubbing of the key. Every call here is one HTTP request, made
with the endpoint's session, key, headers and timeout; a failed one raises :class:`BatchApiError`
with a scrubbed message, and the caller decides when to try again.

Endpoints (relative to the endpoint's ``base_url``): ``POST /files`` (multipart, ``purpose=batch``),
``GET /files/{id}/content``, ``POST /batches``, ``GET /batches/{id}``, ``GET /batches?after=&limit=``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from daydreamd.core.errors import DaydreamError
from daydreamd.core.retry import FailureKind
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.types import CallFailure, LlmRequest, Reply

TAG_KEY = "daydreamd_batch"
"""The metadata key that carries daydreamd's own id of a batch (see :meth:`BatchClient.find`)."""

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""The provider's statuses of a batch that has ended (its output, if any, is final)."""

_LIST_PAGES = 50
_MAX_ERROR = 300
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
"""What a provider's file or batch id may look like: it goes into a URL path we send our key to."""


class BatchApiError(DaydreamError):
    """A Batch API request that did not work (no answer, an error status, a body not understood).

    ``status`` is the HTTP status (None: no answer); ``transient`` says whether trying again later
    may help (no answer, 408, 409, 429, 5xx) or the request itself is wrong (any other 4xx).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in (408, 409, 429) or self.status >= 500


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteBatch:
    """A batch as the provider describes it."""

    id: str
    status: str
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    tag: str | None = None
    error: str | None = None
    """The provider's first error about the batch as a whole (why it failed validation), if any."""

    @property
    def ended(self) -> bool:
        """Whether the provider has ended it (see :data:`TERMINAL`)."""
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One line of a batch's output or error file."""

    custom_id: str
    status: int | None
    """The HTTP status of the request's answer (None: the line carries an error and no answer)."""
    body: bytes
    """The answer's body as JSON bytes (for :meth:`OpenAiCompatibleClient.answer`), or the error's."""
    error: str | None
    """The line's own ``error`` (e.g. ``batch_expired``: the request was never run), as ``code: message``."""


class BatchClient:
    """The Batch API of one endpoint, through its online client (session, key, headers, timeout)."""

    def __init__(self, client: OpenAiCompatibleClient) -> None:
        self._client = client
        self._base = client.base_url
        # Files can be large: a transfer may take long as long as bytes keep coming.
        timeout_s = client.timeout.total or 600.0
        self._transfer_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )

    @property
    def client(self) -> OpenAiCompatibleClient:
        return self._client

    def request_line(self, custom_id: str, request: LlmRequest) -> bytes:
        """The JSON line of one request in a batch's input file."""
        line = {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": self._client.payload(request),
        }
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; returns its file id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        body = await self._request("POST", "/files", data=form, timeout=self._transfer_timeout)
        return _checked_id(_text_field(body, "id", "the uploaded file"))

    async def create(self, input_file_id: str, *, completion_window: str, tag: str) -> RemoteBatch:
        """Create a batch of the uploaded file, tagged with daydreamd's own id of it."""
        body = await self._request(
            "POST",
            "/batches",
            json={
                "input_file_id": input_file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": completion_window,
                "metadata": {TAG_KEY: tag},
            },
        )
        return _remote(body)

    async def get(self, remote_id: str) -> RemoteBatch:
        """The batch as the provider describes it now."""
        return _remote(await self._request("GET", f"/batches/{_checked_id(remote_id)}"))

    async def find(self, tag: str) -> RemoteBatch | None:
        """The batch created with ``tag`` (newest first, through the provider's list), or None: what a
        restart asks when it does not know whether a batch it was creating got created."""
        after: str | None = None
        for _ in range(_LIST_PAGES):
            params = {"limit": "100", **({"after": after} if after else {})}
            body = await self._request("GET", "/batches", params=params)
            data = body.get("data")
            if not isinstance(data, list):
                raise BatchApiError("the list of batches has no data", status=200)
            for item in data:
                if isinstance(item, Mapping) and _tag(item) == tag:
                    return _remote(item)
            if not body.get("has_more") or not data:
                return None
            last = data[-1]
            after = str(last.get("id")) if isinstance(last, Mapping) else None
        return None

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        path = f"/files/{_checked_id(file_id)}/content"
        return await self._request_bytes("GET", path, timeout=self._transfer_timeout)

    def read_lines(self, content: bytes) -> list[ResultLine]:
        """The result lines of an output or error file; lines that are not understood are skipped
        (their members end as ``batch_failed``, with no line to go by)."""
        found = []
        for raw in content.splitlines():
            line = _result_line(raw)
            if line is not None:
                found.append(line)
        return found

    def result(self, request: LlmRequest, line: ResultLine) -> Reply:
        """The reply a result line holds, checked as an online reply is.

        Raises:
            CallFailure: the request failed (its answer's status and body classify it as an online
                call's would), or the line carries an error instead of an answer.
        """
        if line.status is None:
            message = self._client.scrub(line.error or "no answer")
            kind = FailureKind.BATCH_EXPIRED if "expired" in message else FailureKind.BATCH_FAILED
            raise CallFailure(kind, message[:_MAX_ERROR])
        return self._client.answer(request, line.status, line.body)

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        raw = await self._request_bytes(method, path, **kwargs)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BatchApiError(f"{method} {path}: the answer is not JSON", status=200) from None
        if not isinstance(body, dict):
            raise BatchApiError(f"{method} {path}: the answer is not a JSON object", status=200)
        return body

    async def _request_bytes(self, method: str, path: str, **kwargs: Any) -> bytes:
        url = self._base + path
        kwargs.setdefault("timeout", self._client.timeout)
        try:
            async with self._client.session.request(
                method, url, headers=self._client.headers, **kwargs
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            raise BatchApiError(f"{method} {path}: timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BatchApiError(self._client.scrub(f"{method} {path}: {type(exc).__name__}: {exc}")) from None
        if not 200 <= status < 300:
            detail = self._client.scrub(raw.decode("utf-8", "replace"))[:_MAX_ERROR]
            raise BatchApiError(f"{method} {path}: HTTP {status}: {detail}", status=status)
        return raw


def _checked_id(value: str) -> str:
    """A provider's id, refused unless it is one plain token (it is put into a URL path)."""
    if not _ID.fullmatch(value):
        raise BatchApiError(
            f"the provider gave an id that is not one plain token: {value[:60]!r}", status=200
        )
    return value


def _first_error(body: Mapping[str, Any]) -> str | None:
    errors = body.get("errors")
    data = errors.get("data") if isinstance(errors, Mapping) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], Mapping) else None
    if first is None:
        return None
    return f"{first.get('code') or 'error'}: {first.get('message') or ''}".strip()[:_MAX_ERROR]


def _text_field(body: Mapping[str, Any], key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BatchApiError(f"{what} has no {key}", status=200)
    return value


def _count(counts: object, key: str) -> int:
    value = counts.get(key) if isinstance(counts, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) and value else None


def _tag(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    value = metadata.get(TAG_KEY) if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) else None


def _remote(body: Mapping[str, Any]) -> RemoteBatch:
    counts = body.get("request_counts")
    output, errors = _optional_text(body, "output_file_id"), _optional_text(body, "error_file_id")
    return RemoteBatch(
        id=_checked_id(_text_field(body, "id", "the batch")),
        status=_text_field(body, "status", "the batch"),
        input_file_id=_optional_text(body, "input_file_id"),
        output_file_id=None if output is None else _checked_id(output),
        error_file_id=None if errors is None else _checked_id(errors),
        total=_count(counts, "total"),
        completed=_count(counts, "completed"),
        failed=_count(counts, "failed"),
        tag=_tag(body),
        error=_first_error(body),
    )


def _result_line(raw: bytes) -> ResultLine | None:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(line, Mapping) or not isinstance(line.get("custom_id"), str):
        return None
    response, error = line.get("response"), line.get("error")
    if isinstance(response, Mapping) and isinstance(response.get("status_code"), int):
        body = response.get("body")
        return ResultLine(line["custom_id"], response["status_code"], json.dumps(body).encode(), None)
    if isinstance(error, Mapping):
        text = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
    else:
        text = "the line has neither an answer nor an error"
    return ResultLine(line["custom_id"], None, b"", text)
