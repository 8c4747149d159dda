"""Reading a judge's final verdict from its reply (pure): the ``complex`` and ``in_last_line`` parsers.

Judges, especially reasoning models, write many numbers before the one that counts: scratch sums
("Total score: 4 + 4 = 8"), second thoughts ("7? Or maybe 6?"), section subtotals ("Total
Connections Score: 4/5"), breakdowns after the verdict. One algorithm reads what a careful human
reads, and says why (:class:`Verdict` keeps the line, the text and what was set aside).

``complex`` (whole reply):

1. **Set aside reasoning.** Lines inside ``<think>``, ``<thinking>`` or ``<reasoning>`` blocks are
   deliberation. (An unclosed block runs to the end; when nothing is left outside, its own
   candidates are read as a last resort.)
2. **Find candidates**, each line at most one, classified:

   - ``verdict``: the line starts with the template's verdict label (``SCORE: 8``,
     ``**SCORE: 8/10**``, ``SCORE - 7``), or the label stands alone with the value on the next line;
   - ``final``: ``Final/Overall score: 7``, ``Total score: 7`` (no section name between the words);
   - ``prose``: a fraction on the template's own scale near the end (``a **7/10 score**``,
     ``7 out of 10``), or a bare number alone on the last line;
   - set aside: hedged or arithmetic lines (``?``, "maybe", "would be", ``4 + 4 = 8``), section
     subtotals (``Total Connections Score: 4/5``, ``Novelty score: 3``), fractions on another
     denominator (``Core Concepts (4/5)``), ranges (``8-9``).

3. **Decide.** The last ``verdict`` wins; without one, the last ``final``; without one, the last
   ``prose``. Earlier candidates are superseded (the deliberation came first). A ``final`` line
   *after* the winning ``verdict`` that says otherwise leaves the reply ambiguous: a
   :class:`~daydreamd.core.errors.ParseError` of kind ``conflict`` listing both, never a guess;
   so do two different ``verdict`` lines one right after the other (two answers, not a revision).
4. **Scale.** ``8/10`` is 8 on a 0-10 template and ``7/9`` is 7 on a 0-9 one: values are never
   rescaled, and a fraction on another denominator (``SCORE: 4/5`` on 0-10) is not this
   template's score. A value outside the template's scale is an ``out_of_range`` error.

``in_last_line`` (strict-format judges): the same classification on the last 3 non-empty lines
outside reasoning blocks; the bottom-most ``verdict`` or ``final`` line wins. Three digits
(``456``, ``4, 5, 6``) mean their average, as the legacy format had it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from daydreamd.core.errors import ParseError
from daydreamd.core.scales import Scale

DEFAULT_LABEL = "SCORE"
TAIL_LINES = 3
PROSE_TAIL_LINES = 3
"""How close to the end a prose verdict ("... a 7/10 score.") must be to count."""
_SHOWN_CANDIDATES = 5

_REASONING_OPEN_RE = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_HEADING_MARK_RE = re.compile(r"^\s*(?:#{1,6}\s*|>\s*)+")
_BULLET_RE = re.compile(r"^\s*(?:[-•*+]|\d+[.)])\s+")
_EMPHASIS_RE = re.compile(r"[*_`]+")

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_VALUE_RE = re.compile(
    rf"^\s*(?:(?P<triple>\d\s*,\s*\d\s*,\s*\d)(?![\d.])"
    rf"|(?P<digits3>\d{{3}})(?![\d.,/])"
    rf"|(?P<num>{_NUMBER})(?:\s*(?:/|out\s+of)\s*(?P<den>{_NUMBER}))?)"
    rf"(?P<range>\s*(?:-|–|—|to)\s*\d)?",
    re.IGNORECASE,
)
_SEPARATOR = r"\s*(?:[:=]|-|–|—|is)\s*"
_FINAL_WORDS = r"(?:final|overall|total)(?:\s+(?:numeric|numerical))?\s+(?:score|rating|verdict)"
_FINAL_RE = re.compile(rf"^(?:[^:]*[/|]\s*)?(?:the\s+|my\s+)?{_FINAL_WORDS}{_SEPARATOR}", re.IGNORECASE)
_FINAL_ALONE_RE = re.compile(rf"^(?:the\s+|my\s+)?{_FINAL_WORDS}\s*:?\s*$", re.IGNORECASE)
_HEDGE_RE = re.compile(
    r"\?|\b(?:maybe|perhaps|probably|possibly|hmm+|i think|i guess|guess|tentative(?:ly)?|let's|let me)\b"
    r"|^\s*[-+]?\d+(?:\.\d+)?\s*(?:or|and|vs\.?)\s+\d",
    re.IGNORECASE,
)
"""Second thoughts: a question, a doubt, or two values offered (``7 or 8``)."""
_ARITHMETIC_RE = re.compile(r"^\s*[-+]?\d+(?:\.\d+)?(?:\s*/\s*\d+)?\s*[-+*×÷=]\s*\d")
"""Scratch work: the value is the first term of a sum (``4 + 4 = 8``), not a result."""
_FRACTION_RE = re.compile(
    rf"(?<![\d./])(?P<num>{_NUMBER})\s*(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?)(?![\d/])"
)
_BARE_RE = re.compile(rf"^(?P<num>{_NUMBER})\s*\.?$")


class CandidateKind(StrEnum):
    """What a line with a number on it is, for the decision and for provenance."""

    VERDICT = "verdict"
    FINAL = "final"
    PROSE = "prose"
    REASONING = "reasoning"
    HEDGED = "hedged"
    SUBTOTAL = "subtotal"
    OTHER_SCALE = "other scale"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A line that offers a score, what it offers and how it was classified."""

    line: int
    text: str
    value: float | None
    kind: CandidateKind

    def describe(self) -> str:
        value = "?" if self.value is None else f"{self.value:g}"
        return f"line {self.line} ({self.kind}, {value}): {self.text[:100]}"


