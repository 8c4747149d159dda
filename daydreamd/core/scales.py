"""The scale an evaluation template scores on, and where that knowledge came from (pure).

A score means nothing without its scale: a 9 on a 0-9 rubric is perfect, on 0-10 it is not. The
scale comes from ``score_min``/``score_max`` in ``evaluation_templates.csv`` when the row has
them; otherwise it is read from what the template's text tells the judge about the *final* score.

Inference, in order:

1. Find the verdict instruction: the last line that shows the verdict format (``SCORE: X``,
   ``**SCORE:** 0-10``), else the last line that speaks of a "final score".
2. Collect scale statements on lines that speak of a score, scale or digit: ranges that start
   at 0 or 1 and end at 4..10 (``0-9``, ``0 to 9``,
   ``1–10``, ``between 0 and 9``), ``out of N`` and ``on a scale of N``; ranges of *points*
   (``90-100 points``), rubric bands (``1-2: ...``, ``Poor (1-3)``) and sub-ranges
   (``Score: 8-9``) are not scales. A phrase like "a single
   digit" means 0-9 when nothing else is said.
3. The statement nearest the verdict instruction (at most :data:`NEAREST_LINES` lines above it,
   or on the few lines after it) decides. Without a verdict instruction, or with nothing near it,
   a text whose statements all agree decides; a text naming several scales does not, and neither
   does a silent one: both fall back to 0-10 with a warning so ``validate`` can say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_MIN, DEFAULT_MAX = 0.0, 10.0
NEAREST_LINES = 25
"""How far above the verdict instruction a scale statement still belongs to it."""
_AFTER_LINES = 3

_RANGE_RE = re.compile(
    r"(?<![\d.])(?P<lo>[01])\s*(?:-|–|—|to|through)\s*(?P<hi>\d{1,2})(?!\.?\d)(?!\s*(?:points|pts|%|percent))",
    re.IGNORECASE,
)
_BETWEEN_RE = re.compile(r"\bbetween\s+(?P<lo>[01])\s+and\s+(?P<hi>\d{1,2})\b(?!\s*points)", re.IGNORECASE)
_OUT_OF_RE = re.compile(r"\b(?:out\s+of|scale\s+of)\s+(?P<hi>\d{1,2})\b(?!\s*(?:points|%))", re.IGNORECASE)
_DIGIT_RE = re.compile(r"\b(?:single|one|a)\s+digit\b", re.IGNORECASE)
_FINAL_SCORE_RE = re.compile(r"\bfinal\s+score\b", re.IGNORECASE)
_SUBRANGE_CONTEXT_RE = re.compile(
    r"(?:\(\s*score\s*:|\b(?:sections?|steps?|items?|parts?|questions?))\s*$", re.IGNORECASE
)
_CONTEXT_RE = re.compile(r"scor|scale|digit|rate|rating|grade|normali[sz]|convert", re.IGNORECASE)
_BAND_RE = re.compile(r"^\W*\d+\s*(?:-|–|—)\s*\d+\s*\W*:")
MIN_SCALE_TOP = 4
"""A final-score scale ends at 4 or more; ``1-2`` and ``0-3`` are rubric bands."""


class ScaleSource(StrEnum):
    """Where a template's scale came from, for ``validate`` and provenance."""

    CSV = "csv"
    VERDICT_INSTRUCTION = "verdict instruction"
    TEMPLATE_TEXT = "template text"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Scale:
    """A closed score range ``minimum..maximum`` and how it was established."""

    minimum: float = DEFAULT_MIN
    maximum: float = DEFAULT_MAX
    source: ScaleSource = ScaleSource.DEFAULT
    line: int | None = None
    """The template line the scale was read from (1-based), when read from the text."""

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a score on this scale."""
        return self.minimum <= value <= self.maximum

    @property
    def label(self) -> str:
        """``0-9`` style, as tables and messages show it."""
        return f"{self.minimum:g}-{self.maximum:g}"

    def describe(self) -> str:
        """One phrase for ``validate``: the scale and where it came from."""
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.label} from {self.source}{where}"


@dataclass(frozen=True, slots=True)
class ScaleStatement:
    """One place in a template's text that names a scale."""

    line: int
    minimum: float
    maximum: float
    weak: bool = False
    """True for "a single digit": a hint, used only when nothing else is said."""


@dataclass(frozen=True, slots=True)
class InferredScale:
    """A scale read from a template's text, and why the reading may need a human's eye."""

    scale: Scale
    warning: str | None = None


