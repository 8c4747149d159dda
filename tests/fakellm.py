"""A fault-injecting fake OpenAI-compatible chat-completions server, for tests and benchmarks.

Every way a real gateway (OpenRouter first) has been seen to fail can be scripted here, so the
client's classification and the retry loop can be pinned by counting the requests this server
recorded, without a network, a key or a bill. It speaks ``POST /v1/chat/completions`` (and
``/chat/completions``) and answers with OpenRouter-shaped bodies: ``id``, ``provider``, ``model``,
``usage`` with ``cost`` and reasoning tokens, ``finish_reason`` and ``native_finish_reason``.

In-process::

    async with FakeLlm(latency_ms=(5, 20), rpm=600) as fake:
        fake.script(FaultKind.RATE_LIMIT, times=2, retry_after="1")
        ...  # point a client at fake.base_url
        assert fake.calls_for("my prompt") == 3

Standalone (prints the base URL once listening, runs until SIGTERM/SIGINT)::

    python -m tests.fakellm --port 8089 --latency-ms 50 --rpm 600 --model-rpm vendor/slow-model=30

Knobs, applied in this order to each request: the RPM limit (429 with ``Retry-After``; the
sliding 60-second window counts rejected requests too), then the per-model RPM limit of the
request body's ``model`` (``model_rpm``; the same rules, one window per model; a request the
global limit rejected is not counted in its model's window), the optional API key check (401),
the request's own validity (400), then a fault chosen from the script queue, then ``fault_fn``,
then ``fault_rates`` (seeded RNG). Latency applies to everything the "model" answers (successes
and faults), not to the gateway's own RPM/auth rejections.

The Batch API (files, batches, their states over time, partial failures, expiry) is
:mod:`tests.fakebatch`, on the same server.

``GET /_fake/stats`` answers the server's own counters as JSON (:meth:`FakeLlm.stats`): what a
benchmark running the server in another process reads instead of trusting the client's count.

A reply that does not fit ``max_tokens`` is cut and reported with ``finish_reason="length"``,
as a real model would.

``echo_key=True`` (``--echo-key``) makes the server a leaky gateway: the key each request carried
(its bearer token) comes back whole and masked (:func:`key_echoes`) in every answer: the reply's
``id``, ``model``, ``provider`` and ``native_finish_reason``, the first lines of its content, and
every error message. A client must keep none of it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakebatch import FakeBatchApi

_CHARS_PER_TOKEN = 4
_WINDOW_S = 60.0
_JSON = "application/json"


class FaultKind(StrEnum):
    """Ways an answer can go wrong."""

    RATE_LIMIT = "rate_limit"  # 429
    SERVER_ERROR = "server_error"  # 500
    BAD_GATEWAY = "bad_gateway"  # 502
    UNAVAILABLE = "unavailable"  # 503
    QUOTA = "quota"  # 402
    AUTH = "auth"  # 401
    INVALID_REQUEST = "invalid_request"  # 400
    ERROR_BODY = "error_body"  # 200 with {"error": {"code": ..., "message": ...}}
    EMPTY_CHOICES = "empty_choices"  # 200 with "choices": []
    EMPTY_CONTENT = "empty_content"  # 200, content "" and finish_reason "stop"
    TRUNCATED = "truncated"  # finish_reason "length", completion_tokens == max_tokens
    CONTENT_FILTER = "content_filter"  # finish_reason "content_filter", partial text
    MALFORMED_JSON = "malformed_json"  # 200 with a cut-off JSON body
    DROP = "drop"  # the connection is closed without an answer
    SLOW_BODY = "slow_body"  # headers at once, then the body trickles over slow_body_s


_HTTP_FAULTS: dict[FaultKind, tuple[int, str]] = {
    FaultKind.RATE_LIMIT: (429, "Rate limit exceeded"),
    FaultKind.SERVER_ERROR: (500, "Internal server error"),
    FaultKind.BAD_GATEWAY: (502, "Upstream provider returned an error"),
    FaultKind.UNAVAILABLE: (503, "No instances available"),
    FaultKind.QUOTA: (402, "Insufficient credits"),
    FaultKind.AUTH: (401, "No auth credentials found"),
    FaultKind.INVALID_REQUEST: (400, "Invalid request"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One injected fault. ``retry_after`` is sent as the ``Retry-After`` header (HTTP faults);
    ``code`` is the error code of an ``ERROR_BODY``; ``message`` overrides the default text."""

    kind: FaultKind
    retry_after: str | None = None
    code: int = 502
    message: str | None = None