@dataclass(frozen=True, slots=True)
class VerdictSpec:
    """What a template asks of its judge: the verdict's label and the scale of the score."""

    label: str = DEFAULT_LABEL
    scale: Scale = field(default_factory=Scale)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A score and where it came from: what ``metadata.json``, ``show`` and ``parse --explain`` show."""

    score: float
    line: int
    text: str
    kind: CandidateKind
    set_aside: tuple[Candidate, ...]
    steps: tuple[str, ...]

    def provenance(self) -> dict[str, object]:
        """JSON for metadata.json and the run state: the line, its text, and what was set aside."""
        return {
            "line": self.line,
            "text": self.text[:300],
            "kind": str(self.kind),
            "set_aside": len(self.set_aside),
            "set_aside_first": [c.describe() for c in self.set_aside[:_SHOWN_CANDIDATES]],
        }


# --- lines ---------------------------------------------------------------------------------------


def clean(line: str) -> str:
    """A line without Markdown headings, bullets and emphasis, which judges sprinkle freely."""
    line = _HEADING_MARK_RE.sub("", line)
    line = _BULLET_RE.sub("", line)
    return _EMPHASIS_RE.sub("", line).strip()


def reasoning_mask(lines: Sequence[str]) -> list[bool]:
    """For each line, whether it sits inside a ``<think>``-style block (tag lines included)."""
    mask: list[bool] = []
    closing: re.Pattern[str] | None = None
    for line in lines:
        if closing is None:
            opened = _REASONING_OPEN_RE.search(line)
            if opened is None:
                mask.append(False)
                continue
            closing = re.compile(rf"</{opened.group(1)}>", re.IGNORECASE)
            rest = line[opened.end() :]
            mask.append(True)
            if closing.search(rest):
                closing = None
            continue
        mask.append(True)
        if closing.search(line):
            closing = None
    return mask


# --- values --------------------------------------------------------------------------------------


def _read_value(text: str, scale: Scale) -> tuple[float | None, CandidateKind | None]:
    """The score at the start of ``text``; a kind instead when it is not one (range, other scale)."""
    match = _VALUE_RE.match(text)
    if match is None:
        return None, None
    if match.group("triple") is not None:
        return sum(int(ch) for ch in match.group("triple") if ch.isdigit()) / 3, None
    if match.group("digits3") is not None:
        return sum(int(ch) for ch in match.group("digits3")) / 3, None
    if match.group("range"):
        return None, CandidateKind.HEDGED
    value = float(match.group("num"))
    denominator = match.group("den")
    if denominator is not None and float(denominator) != scale.maximum:
        return value, CandidateKind.OTHER_SCALE
    return value, None


def _label_re(label: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:the\s+|my\s+)?{re.escape(label)}{_SEPARATOR}", re.IGNORECASE)


def _label_alone_re(label: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:the\s+|my\s+)?{re.escape(label)}\s*:?\s*$", re.IGNORECASE)


# --- classification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reader:
    spec: VerdictSpec
    label: re.Pattern[str]
    label_alone: re.Pattern[str]

    @classmethod
    def of(cls, spec: VerdictSpec) -> _Reader:
        return cls(spec, _label_re(spec.label), _label_alone_re(spec.label))

    def classify(self, lines: Sequence[str], index: int, *, at_end: bool) -> Candidate | None:
        """The candidate on ``lines[index]`` (cleaned), or None when the line offers no score."""
        text = lines[index]
        for pattern, kind in ((self.label, CandidateKind.VERDICT), (_FINAL_RE, CandidateKind.FINAL)):
            match = pattern.match(text)
            rest = _INNER_LABEL_RE.sub("", text[match.end() :]) if match is not None else ""
            if match is not None and rest.strip():
                return self._labelled(index, text, rest, kind)
        for pattern, kind in (
            (self.label_alone, CandidateKind.VERDICT),
            (_FINAL_ALONE_RE, CandidateKind.FINAL),
        ):
            if pattern.match(text) and index + 1 < len(lines):
                following = lines[index + 1]
                if _BARE_RE.match(following) or _VALUE_RE.match(following):
                    return self._labelled(index, f"{text} {following}", following, kind)
        return self._unlabelled(index, text, at_end=at_end)

    def _labelled(self, index: int, text: str, rest: str, kind: CandidateKind) -> Candidate:
        value, demoted = _read_value(rest, self.spec.scale)
        if demoted is None and value is None:
            demoted = CandidateKind.HEDGED
        if demoted is None and (_HEDGE_RE.search(rest) or _ARITHMETIC_RE.match(rest)):
            demoted = CandidateKind.HEDGED
        return Candidate(index + 1, text, value, demoted or kind)

    def _unlabelled(self, index: int, text: str, *, at_end: bool) -> Candidate | None:
        if text.startswith("|"):
            cells = [c.strip() for c in text.strip("|").split("|")]
            has_number = any(re.search(r"\d", c) for c in cells[1:])
            return Candidate(index + 1, text, None, CandidateKind.SUBTOTAL) if has_number else None
        fractions = list(_FRACTION_RE.finditer(text))
        if fractions:
            last = fractions[-1]
            value = float(last.group("num"))
            if float(last.group("den")) != self.spec.scale.maximum:
                return Candidate(index + 1, text, value, CandidateKind.OTHER_SCALE)
            if _looks_like_subtotal(text):
                return Candidate(index + 1, text, value, CandidateKind.SUBTOTAL)
            if _HEDGE_RE.search(text) or not at_end:
                return Candidate(index + 1, text, value, CandidateKind.HEDGED)
            return Candidate(index + 1, text, value, CandidateKind.PROSE)
        bare = _BARE_RE.match(text)
        if bare is not None and at_end:
            return Candidate(index + 1, text, float(bare.group("num")), CandidateKind.PROSE)
        if _SUBTOTAL_RE.search(text):
            return Candidate(index + 1, text, None, CandidateKind.SUBTOTAL)
        return None


_INNER_LABEL_RE = re.compile(r"^\s*(?:score|rating)\s*[:=]\s*", re.IGNORECASE)
"""``Final Verdict — Score: 7/10``: a second label after the first one's separator."""

