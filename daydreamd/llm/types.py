"""What the LLM layer speaks: a request, a reply, a failed attempt, and the Provider protocol.

Kept apart from any one provider so that the retry loop, the daemon and every provider share the
same vocabulary without importing an HTTP client. A provider makes exactly one attempt per
:meth:`Provider.complete` and either returns a checked :class:`Reply` or raises
:class:`CallFailure` with a :class:`~daydreamd.core.retry.FailureKind`; retrying is the job of
:func:`daydreamd.llm.calls.call_with_retries`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from daydreamd.core.config import LlmSettings
from daydreamd.core.errors import DaydreamError
from daydreamd.core.retry import FailureKind

if TYPE_CHECKING:
    import aiohttp


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A model's answer to one attempt; ``truncated`` when it was cut at ``max_tokens``."""

    text: str
    finish_reason: str | None
    native_finish_reason: str | None
    truncated: bool
    usage: Usage
    provider: str | None
    generation_id: str | None
    served_model: str | None

    def to_dict(self) -> dict[str, Any]:
        """Metadata for ``metadata.json`` (everything but the text)."""
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


@runtime_checkable
class Provider(Protocol):
    """Something that answers a prompt. ``complete`` makes exactly one attempt."""

    async def complete(self, request: LlmRequest) -> Reply:
        """Return a checked reply (:mod:`daydreamd.llm.checks`) or raise :class:`CallFailure`; never retry."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderContext:
    """What a provider factory gets (see :mod:`daydreamd.llm.registry`)."""

    llm: LlmSettings
    env: Mapping[str, str]
    """The environment, for the API key (and ``$CREDENTIALS_DIRECTORY``, where systemd puts it)."""
    config_dir: Path | None
    """The config file's folder, where a ``.env`` may hold the API key."""
    session: aiohttp.ClientSession | None
    """A shared HTTP session for online providers (the caller owns and closes it)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers for every request (an endpoint's ``headers``)."""
    section: str = "llm"
    """Where these settings come from in the config (``llm`` or ``endpoints.<name>``), for errors."""