FaultSpec = Fault | FaultKind | str


def as_fault(spec: FaultSpec) -> Fault:
    """Accept a :class:`Fault`, a :class:`FaultKind` or its string value."""
    return spec if isinstance(spec, Fault) else Fault(kind=FaultKind(spec))


@dataclass(slots=True, kw_only=True)
class RecordedRequest:
    """One request as received; ``status`` is what was answered (0: connection dropped)."""

    number: int
    at: float
    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any] | None
    model: str | None
    prompt: str
    max_tokens: int | None
    temperature: float | None
    status: int | None = None
    fault: FaultKind | None = None
    answered_at: float | None = None
    """When the answer was decided (the RPM/auth rejection, or after the latency), on ``clock``."""


ReplyBuilder = Callable[[RecordedRequest], str]
FaultFn = Callable[[int, RecordedRequest], FaultSpec | None]


def default_reply(request: RecordedRequest) -> str:
    """A reply every stage's parser accepts: text lines, two ``<essay-idea>`` blocks, a score."""
    digest = hashlib.sha256(request.prompt.encode()).hexdigest()
    tag, score = digest[:8], int(digest[8:16], 16) % 10
    return (
        f"Reply {tag} considers the prompt carefully.\n"
        "The concepts connect through a shared mechanism.\n"
        '<essay-idea stage="1">\n'
        f"Seed idea {tag}: the concepts feed back into each other.\n"
        "</essay-idea>\n"
        '<essay-idea stage="2">\n'
        f"Final idea {tag}: a testable feedback loop between the concepts.\n"
        "</essay-idea>\n"
        "The idea is coherent and moderately novel.\n"
        f"SCORE: {score}\n"
    )


def key_echoes(key: str) -> list[str]:
    """``key`` as gateways and dashboards have been seen to show it: whole, without its last 4
    characters, its first 12 then ``****``, its first 12 and last 4 around ``...``, and 20
    characters from its middle."""
    middle = len(key) // 2
    return [key, key[:-4], f"{key[:12]}****", f"{key[:12]}...{key[-4:]}", key[middle - 10 : middle + 10]]


def _bearer(record: RecordedRequest) -> str | None:
    auth = record.headers.get("Authorization") or ""
    return auth.removeprefix("Bearer ").strip() or None