_SUBTOTAL_RE = re.compile(r"\b(?:score|subtotal|points?)\s*[:=(]\s*\d", re.IGNORECASE)


def _looks_like_subtotal(text: str) -> bool:
    """``Novelty: 7/10`` or ``Total Connections Score: 7/10`` name a part, not the whole."""
    head = text.split(":", 1)[0] if ":" in text else ""
    if not head:
        return False
    return not re.fullmatch(rf"\s*(?:{_FINAL_WORDS}|score|verdict|rating)\s*", head, re.IGNORECASE)


# --- the decision --------------------------------------------------------------------------------

_PRIORITY: tuple[CandidateKind, ...] = (CandidateKind.VERDICT, CandidateKind.FINAL, CandidateKind.PROSE)
_RIVALS: dict[CandidateKind, tuple[CandidateKind, ...]] = {CandidateKind.VERDICT: (CandidateKind.FINAL,)}
"""Kinds that, said later and differently, leave the chosen verdict in doubt. A prose remark after
a verdict line does not: the line in the format the template asked for decides."""


def _fail(message: str, parser: str, kind: str, candidates: Sequence[Candidate] = ()) -> ParseError:
    shown = "; ".join(c.describe() for c in candidates[:_SHOWN_CANDIDATES])
    return ParseError(
        message + (f" (candidates: {shown})" if shown else ""),
        parser=parser,
        stage="evaluation",
        kind=kind,
        candidates=tuple(c.describe() for c in candidates),
    )


def _candidates(
    reader: _Reader, lines: Sequence[str], mask: Sequence[bool], indices: Sequence[int]
) -> list[Candidate]:
    """Candidates on ``indices``; lines in reasoning blocks are kept but classified as reasoning."""
    tail = {i for i in indices[-PROSE_TAIL_LINES:] if not mask[i]}
    found: list[Candidate] = []
    for index in indices:
        candidate = reader.classify(lines, index, at_end=index in tail)
        if candidate is None:
            continue
        if mask[index]:
            candidate = Candidate(candidate.line, candidate.text, candidate.value, CandidateKind.REASONING)
        found.append(candidate)
    return found


