"""The one definition of a reply no stage can use: stopped by a content filter, or blank.

Providers apply it to every reply inside the attempt (:func:`attempt_problem`), so such a reply
is a :class:`~daydreamd.llm.types.CallFailure` that the retry policy sees. The runner applies the
same rules (:func:`content_problem`) to a reply saved by an earlier run before it re-parses it,
because a saved reply comes from disk, not from a call. Stage rules (truncation policy, minimum
lines) are not here: they belong to the stage settings the runner holds.
"""

from __future__ import annotations

from daydreamd.core.retry import FailureKind
from daydreamd.llm.types import Reply


def content_problem(text: str, finish_reason: str | None) -> tuple[FailureKind, str] | None:
    """Why a reply's content is unusable at every stage, or ``None`` when it is not."""
    if finish_reason == "content_filter":
        return FailureKind.CONTENT_FILTER, "reply stopped by a content filter"
    if not text.strip():
        return FailureKind.EMPTY, f"reply content is empty (finish_reason={finish_reason!r})"
    return None


def attempt_problem(reply: Reply) -> tuple[FailureKind, str] | None:
    """:func:`content_problem` as an attempt sees it: a blank reply cut at ``max_tokens`` passes.

    Such an attempt was answered (the server spent the whole budget, e.g. on reasoning), so it
    counts as an answered attempt; the runner then fails the generation as empty.
    """
    problem = content_problem(reply.text, reply.finish_reason)
    if problem is not None and problem[0] is FailureKind.EMPTY and reply.truncated:
        return None
    return problem