def _prompt_of(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    parts = [message.get("content") for message in messages if isinstance(message, Mapping)]
    return "\n".join(part for part in parts if isinstance(part, str))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


class FakeLlm:
    """The fake server. Use as ``async with FakeLlm(...) as fake`` or ``await start()``/``close()``.

    Args:
        host, port: where to listen; port 0 picks a free one (see :attr:`base_url`).
        latency_ms: fixed milliseconds, or ``(low, high)`` for uniform random latency.
        rpm: requests per minute before answering 429 (sliding window), ``None`` for no limit.
        tpm: tokens per minute before answering 429 (sliding window, as a provider limits one API
            key): a request counts its prompt (four characters a token) plus ``max_tokens`` when
            it arrives, corrected to its usage (prompt plus completion) when it is answered.
        model_rpm: per-model requests per minute (by the body's ``model``), checked after ``rpm``;
            a model not listed has no limit of its own.
        fault_rates: probability of each fault per request (drawn with the seeded RNG).
        fault_fn: ``f(request_number, request) -> fault or None``, for patterns by number.
        seed: seeds the RNG for latency and fault rates.
        reply_builder: text of a successful reply; :func:`default_reply` by default.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        echo_auth_in_errors: copy the received ``Authorization`` header into error messages
            (to prove a client never leaks what a server echoes).
        echo_key: put the received key, whole and masked, in every field of every answer (see
            the module docstring).
        slow_body_s: how long a ``SLOW_BODY`` answer takes to trickle out.
        clock: monotonic clock for the RPM window (inject one to test the window quickly).
        batch_delay_s, batch_fail_every, batch_expire: the Batch API's (:mod:`tests.fakebatch`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float | tuple[float, float] = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        model_rpm: Mapping[str, int] | None = None,
        fault_rates: Mapping[FaultSpec, float] | None = None,
        fault_fn: FaultFn | None = None,
        seed: int = 0,
        reply_builder: ReplyBuilder = default_reply,
        api_key: str | None = None,
        echo_auth_in_errors: bool = False,
        echo_key: bool = False,
        slow_body_s: float = 10.0,
        provider_name: str = "FakeProvider",
        clock: Callable[[], float] = time.monotonic,
        batch_delay_s: float = 0.5,
        batch_fail_every: int = 0,
        batch_expire: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.rpm = rpm
        self.tpm = tpm
        self._token_window: deque[list[float]] = deque()
        self._token_entries: dict[int, list[float]] = {}
        self.max_tokens_in_window = 0
        """The most tokens counted in any 60 s window (with ``tpm``)."""
        self.model_rpm = dict(model_rpm or {})
        self.fault_rates = [(as_fault(spec), rate) for spec, rate in (fault_rates or {}).items()]
        self.fault_fn = fault_fn
        self.reply_builder = reply_builder
        self.api_key = api_key
        self.echo_auth_in_errors = echo_auth_in_errors
        self.echo_key = echo_key
        self.slow_body_s = slow_body_s
        self.provider_name = provider_name
        self.requests: list[RecordedRequest] = []
        self.status_counts: Counter[int] = Counter()
        self.rate_limited_count = 0
        self._clock = clock
        self._rng = random.Random(seed)
        self._script: deque[Fault | None] = deque()
        self._window: deque[float] = deque()
        self._model_windows: dict[str, deque[float]] = {}
        self.in_progress = 0
        self.max_in_progress = 0
        self._seen = _BusiestWindow()
        self._seen_by_model: dict[str, _BusiestWindow] = {}
        self._by_model: dict[str, _ModelCounts] = {}
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self.batch_api = FakeBatchApi(
            self, delay_s=batch_delay_s, fail_every=batch_fail_every, expire=batch_expire, clock=clock
        )
        """The Batch API (:mod:`tests.fakebatch`): files, batches, and what was submitted."""

    # ---- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/chat/completions", self._handle)
        app.router.add_get("/_fake/stats", self._handle_stats)
        self.batch_api.add_routes(app)
        return app

    async def start(self) -> str:
        """Start listening; returns :attr:`base_url`."""
        runner = web.AppRunner(
            self.make_app(), access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown}:{port}/v1"
        return self._base_url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeLlm:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``; clients append ``/chat/completions``."""
        if self._base_url is None:
            raise RuntimeError("FakeLlm is not started")
        return self._base_url

    # ---- scripting and inspection ----------------------------------------------------------

    def script(self, fault: FaultSpec, times: int = 1, *, retry_after: str | None = None) -> None:
        """The next ``times`` requests (after those already scripted) get ``fault``."""
        planned = as_fault(fault)
        if retry_after is not None:
            planned = replace(planned, retry_after=retry_after)
        self._script.extend([planned] * times)

    def script_sequence(self, faults: Sequence[FaultSpec | None]) -> None:
        """Script one request per item; ``None`` means a normal answer for that request."""
        for fault in faults:
            self._script.append(as_fault(fault) if fault is not None else None)

    def requests_for(self, prompt_substring: str) -> list[RecordedRequest]:
        return [request for request in self.requests if prompt_substring in request.prompt]

    def calls_for(self, prompt_substring: str) -> int:
        """How many requests carried a prompt containing ``prompt_substring``."""
        return len(self.requests_for(prompt_substring))

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def clear(self) -> None:
        """Forget recorded requests, counters and pending scripted faults (not the RPM windows)."""
        self.requests.clear()
        self.status_counts.clear()
        self.rate_limited_count = 0
        self._script.clear()
        self.max_in_progress = self.in_progress
        self._seen = _BusiestWindow()
        self._seen_by_model.clear()
        self._by_model.clear()

    def stats(self) -> dict[str, Any]:
        """The server's own counters since the start (or :meth:`clear`), as ``GET /_fake/stats`` answers.

        ``now`` is this server's ``clock`` when answering (times below are on the same clock);
        ``requests`` counts every request received, ``status_counts`` the answers by HTTP status
        (0: connection dropped); ``in_progress`` the requests received and not yet answered (the
        "model" is working on them), ``max_in_progress`` the most at once; ``max_in_window`` the
        most requests received in any 60 s window (rejected ones included, as the RPM limits count
        them). ``models`` has the same per ``model`` field, with ``first_at`` (first request),
        ``last_ok_at`` (the last 200 answer) and ``rpm`` (its own limit, or None). ``cpu_s`` is
        this process's CPU time so far (a benchmark checks that the server is not what limits it).
        """
        return {
            "now": self._clock(),
            "cpu_s": time.process_time(),
            "requests": len(self.requests),
            "status_counts": {str(status): n for status, n in sorted(self.status_counts.items())},
            "rate_limited": self.rate_limited_count,
            "in_progress": self.in_progress,
            "max_in_progress": self.max_in_progress,
            "max_in_window": self._seen.busiest,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_tokens_in_window": self.max_tokens_in_window,
            "batch": self.batch_api.stats(),
            "models": {
                model: {
                    "requests": counts.requests,
                    "status_counts": {str(status): n for status, n in sorted(counts.status_counts.items())},
                    "rate_limited": counts.status_counts.get(429, 0),
                    "in_progress": counts.in_progress,
                    "max_in_window": self._seen_by_model[model].busiest,
                    "first_at": counts.first_at,
                    "last_ok_at": counts.last_ok_at,
                    "rpm": self.model_rpm.get(model),
                }
                for model, counts in sorted(self._by_model.items())
            },
        }

    # ---- request handling ------------------------------------------------------------------

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.stats()), content_type=_JSON)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = self._record(request, await request.read())
        limited = self._rpm_retry_after(record.at)
        if limited is None:
            limited = self._model_rpm_retry_after(record.model, record.at)
        if limited is None:
            limited = self._tpm_retry_after(record)
        if limited is not None:
            return self._http_fault(record, Fault(kind=FaultKind.RATE_LIMIT, retry_after=str(limited)))
        if self.api_key is not None and record.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._http_fault(record, Fault(kind=FaultKind.AUTH))
        if record.body is None or not record.model or record.max_tokens is None:
            return self._http_fault(
                record, Fault(kind=FaultKind.INVALID_REQUEST, message="body must name model and max_tokens")
            )
        fault = self._pick_fault(record)
        counts = self._model_counts(record.model)
        self.in_progress += 1
        counts.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            await self._sleep_latency()
            return await self._answer(request, record, fault)
        finally:
            self.in_progress -= 1
            counts.in_progress -= 1

    def _record(self, request: web.Request, raw: bytes) -> RecordedRequest:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        fields = body or {}
        max_tokens = _number(fields.get("max_tokens"))
        record = RecordedRequest(
            number=len(self.requests) + 1,
            at=self._clock(),
            path=request.path,
            headers=CIMultiDict(request.headers),
            body=body,
            model=fields.get("model") if isinstance(fields.get("model"), str) else None,
            prompt=_prompt_of(fields),
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            temperature=_number(fields.get("temperature")),
        )
        self.requests.append(record)
        self._seen.add(record.at)
        counts = self._model_counts(record.model)
        counts.requests += 1
        self._seen_by_model[record.model or ""].add(record.at)
        if counts.first_at is None:
            counts.first_at = record.at
        return record

    def _model_counts(self, model: str | None) -> _ModelCounts:
        key = model or ""
        counts = self._by_model.get(key)
        if counts is None:
            counts = self._by_model[key] = _ModelCounts()
            self._seen_by_model[key] = _BusiestWindow()
        return counts

    def _rpm_retry_after(self, now: float) -> int | None:
        """Count this request in the window; return the Retry-After seconds if over the limit."""
        if self.rpm is None:
            return None
        return _window_retry_after(self._window, self.rpm, now)

    def _tpm_retry_after(self, record: RecordedRequest) -> int | None:
        """Count the request's tokens in the window; the Retry-After seconds if they do not fit."""
        if self.tpm is None:
            return None
        window, now = self._token_window, record.at
        while window and window[0][0] <= now - _WINDOW_S:
            window.popleft()
        counted = sum(entry[1] for entry in window)
        tokens = max(1, len(record.prompt) // _CHARS_PER_TOKEN) + (record.max_tokens or 0)
        if window and counted + tokens > self.tpm:
            return max(1, math.ceil(window[0][0] + _WINDOW_S - now))
        entry = [now, float(tokens)]
        window.append(entry)
        self._token_entries[record.number] = entry
        self.max_tokens_in_window = max(self.max_tokens_in_window, round(counted + tokens))
        return None

    def _model_rpm_retry_after(self, model: str | None, now: float) -> int | None:
        """The same for the request's model, when it has a limit of its own."""
        if model is None or model not in self.model_rpm:
            return None
        window = self._model_windows.setdefault(model, deque())
        return _window_retry_after(window, self.model_rpm[model], now)

    def _pick_fault(self, record: RecordedRequest) -> Fault | None:
        if self._script:
            return self._script.popleft()
        if self.fault_fn is not None:
            chosen = self.fault_fn(record.number, record)
            if chosen is not None:
                return as_fault(chosen)
        if self.fault_rates:
            draw = self._rng.random()
            for fault, rate in self.fault_rates:
                if draw < rate:
                    return fault
                draw -= rate
        return None

    async def _sleep_latency(self) -> None:
        latency = self.latency_ms
        seconds = self._rng.uniform(*latency) / 1000 if isinstance(latency, tuple) else latency / 1000
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _finish(self, record: RecordedRequest, status: int, fault: FaultKind | None) -> None:
        record.status = status
        record.fault = fault
        record.answered_at = self._clock()
        self.status_counts[status] += 1
        if status == 429:
            self.rate_limited_count += 1
        counts = self._model_counts(record.model)
        counts.status_counts[status] += 1
        if status == 200:
            counts.last_ok_at = record.answered_at

    def _echoes(self, record: RecordedRequest) -> list[str]:
        key = _bearer(record) if self.echo_key else None
        return key_echoes(key) if key else []

    def _text(self, record: RecordedRequest) -> str:
        """The reply's text: the reply builder's, after a line per key echo when echoing."""
        echoes = "".join(f"Key seen: {echo}\n" for echo in self._echoes(record))
        return echoes + self.reply_builder(record)

    def _error_message(self, record: RecordedRequest, message: str) -> str:
        echoes = self._echoes(record)
        if echoes:
            message = f"{message} (key {'; '.join(echoes)})"
        if self.echo_auth_in_errors:
            return f"{message} (received Authorization: {record.headers.get('Authorization')})"
        return message

    def _http_fault(self, record: RecordedRequest, fault: Fault) -> web.Response:
        status, default_message = _HTTP_FAULTS[fault.kind]
        message = self._error_message(record, fault.message or default_message)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        self._finish(record, status, fault.kind)
        body = json.dumps({"error": {"code": status, "message": message}})
        return web.Response(status=status, text=body, content_type=_JSON, headers=headers)

    async def _answer(
        self, request: web.Request, record: RecordedRequest, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is None:
            return self._json(record, None, self._completion(record, self._text(record)))
        kind = fault.kind
        if kind in _HTTP_FAULTS:
            return self._http_fault(record, fault)
        if kind is FaultKind.DROP:
            return self._drop(request, record)
        if kind is FaultKind.SLOW_BODY:
            body = self._completion(record, self._text(record))
            return await self._slow(request, record, json.dumps(body).encode())
        if kind is FaultKind.MALFORMED_JSON:
            self._finish(record, 200, kind)
            echo = "".join(f"-{echo}" for echo in self._echoes(record)[:1])
            cut = f'{{"id": "gen-fake-{record.number}{echo}", "choices": [{{"message": {{"content": "unter'
            return web.Response(status=200, text=cut, content_type=_JSON)
        return self._json(record, kind, self._faulty_body(record, fault))

    def _faulty_body(self, record: RecordedRequest, fault: Fault) -> dict[str, Any]:
        kind = fault.kind
        if kind is FaultKind.ERROR_BODY:
            message = self._error_message(record, fault.message or "Upstream error (in a 200 body)")
            error: dict[str, Any] = {"code": fault.code, "message": message}
            if self.echo_key:
                error["metadata"] = {"provider_name": self.provider_name, "raw": message}
            return {"id": f"gen-fake-{record.number}", "error": error}
        if kind is FaultKind.EMPTY_CHOICES:
            body = self._completion(record, "")
            body["choices"] = []
            return body
        if kind is FaultKind.EMPTY_CONTENT:
            return self._completion(record, "", finish=("stop", "stop"))
        full = self._text(record)
        if kind is FaultKind.TRUNCATED:
            limit = record.max_tokens or 1
            text = full[: max(1, min(len(full) // 2, limit * _CHARS_PER_TOKEN))]
            return self._completion(record, text, finish=("length", "max_tokens"), completion_tokens=limit)
        if kind is FaultKind.CONTENT_FILTER:
            return self._completion(record, full.split("\n", 1)[0], finish=("content_filter", "SAFETY"))
        raise ValueError(f"unhandled fault {kind}")

    def _completion(
        self,
        record: RecordedRequest,
        text: str,
        *,
        finish: tuple[str, str] | None = None,
        completion_tokens: int | None = None,
    ) -> dict[str, Any]:
        """An OpenRouter-shaped success body; cut at ``max_tokens`` when the text does not fit."""
        tokens = _tokens(text) if completion_tokens is None else completion_tokens
        limit = record.max_tokens
        if finish is None:
            finish = ("stop", "stop")
            if limit is not None and 0 < limit <= tokens:
                text, tokens, finish = text[: limit * _CHARS_PER_TOKEN], limit, ("length", "max_tokens")
        prompt_tokens = max(1, len(record.prompt) // _CHARS_PER_TOKEN)
        entry = self._token_entries.pop(record.number, None)
        if entry is not None:  # tokens per minute: the estimate becomes the usage
            entry[1] = float(prompt_tokens + tokens)
        body: dict[str, Any] = {
            "id": f"gen-fake-{record.number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.model,
            "provider": self.provider_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish[0],
                    "native_finish_reason": finish[1],
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
                "cost": round(prompt_tokens * 1e-6 + tokens * 4e-6, 9),
                "completion_tokens_details": {"reasoning_tokens": tokens // 4},
            },
        }
        echoes = self._echoes(record)
        if echoes:  # the fields a client keeps; finish_reason stays a word the client acts on
            body["id"] = f"{body['id']}-{echoes[0]}"
            body["model"] = f"{record.model} ({echoes[2]})"
            body["provider"] = f"{self.provider_name} {echoes[1]}"
            body["choices"][0]["native_finish_reason"] = f"{finish[1]} {echoes[3]} {echoes[4]}"
        return body

    def _json(self, record: RecordedRequest, fault: FaultKind | None, body: dict[str, Any]) -> web.Response:
        self._finish(record, 200, fault)
        return web.Response(status=200, text=json.dumps(body), content_type=_JSON)

    def _drop(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        self._finish(record, 0, FaultKind.DROP)
        transport = request.transport
        if transport is not None:
            transport.close()
        # Writing this response to the closed transport fails quietly (aiohttp ignores ConnectionError).
        return web.Response(status=500)

    async def _slow(
        self, request: web.Request, record: RecordedRequest, payload: bytes
    ) -> web.StreamResponse:
        self._finish(record, 200, FaultKind.SLOW_BODY)
        response = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
        response.content_length = len(payload)
        await response.prepare(request)
        steps = 20
        size = math.ceil(len(payload) / steps)
        try:
            for offset in range(0, len(payload), size):
                await response.write(payload[offset : offset + size])
                await asyncio.sleep(self.slow_body_s / steps)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, which is the point
        return response


def _window_retry_after(window: deque[float], limit: int, now: float) -> int | None:
    """Count a request at ``now`` in ``window``; the Retry-After seconds if it is over ``limit``."""
    while window and window[0] <= now - _WINDOW_S:
        window.popleft()
    over = len(window) >= limit
    retry_after = max(1, math.ceil(window[0] + _WINDOW_S - now)) if over else None
    window.append(now)
    return retry_after


class _BusiestWindow:
    """The most requests seen in any 60 s window (``(t - 60, t]``, as the RPM limits count)."""

    def __init__(self) -> None:
        self._stamps: deque[float] = deque()
        self.busiest = 0

    def add(self, now: float) -> None:
        stamps = self._stamps
        while stamps and stamps[0] <= now - _WINDOW_S:
            stamps.popleft()
        stamps.append(now)
        self.busiest = max(self.busiest, len(stamps))


@dataclass(slots=True)
class _ModelCounts:
    """Counters for one ``model`` field (``""``: requests that named none)."""

    requests: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    in_progress: int = 0
    first_at: float | None = None
    last_ok_at: float | None = None


# ---- standalone mode ---------------------------------------------------------------------------


def _parse_latency(text: str) -> float | tuple[float, float]:
    for separator in ("-", ","):
        if separator in text.strip().lstrip("-"):
            low, high = text.split(separator, 1)
            return float(low), float(high)
    return float(text)


def _parse_fault_rate(text: str) -> tuple[FaultKind, float]:
    kind, _, rate = text.partition("=")
    return FaultKind(kind.strip()), float(rate)


def _parse_model_rpm(text: str) -> tuple[str, int]:
    model, separator, rpm = text.rpartition("=")
    if not separator or not model.strip():
        raise argparse.ArgumentTypeError(f"expected MODEL=N, got {text!r}")
    try:
        limit = int(rpm)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=N with an integer N, got {text!r}") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"the limit must be at least 1, got {text!r}")
    return model.strip(), limit


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakellm", description="Fault-injecting fake OpenAI-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--latency-ms", type=_parse_latency, default=0.0, help="fixed ms, or LOW-HIGH for uniform random"
    )
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute before 429")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute before 429")
    parser.add_argument(
        "--model-rpm",
        type=_parse_model_rpm,
        action="append",
        default=[],
        metavar="MODEL=N",
        help="requests per minute for requests whose body names MODEL, before 429 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer key (else 401)")
    parser.add_argument(
        "--fault-rate",
        type=_parse_fault_rate,
        action="append",
        default=[],
        metavar="KIND=P",
        help=f"inject KIND with probability P; kinds: {', '.join(kind.value for kind in FaultKind)}",
    )
    parser.add_argument("--slow-body-s", type=float, default=10.0)
    parser.add_argument(
        "--batch-delay-s", type=float, default=0.5, help="a batch's time from creation to its end"
    )
    parser.add_argument(
        "--batch-fail-every", type=int, default=0, help="every Nth request of a batch gets a 500"
    )
    parser.add_argument(
        "--batch-expire", action="store_true", help="batches expire with half their requests answered"
    )
    parser.add_argument(
        "--echo-key", action="store_true", help="echo the received key, whole and masked, in every answer"
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fake = FakeLlm(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        rpm=args.rpm,
        tpm=args.tpm,
        model_rpm=dict(args.model_rpm),
        fault_rates=dict(args.fault_rate),
        seed=args.seed,
        api_key=args.api_key,
        slow_body_s=args.slow_body_s,
        echo_key=args.echo_key,
        batch_delay_s=args.batch_delay_s,
        batch_fail_every=args.batch_fail_every,
        batch_expire=args.batch_expire,
    )
    async with fake:
        sys.stdout.write(fake.base_url + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(_serve(_arguments(argv)))


if __name__ == "__main__":
    main()
