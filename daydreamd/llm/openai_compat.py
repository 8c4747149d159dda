"""One attempt at ``POST /chat/completions`` on OpenRouter, OpenAI or anything compatible.

The only module that speaks HTTP to a model. A reply is checked *inside* the attempt (an error
object in a 200 body, no choices, then :mod:`daydreamd.llm.checks`), because OpenAI-compatible
gateways such as OpenRouter report many upstream failures with status 200.

The API key never leaves this module: everything taken from a server's answer passes through
:class:`~daydreamd.llm.apikey.Scrubber` before anything else sees it, which replaces the key and
any long piece of it (a masked key) by ``[redacted]``: the reply text and every field of the reply
that is kept (``id``, ``model``, ``provider``, ``finish_reason``, ``native_finish_reason``; usage is
numbers only), and every failure message (built from error bodies, error objects and exceptions).
No response header is kept but ``Retry-After``, read as a number. So ``metadata.json``, the run
state, the log, the API and the reports only ever see scrubbed text.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from daydreamd.core.errors import ConfigError
from daydreamd.core.retry import FailureKind, classify_status, parse_retry_after
from daydreamd.llm.apikey import CREDENTIALS_DIRECTORY, Scrubber, api_key_for
from daydreamd.llm.checks import attempt_problem
from daydreamd.llm.types import CallFailure, LlmRequest, ProviderContext, Reply, Usage

_MAX_ERROR_MESSAGE = 500
APP_HEADERS = {"HTTP-Referer": "https://github.com/daydreamd", "X-Title": "daydreamd"}
"""OpenRouter's app attribution headers, sent to OpenRouter only."""


def connect(context: ProviderContext, *, openrouter: bool) -> OpenAiCompatibleClient:
    """The client for kind ``openrouter`` or ``openai``, with its API key (none when ``api_key_env``
    is empty: a local server).

    Raises:
        ConfigError: no API key (no systemd credential, environment variable or ``.env`` line
            named ``api_key_env``), a ``.env`` others may read, or no HTTP session to send
            requests with.
    """
    llm = context.llm
    key = api_key_for(llm, context.env, context.config_dir) if llm.api_key_env else None
    if key is None and llm.api_key_env:
        where = f" or in {context.config_dir / '.env'}" if context.config_dir else ""
        credential = ""
        if context.env.get(CREDENTIALS_DIRECTORY):
            credential = f"give the credential {llm.api_key_env} (LoadCredential=), or "
        offline = (
            'use provider "mock" to run offline'
            if context.section == "llm"
            else 'set api_key_env = "" for a server that takes none'
        )
        raise ConfigError(
            f"no API key: {credential}set the environment variable {llm.api_key_env}{where}, or {offline}",
            key=f"{context.section}.api_key_env",
        )
    if context.session is None:
        raise ConfigError("an online provider needs an HTTP session", key=f"{context.section}.provider")
    return OpenAiCompatibleClient(
        context.session,
        llm.base_url,
        key,
        llm.timeout_s,
        {**(APP_HEADERS if openrouter else {}), **dict(context.headers)},
        include_usage=openrouter,
    )


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


def _usage(usage: object) -> Usage:
    """Read an OpenAI/OpenRouter ``usage`` object, ignoring anything malformed."""
    if not isinstance(usage, Mapping):
        return Usage()
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        completion_tokens=_as_int(usage.get("completion_tokens")),
        total_tokens=_as_int(usage.get("total_tokens")),
        reasoning_tokens=_as_int(reasoning),
        cost=_as_float(usage.get("cost")),
    )


def _content_text(content: object) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, Mapping)]
        return "".join(part for part in parts if isinstance(part, str))
    return ""


def _is_truncated(finish_reason: str | None, usage: Usage, max_tokens: int) -> bool:
    if finish_reason == "length":
        return True
    return usage.completion_tokens is not None and 0 < max_tokens <= usage.completion_tokens


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_MESSAGE else text[: _MAX_ERROR_MESSAGE - 1] + "…"


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


# --------------------------------------------------------------------------------------------
# The HTTP client


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
        self._scrub = Scrubber(api_key or None)
        headers = dict(app_headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers

    def __repr__(self) -> str:
        return f"OpenAiCompatibleClient(url={self._url!r}, timeout_s={self._timeout_s!r})"

    @property
    def base_url(self) -> str:
        """The server's URL, without ``/chat/completions``."""
        return self._url.removesuffix("/chat/completions")

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    @property
    def headers(self) -> Mapping[str, str]:
        """What every request carries (the key's ``Authorization`` included): for the Batch API's calls."""
        return self._headers

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        return self._timeout

    def scrub(self, text: str) -> str:
        """``text`` without the key (or a long piece of it), as every message this client makes."""
        return self._scrub.text(text)

    def payload(self, request: LlmRequest) -> dict[str, Any]:
        """The body of ``POST /chat/completions`` for ``request`` (a batch's request lines carry it too)."""
        return self._payload(request)

    def answer(self, request: LlmRequest, status: int, body: bytes) -> Reply:
        """Read an answer to ``request`` that came some other way (a batch's output line) exactly as
        an online one: the same checks, failure kinds and scrubbing.

        Raises:
            CallFailure: as :meth:`complete` does for that answer.
        """
        return self._interpret(request, status, {}, body)

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
        problem = attempt_problem(reply)
        if problem is not None:
            raise self._failure(*problem, status=status, reply=reply)
        return reply

    def _reply(self, request: LlmRequest, body: dict[str, Any], choice: Mapping[str, Any]) -> Reply:
        """The reply with every text in it scrubbed (usage holds numbers only)."""
        scrub = self._scrub.optional
        message = choice.get("message")
        text = _content_text(message.get("content") if isinstance(message, Mapping) else None)
        usage = _usage(body.get("usage"))
        finish_reason = _as_str(choice.get("finish_reason"))
        return Reply(
            text=self._scrub.text(text),
            finish_reason=scrub(finish_reason),
            native_finish_reason=scrub(_as_str(choice.get("native_finish_reason"))),
            truncated=_is_truncated(finish_reason, usage, request.max_tokens),
            usage=usage,
            provider=scrub(_as_str(body.get("provider"))),
            generation_id=scrub(_as_str(body.get("id"))),
            served_model=scrub(_as_str(body.get("model"))),
        )