def scale_statements(text: str) -> list[ScaleStatement]:
    """Every scale statement in ``text``, in order."""
    found: list[ScaleStatement] = []
    for number, line in enumerate(text.splitlines(), start=1):
        plain = line.replace("*", "").replace("`", "")
        if not _CONTEXT_RE.search(plain) or _BAND_RE.match(plain):
            continue
        for match in _RANGE_RE.finditer(plain):
            if _SUBRANGE_CONTEXT_RE.search(plain[: match.start()]):
                continue
            _add_range(found, number, match.group("lo"), match.group("hi"))
        for match in _BETWEEN_RE.finditer(plain):
            _add_range(found, number, match.group("lo"), match.group("hi"))
        for match in _OUT_OF_RE.finditer(plain):
            _add_range(found, number, "0", match.group("hi"))
        if _DIGIT_RE.search(plain):
            found.append(ScaleStatement(number, 0.0, 9.0, weak=True))
    return found


def _add_range(found: list[ScaleStatement], line: int, lo: str, hi: str) -> None:
    low, high = float(lo), float(hi)
    if MIN_SCALE_TOP <= high <= 10 and low < high:
        found.append(ScaleStatement(line, low, high))


def verdict_instruction_line(text: str, label: str) -> int | None:
    """The line (1-based) that tells the judge the verdict's format, or the last "final score" line."""
    label_re = re.compile(rf"(?<![A-Za-z]){re.escape(label)}\s*\**\s*[:=]", re.IGNORECASE)
    lines = text.splitlines()
    for number in range(len(lines), 0, -1):
        if label_re.search(lines[number - 1].replace("*", "")):
            return number
    for number in range(len(lines), 0, -1):
        if _FINAL_SCORE_RE.search(lines[number - 1]):
            return number
    return None


def infer_scale(text: str, label: str = "SCORE") -> InferredScale:
    """The final score's scale as ``text`` states it (see the module docstring for the rules)."""
    statements = scale_statements(text)
    strong = [s for s in statements if not s.weak]
    anchor = verdict_instruction_line(text, label)
    if anchor is not None:
        near = _nearest(strong, anchor) or _nearest([s for s in statements if s.weak], anchor)
        if near is not None:
            others = sorted({(s.minimum, s.maximum) for s in strong} - {(near.minimum, near.maximum)})
            warning = None
            if others:
                named = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in others)
                warning = (
                    f"the text also names {named}; read {near.minimum:g}-{near.maximum:g} from line "
                    f"{near.line}, nearest the verdict instruction on line {anchor}"
                )
            scale = Scale(near.minimum, near.maximum, ScaleSource.VERDICT_INSTRUCTION, near.line)
            return InferredScale(scale, warning if others and _far_apart(near, anchor) else None)
    return _from_whole_text(strong or statements)


def _nearest(statements: list[ScaleStatement], anchor: int) -> ScaleStatement | None:
    """The statement closest to the verdict instruction, preferring those above it."""
    window = [s for s in statements if anchor - NEAREST_LINES <= s.line <= anchor + _AFTER_LINES]
    if not window:
        return None
    return min(window, key=lambda s: (abs(anchor - s.line), s.line > anchor))


def _far_apart(statement: ScaleStatement, anchor: int) -> bool:
    """A statement on or right above the instruction is unambiguous; farther away deserves a look."""
    return anchor - statement.line > 3


def _from_whole_text(statements: list[ScaleStatement]) -> InferredScale:
    scales = sorted({(s.minimum, s.maximum) for s in statements})
    if len(scales) == 1:
        first = statements[0]
        return InferredScale(Scale(first.minimum, first.maximum, ScaleSource.TEMPLATE_TEXT, first.line))
    if not scales:
        return InferredScale(
            Scale(),
            "the template states no scale for the final score; using 0-10 "
            "(add score_min and score_max to its row to say so)",
        )
    named = ", ".join(f"{lo:g}-{hi:g} (line {_first_line(statements, lo, hi)})" for lo, hi in scales)
    return InferredScale(
        Scale(),
        f"the template names several scales ({named}) and none sits by a verdict instruction; "
        "using 0-10 (add score_min and score_max to its row to decide)",
    )


def _first_line(statements: list[ScaleStatement], lo: float, hi: float) -> int:
    return next(s.line for s in statements if (s.minimum, s.maximum) == (lo, hi))