def decide(candidates: Sequence[Candidate], spec: VerdictSpec, parser: str) -> Verdict:
    """Pick the verdict among classified candidates (rules 3 and 4 of the module docstring)."""
    steps: list[str] = []
    chosen: Candidate | None = None
    for kind in _PRIORITY:
        of_kind = [c for c in candidates if c.kind is kind and c.value is not None]
        if of_kind:
            chosen = of_kind[-1]
            steps.append(
                f"{len(of_kind)} {kind} line(s); the last is line {chosen.line}: {chosen.text[:100]}"
            )
            break
        steps.append(f"no {kind} line")
    if chosen is None or chosen.value is None:
        raise _fail("no verdict found in the reply", parser, "no_verdict", candidates)
    later = [
        c
        for c in candidates
        if c.line > chosen.line
        and c.kind in _RIVALS.get(chosen.kind, ())
        and c.value is not None
        and c.value != chosen.value
    ]
    later += _back_to_back(candidates, chosen)
    if later:
        raise _fail(
            f"line {chosen.line} says {chosen.value:g} but later lines say otherwise",
            parser,
            "conflict",
            [chosen, *later],
        )
    if not spec.scale.contains(chosen.value):
        raise _fail(
            f"line {chosen.line}: score {chosen.value:g} is outside the template's scale {spec.scale.label}",
            parser,
            "out_of_range",
            [chosen],
        )
    set_aside = tuple(c for c in candidates if c is not chosen)
    steps.append(f"set aside {len(set_aside)} other line(s) with numbers; score {chosen.value:g}")
    return Verdict(chosen.value, chosen.line, chosen.text, chosen.kind, set_aside, tuple(steps))


def _back_to_back(candidates: Sequence[Candidate], chosen: Candidate) -> list[Candidate]:
    """A different verdict right before the chosen one, with no candidate or retraction between.

    ``SCORE: 7`` then ``SCORE: 6`` on the line right after is two answers, not a revision; a
    revision says something in between ("Correction: ...").
    """
    if chosen.kind is not CandidateKind.VERDICT:
        return []
    position = candidates.index(chosen)
    if position == 0:
        return []
    previous = candidates[position - 1]
    adjacent = previous.kind is CandidateKind.VERDICT and previous.line == chosen.line - 1
    return [previous] if adjacent and previous.value != chosen.value else []


def _split(raw: str) -> tuple[list[str], list[bool]]:
    lines = raw.splitlines()
    return [clean(line) for line in lines], reasoning_mask(lines)


def read_complex(raw: str, spec: VerdictSpec) -> Verdict:
    """The verdict of a judge that reasons at length (see the module docstring)."""
    lines, mask = _split(raw)
    answer = [i for i, line in enumerate(lines) if line and not mask[i]]
    reader = _Reader.of(spec)
    steps = [f"{sum(mask)} line(s) inside reasoning blocks set aside"] if any(mask) else []
    candidates = _candidates(reader, lines, mask, [i for i, line in enumerate(lines) if line])
    outside = [c for c in candidates if c.kind is not CandidateKind.REASONING]
    if not any(c.kind in _PRIORITY for c in outside) and not answer:
        steps.append("nothing outside the reasoning block: reading inside it")
        candidates = _candidates(reader, lines, [False] * len(lines), [i for i, ln in enumerate(lines) if ln])
    if not answer and not any(lines):
        raise _fail("no verdict found: the reply has no non-empty line", "complex", "no_verdict")
    verdict = decide(candidates, spec, "complex")
    return replace(verdict, steps=(*steps, *verdict.steps))


def read_last_line(raw: str, spec: VerdictSpec) -> Verdict:
    """The verdict of a strict-format judge: on one of the last 3 non-empty lines outside reasoning."""
    lines, mask = _split(raw)
    answer = [i for i, line in enumerate(lines) if line and not mask[i]]
    tail = answer[-TAIL_LINES:]
    reader = _Reader.of(spec)
    found = [reader.classify(lines, index, at_end=True) for index in tail]
    labelled = [
        c
        for c in found
        if c is not None and c.kind in (CandidateKind.VERDICT, CandidateKind.FINAL) and c.value is not None
    ]
    if labelled:
        chosen = labelled[-1]
        doubt = _back_to_back(labelled, chosen)
        if doubt:
            raise _fail(
                f"line {chosen.line} says {chosen.value:g} right after a verdict line that says otherwise",
                "in_last_line",
                "conflict",
                [*doubt, chosen],
            )
        step = f"line {chosen.line} is the bottom-most labelled score in the last {TAIL_LINES} lines"
        return replace(decide([chosen], spec, "in_last_line"), steps=(step,))
    where = f"last line: {lines[tail[-1]][:80]!r}" if tail else "the reply has no non-empty line"
    raise _fail(
        f"no '{spec.label}: N' line among the last {TAIL_LINES} non-empty lines ({where})",
        "in_last_line",
        "no_verdict",
    )
