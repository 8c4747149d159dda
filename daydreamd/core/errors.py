"""Typed errors for daydreamd (pure layer).

Every error a user can see derives from :class:`DaydreamError` and carries the context
(file, id, setting) needed to act on it. Bad experiment input is *not* reported by raising:
the core returns :class:`daydreamd.core.problems.Problem` values instead, so one run can list
every problem at once. Exceptions are for things a caller must handle now.
"""

from __future__ import annotations


class DaydreamError(Exception):
    """Base class of every error daydreamd raises on purpose."""


class ConfigError(DaydreamError):
    """The config file (or an environment override) is unreadable or has a bad value.

    Args:
        message: what is wrong and how to fix it.
        path: the config file, when there is one.
        key: the dotted key at fault, e.g. ``experiment.k_max``.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.key = key


class CohortError(DaydreamError):
    """Writing or recording a cohort failed in a way the user must resolve (e.g. an id collision)."""


class TemplateError(DaydreamError):
    """A template failed to render (undefined variable, sandbox violation, runtime error)."""

    def __init__(self, message: str, *, template_id: str | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.template_id = template_id
        self.stage = stage


class TemplateLimitError(TemplateError):
    """A render went past a ``[render]`` limit (time, size, memory): the template would fail on
    every input like this one, so ``validate`` reports it as an error, not a warning."""


class ParseError(DaydreamError):
    """A parser could not extract what it is for from a reply.

    Args:
        message: what was expected and not found.
        parser: the parser's registered name.
        stage: the stage the parser belongs to.
        kind: why, in one word: ``no_verdict``, ``conflict``, ``out_of_range`` or ``unparseable``.
        candidates: for a judge's reply, the lines that offered a score, described.
    """

    def __init__(
        self,
        message: str,
        *,
        parser: str | None = None,
        stage: str | None = None,
        kind: str = "unparseable",
        candidates: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.parser = parser
        self.stage = stage
        self.kind = kind
        self.candidates = candidates
