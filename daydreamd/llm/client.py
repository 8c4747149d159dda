"""The LLM edge: one attempt at a chat completion, and the one loop that retries attempts.

Everything that talks to a model goes through :class:`Provider.complete`, which makes exactly one
attempt and either returns a validated :class:`Reply` or raises :class:`CallFailure` with a
:class:`~daydreamd.core.retry.FailureKind`. A reply is validated *inside* the attempt (an error object
in a 200 body, no choices, empty content, a content filter), because OpenAI-compatible gateways such
as OpenRouter report many upstream failures with status 200. Retrying is not the provider's job:
:func:`call_with_retries` is the single place that decides, using the pure policy in
:mod:`daydreamd.core.retry`, and reports every attempt through a hook so the worker pool can record it
and slow down on 429s.

Truncation is not an error here: a reply cut at ``max_tokens`` is returned with
``Reply.truncated=True`` (its text was paid for), and the caller decides per stage whether that
fails the generation (:func:`ensure_not_truncated` raises the matching failure).

The API key never leaves this module in a message: any echo of it in a server's answer is
replaced by ``[redacted]`` in failure messages and in the returned reply.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiohttp
import anyio

from daydreamd.core.errors import DaydreamError
from daydreamd.core.retry import (
    FailureKind,
    RetryPolicy,
    backoff_delay,
    classify_status,
    max_tries,
    parse_retry_after,
)

REDACTED = "[redacted]"
_MIN_SECRET_LENGTH = 4  # shorter "keys" would redact ordinary words out of replies
_MAX_ERROR_MESSAGE = 500
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmRequest:
    """One completion to ask for. ``stage`` only steers :class:`MockProvider`'s canned replies."""

    model: str
    prompt: str
    max_tokens: int
    temperature: float | None
    stage: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts and cost as reported by the server; ``None`` where it did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None

    def to_dict(self) -> dict[str, int | float | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost": self.cost,
        }

    @classmethod
    def from_body(cls, usage: object) -> Usage:
        """Read an OpenAI/OpenRouter ``usage`` object, ignoring anything malformed."""
        if not isinstance(usage, Mapping):
            return cls()
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
        return cls(
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
            total_tokens=_as_int(usage.get("total_tokens")),
            reasoning_tokens=_as_int(reasoning),
            cost=_as_float(usage.get("cost")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A model's answer to one attempt.

    ``raw_body`` is the decoded JSON body as received (API key redacted), kept for saving next to
    the generation; it is left out of :meth:`to_dict`, equality and ``repr``.
    """

    text: str
    finish_reason: str | None
    native_finish_reason: str | None
    truncated: bool
    usage: Usage
    provider: str | None
    generation_id: str | None
    served_model: str | None
    raw_body: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Metadata for ``metadata.json`` (everything but the text and the raw body)."""
        return {
            "finish_reason": self.finish_reason,
            "native_finish_reason": self.native_finish_reason,
            "truncated": self.truncated,
            "usage": self.usage.to_dict(),
            "provider": self.provider,
            "generation_id": self.generation_id,
            "served_model": self.served_model,
        }


class CallFailure(DaydreamError):
    """One attempt (or, from :func:`call_with_retries`, the last of several) failed.

    Attributes:
        kind: the classification that decides retrying.
        message: human-readable cause; never contains the API key.
        status: the HTTP status, or the error code of an error object inside a 200 body.
        retry_after: seconds the server asked to wait, if it said.
        reply: the reply when content arrived and was paid for (e.g. a content-filtered reply).
        attempts: how many attempts were made in total (set by :func:`call_with_retries`).
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        reply: Reply | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.reply = reply
        self.attempts = attempts

    def __repr__(self) -> str:
        return (
            f"CallFailure(kind={self.kind.value!r}, status={self.status!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r}, attempts={self.attempts!r})"
        )


def ensure_not_truncated(reply: Reply) -> Reply:
    """Return ``reply`` unless it was cut at ``max_tokens``; then raise a ``truncated`` failure."""
    if reply.truncated:
        raise CallFailure(
            FailureKind.TRUNCATED,
            f"reply truncated at the token limit (finish_reason={reply.finish_reason!r})",
            reply=reply,
        )
    return reply


@runtime_checkable
class Provider(Protocol):
    """Something that answers a prompt. ``complete`` makes exactly one attempt."""

    async def complete(self, request: LlmRequest) -> Reply:
        """Return a validated reply or raise :class:`CallFailure`; never retries."""
        ...


# --------------------------------------------------------------------------------------------
# Small tolerant readers for JSON values


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _content_text(content: object) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, Mapping)]
        return "".join(part for part in parts if isinstance(part, str))
    return ""


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_MESSAGE else text[: _MAX_ERROR_MESSAGE - 1] + "…"


# --------------------------------------------------------------------------------------------
# Secret scrubbing


@dataclass(frozen=True, slots=True)
class _Scrubber:
    secret: str | None = field(repr=False)

    def text(self, value: str) -> str:
        if self.secret and len(self.secret) >= _MIN_SECRET_LENGTH and self.secret in value:
            return value.replace(self.secret, REDACTED)
        return value

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.json(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.json(item) for item in value]
        return value


# --------------------------------------------------------------------------------------------
# The HTTP client


def _error_code(error: Mapping[str, Any]) -> int | None:
    code = error.get("code")
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)
    return _as_int(code)


def _error_text(error: object) -> str:
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        return json.dumps(error, default=str)
    return str(error)


def _body_error_message(raw: bytes) -> str:
    """The ``error.message`` of an error response, or the body itself when it is not JSON.

    Never cut here: the text is scrubbed of the key before it is shortened, so that a key
    straddling the cut cannot leak half-redacted.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace") or "(empty body)"
    if isinstance(body, Mapping) and "error" in body:
        return _error_text(body["error"])
    return raw.decode("utf-8", "replace")


class OpenAiCompatibleClient:
    """``POST {base_url}/chat/completions`` against OpenRouter, OpenAI or anything compatible.

    Args:
        session: a shared ``aiohttp.ClientSession`` (the caller owns and closes it).
        base_url: e.g. ``https://openrouter.ai/api/v1``.
        api_key: sent as ``Authorization: Bearer``; omitted when ``None``.
        timeout_s: total time for one attempt, connecting and reading the whole body included.
        app_headers: extra headers, e.g. OpenRouter's ``HTTP-Referer`` and ``X-Title``.
        include_usage: send OpenRouter's ``usage: {"include": true}`` to get cost in the reply
            (turn off for servers that reject unknown parameters).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        app_headers: Mapping[str, str] | None = None,
        *,
        include_usage: bool = True,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._include_usage = include_usage
        self._scrub = _Scrubber(api_key or None)
        headers = dict(app_headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers

    def __repr__(self) -> str:
        return f"OpenAiCompatibleClient(url={self._url!r}, timeout_s={self._timeout_s!r})"

    def _payload(self, request: LlmRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if self._include_usage:
            payload["usage"] = {"include": True}
        return payload

    def _failure(self, kind: FailureKind, message: str, **details: Any) -> CallFailure:
        """Scrub first, shorten second: cutting first could leave a partial key behind."""
        return CallFailure(kind, _shorten(self._scrub.text(message)), **details)

    async def complete(self, request: LlmRequest) -> Reply:
        """Make one attempt; see the module docstring for how answers are classified."""
        try:
            async with self._session.post(
                self._url, json=self._payload(request), headers=self._headers, timeout=self._timeout
            ) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except TimeoutError:
            raise self._failure(FailureKind.TRANSIENT, f"timed out after {self._timeout_s:g}s") from None
        except aiohttp.InvalidURL as exc:
            raise self._failure(FailureKind.INVALID_REQUEST, f"invalid URL: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failure(FailureKind.TRANSIENT, f"{type(exc).__name__}: {exc}") from None
        return self._interpret(request, status, headers, raw)

    def _interpret(self, request: LlmRequest, status: int, headers: Mapping[str, str], raw: bytes) -> Reply:
        retry_after = parse_retry_after(headers, time.time())
        if not 200 <= status < 300:
            kind = classify_status(status, headers, None) or FailureKind.TRANSIENT
            message = f"HTTP {status}: {_body_error_message(raw)}"
            raise self._failure(kind, message, status=status, retry_after=retry_after)
        body = self._decode(raw, status)
        error = body.get("error")
        if error:
            raise self._error_object_failure(error, status, headers, retry_after, reply=None)
        return self._validate(request, body, status, headers, retry_after)

    def _decode(self, raw: bytes, status: int) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            preview = self._scrub.text(raw.decode("utf-8", "replace"))[:80]
            raise self._failure(
                FailureKind.TRANSIENT, f"undecodable JSON body ({len(raw)} bytes): {preview!r}", status=status
            ) from None
        if not isinstance(body, dict):
            raise self._failure(FailureKind.TRANSIENT, "JSON body is not an object", status=status)
        return body

    def _error_object_failure(
        self,
        error: object,
        status: int,
        headers: Mapping[str, str],
        retry_after: float | None,
        reply: Reply | None,
    ) -> CallFailure:
        code = _error_code(error) if isinstance(error, Mapping) else None
        kind = classify_status(status, headers, code if code is not None else 0) or FailureKind.TRANSIENT
        message = f"provider error {code if code is not None else '?'}: {_error_text(error)}"
        return self._failure(
            kind, message, status=code if code is not None else status, retry_after=retry_after, reply=reply
        )

    def _validate(
        self,
        request: LlmRequest,
        body: dict[str, Any],
        status: int,
        headers: Mapping[str, str],
        retry_after: float | None,
    ) -> Reply:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise self._failure(
                FailureKind.TRANSIENT, "reply has no choices (model warming up?)", status=status
            )
        choice = choices[0]
        reply = self._reply(request, body, choice)
        if choice.get("error"):
            raise self._error_object_failure(choice["error"], status, headers, retry_after, reply=reply)
        if reply.finish_reason == "content_filter":
            raise self._failure(
                FailureKind.CONTENT_FILTER, "reply stopped by a content filter", status=status, reply=reply
            )
        if not reply.text.strip() and not reply.truncated:
            raise self._failure(
                FailureKind.EMPTY,
                f"reply content is empty (finish_reason={reply.finish_reason!r})",
                status=status,
                reply=reply,
            )
        return reply

    def _reply(self, request: LlmRequest, body: dict[str, Any], choice: Mapping[str, Any]) -> Reply:
        message = choice.get("message")
        text = _content_text(message.get("content") if isinstance(message, Mapping) else None)
        usage = Usage.from_body(body.get("usage"))
        finish_reason = _as_str(choice.get("finish_reason"))
        native = _as_str(choice.get("native_finish_reason"))
        return Reply(
            text=self._scrub.text(text),
            finish_reason=finish_reason,
            native_finish_reason=native,
            truncated=_is_truncated(finish_reason, usage, request.max_tokens),
            usage=usage,
            provider=_as_str(body.get("provider")),
            generation_id=_as_str(body.get("id")),
            served_model=_as_str(body.get("model")),
            raw_body=self._scrub.json(body),
        )


def _is_truncated(finish_reason: str | None, usage: Usage, max_tokens: int) -> bool:
    if finish_reason == "length":
        return True
    return usage.completion_tokens is not None and 0 < max_tokens <= usage.completion_tokens


# --------------------------------------------------------------------------------------------
# Offline providers


def _offline_reply(request: LlmRequest, text: str, provider: str) -> Reply:
    """A reply as a server would send it: estimated usage, cut at ``max_tokens`` like a model."""
    completion_tokens = _estimate_tokens(text)
    truncated = 0 < request.max_tokens <= completion_tokens
    if truncated:
        text = text[: request.max_tokens * _CHARS_PER_TOKEN]
        completion_tokens = request.max_tokens
    prompt_tokens = _estimate_tokens(request.prompt)
    digest = hashlib.sha256(f"{request.model}\0{request.prompt}".encode()).hexdigest()[:16]
    finish = "length" if truncated else "stop"
    reply = Reply(
        text=text,
        finish_reason=finish,
        native_finish_reason=finish,
        truncated=truncated,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            reasoning_tokens=0,
            cost=0.0,
        ),
        provider=provider,
        generation_id=f"{provider}-{digest}",
        served_model=request.model,
    )
    if not text.strip() and not truncated:
        raise CallFailure(FailureKind.EMPTY, "reply content is empty (empty prompt)", reply=reply)
    return reply


class EchoProvider:
    """Answers every prompt with the prompt itself; for dry runs of a whole pipeline, offline."""

    async def complete(self, request: LlmRequest) -> Reply:
        return _offline_reply(request, request.prompt, "echo")


def mock_score(prompt: str) -> int:
    """The score 0..9 :class:`MockProvider` gives an evaluation prompt (stable across runs)."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 10


def _mock_draft(tag: str) -> str:
    return (
        f"Thinking about the concepts in request {tag}.\n"
        "A first idea links them through a shared mechanism.\n"
        '<essay-idea stage="1">\n'
        f"Seed idea {tag}: the concepts reinforce each other in a feedback loop.\n"
        "</essay-idea>\n"
        "Refining the idea with a concrete example.\n"
        '<essay-idea stage="2">\n'
        f"Final idea {tag}: a feedback loop between the concepts that can be tested.\n"
        "</essay-idea>\n"
    )


def _mock_essay(tag: str) -> str:
    return (
        f"Essay {tag} opens by stating the idea plainly and why it matters.\n\n"
        "The second paragraph walks through the mechanism step by step, with an example.\n\n"
        "The third paragraph weighs objections and says how the idea could be tested.\n"
    )


def _mock_evaluation(tag: str, score: int) -> str:
    return (
        f"Evaluation {tag}.\n"
        "The essay is coherent and its central idea is stated clearly.\n"
        "Novelty is moderate; the argument could use more evidence.\n"
        f"SCORE: {score}\n"
    )


def mock_reply_text(prompt: str, stage: str | None) -> str:
    """Deterministic, well-formed reply text for ``stage`` (``draft``, ``essay``, ``evaluation``).

    Any other stage (or ``None``) gets a reply every stage's parser accepts: draft idea blocks,
    essay-like paragraphs, and a final ``SCORE: N`` line.
    """
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    score = mock_score(prompt)
    if stage == "draft":
        return _mock_draft(tag)
    if stage == "essay":
        return _mock_essay(tag)
    if stage == "evaluation":
        return _mock_evaluation(tag, score)
    return f"{_mock_draft(tag)}\n{_mock_essay(tag)}\nSCORE: {score}\n"


class MockProvider:
    """Deterministic, well-formed replies per stage (see :func:`mock_reply_text`), offline."""

    async def complete(self, request: LlmRequest) -> Reply:
        return _offline_reply(request, mock_reply_text(request.prompt, request.stage), "mock")


# --------------------------------------------------------------------------------------------
# The retry loop


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """What one attempt did, handed to ``on_attempt`` right after it finished.

    ``started_at``/``finished_at`` are wall-clock Unix times (for the record); ``duration_s``
    is measured on the monotonic clock. ``outcome`` is ``"ok"`` or a :class:`FailureKind` value.
    ``delay_s`` is the backoff about to be slept before the next attempt, ``None`` when there is
    no next attempt (success, or the failure is final).
    """

    attempt: int
    started_at: float
    finished_at: float
    duration_s: float
    outcome: str
    status: int | None
    message: str | None
    retry_after: float | None
    usage: Usage | None
    delay_s: float | None


AttemptHook = Callable[[AttemptRecord], Awaitable[None] | None]
Sleep = Callable[[float], Awaitable[Any]]


async def _notify(hook: AttemptHook | None, record: AttemptRecord) -> None:
    if hook is None:
        return
    result = hook(record)
    if inspect.isawaitable(result):
        await result


def _failure_record(
    failure: CallFailure, attempt: int, started: tuple[float, float], delay: float | None
) -> AttemptRecord:
    wall, mono = started
    return AttemptRecord(
        attempt=attempt,
        started_at=wall,
        finished_at=time.time(),
        duration_s=time.monotonic() - mono,
        outcome=failure.kind.value,
        status=failure.status,
        message=failure.message,
        retry_after=failure.retry_after,
        usage=failure.reply.usage if failure.reply is not None else None,
        delay_s=delay,
    )


def _success_record(reply: Reply, attempt: int, started: tuple[float, float]) -> AttemptRecord:
    wall, mono = started
    return AttemptRecord(
        attempt=attempt,
        started_at=wall,
        finished_at=time.time(),
        duration_s=time.monotonic() - mono,
        outcome="ok",
        status=None,
        message=None,
        retry_after=None,
        usage=reply.usage,
        delay_s=None,
    )


async def call_with_retries(
    provider: Provider,
    request: LlmRequest,
    policy: RetryPolicy,
    *,
    rng: random.Random,
    sleep: Sleep = anyio.sleep,
    on_attempt: AttemptHook | None = None,
) -> tuple[Reply, int]:
    """Call ``provider.complete`` until it succeeds or the policy gives up.

    Attempts are budgeted per failure kind: a call may meet ``rate_limit_tries`` rate limits
    *and* ``transient_tries`` transient faults, so a burst of 429s does not use up the budget for
    real server errors (and vice versa); every other kind fails at once. The backoff for the
    n-th failure of a kind is :func:`~daydreamd.core.retry.backoff_delay` with ``attempt=n``.

    ``on_attempt`` (sync or async) sees every attempt, before the backoff sleep.

    Returns:
        The reply (possibly ``truncated``) and the number of attempts made.

    Raises:
        CallFailure: the last failure, with ``attempts`` set to the number of attempts made.
    """
    failures_by_kind: dict[FailureKind, int] = {}
    attempt = 0
    while True:
        attempt += 1
        started = (time.time(), time.monotonic())
        try:
            reply = await provider.complete(request)
        except CallFailure as failure:
            failure.attempts = attempt
            count = failures_by_kind.get(failure.kind, 0) + 1
            failures_by_kind[failure.kind] = count
            delay = None
            if count < max_tries(failure.kind, policy):
                delay = backoff_delay(failure.kind, count, policy, retry_after=failure.retry_after, rng=rng)
            await _notify(on_attempt, _failure_record(failure, attempt, started, delay))
            if delay is None:
                raise
            await sleep(delay)
            continue
        await _notify(on_attempt, _success_record(reply, attempt, started))
        return reply, attempt


# --------------------------------------------------------------------------------------------
# The API key


def _dotenv_value(line: str, name: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if stripped.startswith("export "):
        stripped = stripped[len("export ") :].lstrip()
    key, sep, value = stripped.partition("=")
    if not sep or key.strip() != name:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value.split(" #", 1)[0].rstrip()


def read_api_key(env_name: str, env: Mapping[str, str], dotenv_path: Path | None) -> str | None:
    """The API key from ``env[env_name]``, else from a ``.env`` file; ``None`` when neither has it.

    The ``.env`` format is simple ``KEY=VALUE`` lines (optional ``export``, matching quotes
    stripped, ``#`` comments ignored); the last assignment wins, like in a shell. A missing file
    is not an error. Blank values count as absent.
    """
    value = (env.get(env_name) or "").strip()
    if value:
        return value
    if dotenv_path is None:
        return None
    try:
        lines = dotenv_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    found = None
    for line in lines:
        candidate = _dotenv_value(line, env_name)
        if candidate is not None:
            found = candidate
    if found is None or not found.strip():
        return None
    return found.strip()
