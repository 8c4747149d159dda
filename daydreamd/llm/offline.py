"""Providers that answer without a network: ``mock`` (canned replies per stage) and ``echo``.

They let a whole pipeline run offline and deterministically (dry runs, tests, benchmarks). Their
replies look like a server's: usage estimated at about 4 characters a token
(:data:`~daydreamd.core.tokens.CHARS_PER_TOKEN`), cut at ``max_tokens`` like a model, and checked
like any reply (:mod:`daydreamd.llm.checks`).
"""

from __future__ import annotations

import hashlib
import math

from daydreamd.core.tokens import CHARS_PER_TOKEN
from daydreamd.llm.checks import attempt_problem
from daydreamd.llm.types import CallFailure, LlmRequest, Reply, Usage


def _reply_tokens(text: str) -> int:
    """Rounded up (zero for no text), as the usage of offline replies has always been reported."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _offline_reply(request: LlmRequest, text: str, provider: str) -> Reply:
    """A reply as a server would send it: estimated usage, cut at ``max_tokens`` like a model."""
    completion_tokens = _reply_tokens(text)
    truncated = 0 < request.max_tokens <= completion_tokens
    if truncated:
        text = text[: request.max_tokens * CHARS_PER_TOKEN]
        completion_tokens = request.max_tokens
    prompt_tokens = _reply_tokens(request.prompt)
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
    problem = attempt_problem(reply)
    if problem is not None:
        raise CallFailure(*problem, reply=reply)
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
