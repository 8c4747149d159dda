"""Reply parsers: turn an LLM's raw reply into the text that goes into ``parsed.txt``.

Templates name a parser in their CSV row (``parser`` column), so parsers are looked up by
``(stage, name)`` in one registry built at import time and never changed afterwards. The module is
pure (stdlib only, no I/O, no logging): the worker and ``daydreamctl parse`` call the same functions,
and a failure is always a :class:`~daydreamd.core.errors.ParseError`, never ``None`` or a guess.

Contracts, per stage:

draft
    ``identity``
        The reply unchanged. The default: an empty ``parser`` cell means ``identity``.
    ``essay_block``
        The text inside the first ``<essay>...</essay>``, stripped of surrounding whitespace. An
        unclosed ``<essay>`` runs to the end of the reply. No ``<essay>`` tag, or only whitespace
        inside it, is an error.
    ``essay_idea_last``
        Among ``<essay-idea ...>`` / ``</essay-idea>`` blocks whose tags sit on their own lines, the
        last block with the highest integer ``stage="N"``; when no block has a stage, the last block.
        Blocks without a stage are ignored as soon as one block has one, and so is a stray closing
        tag. The content is returned verbatim: the lines between the tag lines, with their endings.
        No block, a block not closed before the next opening tag or the end, a non-integer stage, or
        a whitespace-only block is an error naming the line.

essay
    ``identity``
        As for draft.

evaluation (the text is :func:`format_score` of the score; an evaluation template must name one)
    ``in_last_line``
        The score sits on one of the last 3 non-empty lines, searched from the bottom; the first
        line that yields a score wins. Markdown emphasis and headings are ignored. A score is a
        number after the word ``score`` and ``:`` or ``=`` (``SCORE: 7``, ``**Final Score:** 8.5``,
        ``Score = 7``). Three digits (``456``, ``4,5,6``, ``4, 5, 6``) mean their average. Fractions
        (``7/10``) and ranges (``8-9``) are not scores here, nor is a bare number.
    ``complex``
        For legacy judges that reason at length; reads the whole reply. In order of preference:
        the last line labelled final/total/overall score, else the last ``Score:`` line, else a
        fraction on one of the last 3 non-empty lines. A label alone on its line (``### Final Score``,
        ``**Final Score**``) takes its value from the next non-empty line. Values as for
        ``in_last_line``, plus fractions scaled to 10 (``3/5`` -> 6.0; the denominator must be > 0).

Every evaluation score must lie in 0..10.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from daydreamd.core.errors import ParseError

STAGES: tuple[str, ...] = ("draft", "essay", "evaluation")

ReplyParser = Callable[[str], str]
"""Maps a raw reply to the text of ``parsed.txt``."""

Scorer = Callable[[str], float]
"""Maps a raw judge reply to its score in 0..10."""

_IDENTITY_DEFAULT_STAGES = frozenset({"draft", "essay"})
_SCORE_MIN, _SCORE_MAX = 0.0, 10.0
_TAIL_LINES = 3
_SNIPPET_CHARS = 80

# --- regexes (compiled once) -------------------------------------------------------------------

_ESSAY_RE = re.compile(r"<essay>(.*?)(?:</essay>|\Z)", re.DOTALL | re.IGNORECASE)
_IDEA_OPEN_RE = re.compile(r"^\s*<essay-idea(?P<attrs>\s[^>]*)?>\s*$", re.IGNORECASE)
_IDEA_CLOSE_RE = re.compile(r"^\s*</essay-idea>\s*$", re.IGNORECASE)
_STAGE_ATTR_RE = re.compile(r"""\bstage\s*=\s*(?:"([^"]*)"|'([^']*)'|(\S+))""", re.IGNORECASE)

_HEADING_MARK_RE = re.compile(r"^\s*#{1,6}\s*")
_EMPHASIS_RE = re.compile(r"[*_]+")

# A score value. Atomic groups stop backtracking from turning "85-90" into "8" or "8.5/10" into "8".
_VALUE = (
    r"(?:(?P<triple>\d\s*,\s*\d\s*,\s*\d)(?![\d.])"
    r"|(?P<digits3>\d{3})(?![\d.,/])"
    r"|(?P<num>(?>[-+]?\d+(?:\.\d+)?))(?:\s*/\s*(?P<den>(?>[-+]?\d+(?:\.\d+)?)))?(?!\s*[-–]\s*\d))"
)
_LABEL_RE = re.compile(rf"\bscore\s*[:=]\s*{_VALUE}", re.IGNORECASE)
_FINAL_LABEL_RE = re.compile(rf"\b(?:final|total|overall)\s+score\s*[:=]\s*{_VALUE}", re.IGNORECASE)
_HEADING_LABEL_RE = re.compile(
    r"^(?:[-•>]\s+)?(?P<final>(?:final|total|overall)\s+)?score\s*:?$", re.IGNORECASE
)
_BARE_VALUE_RE = re.compile(rf"^{_VALUE}\.?\s*(?:[(—–-].*)?$")
_FRACTION_RE = re.compile(r"(?<![\d./])(?P<num>(?>\d+(?:\.\d+)?))\s*/\s*(?P<den>(?>\d+(?:\.\d+)?))(?![\d/])")


# --- draft and essay parsers ---------------------------------------------------------------------


def _identity(raw: str) -> str:
    """Return the reply unchanged: most templates ask for plain prose."""
    return raw


def _essay_block(raw: str) -> str:
    """Extract the first ``<essay>`` block, so drafts that think aloud first keep only the essay."""
    match = _ESSAY_RE.search(raw)
    if match is None:
        raise ParseError("no <essay> tag in reply", parser="essay_block", stage="draft")
    essay = match.group(1).strip()
    if not essay:
        raise ParseError("the <essay> block is empty", parser="essay_block", stage="draft")
    return essay


def _idea_fail(message: str) -> ParseError:
    return ParseError(message, parser="essay_idea_last", stage="draft")


def _idea_stage(attrs: str, line_no: int) -> int | None:
    """Read the optional integer ``stage`` attribute; a non-integer one is an error, not a guess."""
    match = _STAGE_ATTR_RE.search(attrs)
    if match is None:
        return None
    value = next(group for group in match.groups() if group is not None)
    try:
        return int(value)
    except ValueError:
        raise _idea_fail(f'line {line_no}: stage="{value}" is not an integer') from None


def _idea_blocks(raw: str) -> list[tuple[int | None, int, str]]:
    """List ``(stage, opening line number, verbatim content)`` of every well-formed block, in order.

    Only tags alone on their line count, so prose that mentions ``<essay-idea>`` is not a block.
    """
    lines = raw.splitlines(keepends=True)
    blocks: list[tuple[int | None, int, str]] = []
    open_at: int | None = None
    stage: int | None = None
    for index, line in enumerate(lines):
        opening = _IDEA_OPEN_RE.match(line)
        if opening is not None:
            if open_at is not None:
                raise _idea_fail(
                    f"line {open_at + 1}: <essay-idea> block is not closed before the next one "
                    f"opens on line {index + 1}"
                )
            open_at, stage = index, _idea_stage(opening.group("attrs") or "", index + 1)
        elif open_at is not None and _IDEA_CLOSE_RE.match(line):
            blocks.append((stage, open_at + 1, "".join(lines[open_at + 1 : index])))
            open_at = None
    if open_at is not None:
        raise _idea_fail(f"line {open_at + 1}: <essay-idea> block has no closing </essay-idea>")
    return blocks


def _essay_idea_last(raw: str) -> str:
    """Pick the most developed idea of a rolling draft: the last block of the highest stage."""
    blocks = _idea_blocks(raw)
    if not blocks:
        raise _idea_fail("no <essay-idea> block with its opening and closing tags on their own lines")
    staged = [block for block in blocks if block[0] is not None]
    if staged:
        top = max(stage for stage, _, _ in staged if stage is not None)
        chosen = [block for block in staged if block[0] == top][-1]
    else:
        chosen = blocks[-1]
    _, line_no, content = chosen
    if not content.strip():
        raise _idea_fail(f"line {line_no}: the chosen <essay-idea> block is empty")
    return content


# --- evaluation: shared helpers ------------------------------------------------------------------


def _clean(line: str) -> str:
    """Drop Markdown headings and emphasis, which judges sprinkle freely around scores."""
    line = _HEADING_MARK_RE.sub("", line)
    return _EMPHASIS_RE.sub("", line).strip()


def _clean_lines(raw: str) -> list[str]:
    """The reply's non-empty lines, cleaned, in order (CRLF and lone CR split like LF)."""
    cleaned = (_clean(line) for line in raw.splitlines())
    return [line for line in cleaned if line]


def _snippet(lines: list[str]) -> str:
    if not lines:
        return "the reply has no non-empty line"
    last = lines[-1]
    return f"last line: {last[:_SNIPPET_CHARS]!r}" + ("..." if len(last) > _SNIPPET_CHARS else "")


def _value(match: re.Match[str], parser: str, *, fractions: bool) -> float | None:
    """Turn a matched value into a score; ``None`` when the form is not accepted by this parser."""
    if match.group("triple") is not None:
        return sum(int(ch) for ch in match.group("triple") if ch.isdigit()) / 3
    if match.group("digits3") is not None:
        return sum(int(ch) for ch in match.group("digits3")) / 3
    number = float(match.group("num"))
    if match.group("den") is None:
        return number
    if not fractions:
        return None
    return _scale(number, float(match.group("den")), parser)


def _scale(numerator: float, denominator: float, parser: str) -> float:
    """Scale a fraction to 0..10; a zero denominator is the judge's mistake, reported as such."""
    if denominator <= 0:
        raise ParseError(
            f"fraction {numerator:g}/{denominator:g} has a denominator that is not > 0",
            parser=parser,
            stage="evaluation",
        )
    return numerator / denominator * 10


def _in_range(score: float, parser: str) -> float:
    """Reject scores outside 0..10: a judge that ignores the scale must not skew the results."""
    if not _SCORE_MIN <= score <= _SCORE_MAX:
        raise ParseError(f"score {score:g} is outside 0..10", parser=parser, stage="evaluation")
    return score


# --- evaluation: in_last_line --------------------------------------------------------------------


def _score_in_last_line(raw: str) -> float:
    """Read the score a strict-format judge puts at the end, tolerating trailing remarks."""
    lines = _clean_lines(raw)
    for line in reversed(lines[-_TAIL_LINES:]):
        for match in reversed(list(_LABEL_RE.finditer(line))):
            score = _value(match, "in_last_line", fractions=False)
            if score is not None:
                return _in_range(score, "in_last_line")
    raise ParseError(
        f"no score found in the last {_TAIL_LINES} non-empty lines ({_snippet(lines)})",
        parser="in_last_line",
        stage="evaluation",
    )


# --- evaluation: complex -------------------------------------------------------------------------


def _line_value(line: str, pattern: re.Pattern[str]) -> float | None:
    """The last value labelled by ``pattern`` on a line (the verdict follows the reasoning)."""
    for match in reversed(list(pattern.finditer(line))):
        score = _value(match, "complex", fractions=True)
        if score is not None:
            return score
    return None


def _heading_value(lines: list[str], index: int, *, final_only: bool) -> float | None:
    """Value of a label that stands alone on its line (``### Final Score``), read on the next line."""
    heading = _HEADING_LABEL_RE.match(lines[index])
    if heading is None or (final_only and heading.group("final") is None) or index + 1 >= len(lines):
        return None
    bare = _BARE_VALUE_RE.match(lines[index + 1])
    return None if bare is None else _value(bare, "complex", fractions=True)


def _last_labelled(lines: list[str], pattern: re.Pattern[str], *, final_only: bool) -> float | None:
    """Scan from the bottom for the last line (or heading) carrying a value of this label kind."""
    for index in range(len(lines) - 1, -1, -1):
        score = _line_value(lines[index], pattern)
        if score is None:
            score = _heading_value(lines, index, final_only=final_only)
        if score is not None:
            return score
    return None


def _tail_fraction(lines: list[str]) -> float | None:
    """Last resort: a judge that ends with a bare ``7/10``."""
    for line in reversed(lines[-_TAIL_LINES:]):
        matches = list(_FRACTION_RE.finditer(line))
        if matches:
            last = matches[-1]
            return _scale(float(last.group("num")), float(last.group("den")), "complex")
    return None


def _score_complex(raw: str) -> float:
    """Find the final verdict of a long-winded judge, preferring it over intermediate sub-scores."""
    lines = _clean_lines(raw)
    for found in (
        lambda: _last_labelled(lines, _FINAL_LABEL_RE, final_only=True),
        lambda: _last_labelled(lines, _LABEL_RE, final_only=False),
        lambda: _tail_fraction(lines),
    ):
        score = found()
        if score is not None:
            return _in_range(score, "complex")
    raise ParseError(
        "no final/total/overall score, no 'Score:' line and no fraction on the last "
        f"{_TAIL_LINES} non-empty lines ({_snippet(lines)})",
        parser="complex",
        stage="evaluation",
    )


# --- registry and public API ---------------------------------------------------------------------


def _reply_parser(scorer: Scorer) -> ReplyParser:
    """Adapt a scorer to the registry's text-in, text-out shape."""

    def parse(raw: str) -> str:
        return format_score(scorer(raw))

    parse.__doc__ = scorer.__doc__
    return parse


_SCORERS: Mapping[str, Scorer] = MappingProxyType(
    {"in_last_line": _score_in_last_line, "complex": _score_complex}
)

_REGISTRY: Mapping[str, Mapping[str, ReplyParser]] = MappingProxyType(
    {
        "draft": MappingProxyType(
            {"identity": _identity, "essay_block": _essay_block, "essay_idea_last": _essay_idea_last}
        ),
        "essay": MappingProxyType({"identity": _identity}),
        "evaluation": MappingProxyType({name: _reply_parser(fn) for name, fn in _SCORERS.items()}),
    }
)


def parser_names(stage: str) -> tuple[str, ...]:
    """Registered parser names for ``stage``, sorted (for validation messages); ``()`` if unknown."""
    return tuple(sorted(_REGISTRY.get(stage, {})))


def resolve_parser_name(stage: str, name: str) -> str:
    """The parser a template's ``parser`` cell means: empty is ``identity`` for draft and essay."""
    if name == "" and stage in _IDENTITY_DEFAULT_STAGES:
        return "identity"
    return name


def is_registered(stage: str, name: str) -> bool:
    """Whether a template's ``parser`` cell names a parser of its stage (empty: draft/essay only)."""
    return resolve_parser_name(stage, name) in _REGISTRY.get(stage, {})


def _lookup(stage: str, name: str) -> ReplyParser:
    """Find a parser or say exactly what is wrong, so a bad CSV cell is easy to fix."""
    parsers = _REGISTRY.get(stage)
    if parsers is None:
        raise ParseError(
            f"unknown stage {stage!r} (stages: {', '.join(STAGES)})", parser=name or None, stage=stage
        )
    resolved = resolve_parser_name(stage, name)
    parser = parsers.get(resolved)
    if parser is None:
        known = ", ".join(parser_names(stage))
        what = "an evaluation template must name a parser" if name == "" else f"unknown parser {name!r}"
        raise ParseError(
            f"{what} for stage {stage!r} (registered: {known})", parser=name or None, stage=stage
        )
    return parser


def parse_reply(stage: str, name: str, raw: str) -> str:
    """The text to store in ``parsed.txt`` for a reply, or :class:`ParseError`."""
    return _lookup(stage, name)(raw)


def parse_score(name: str, raw: str) -> float:
    """The score (0..10) an evaluation parser reads from a judge's reply, or :class:`ParseError`."""
    _lookup("evaluation", name)
    return _SCORERS[name](raw)


def format_score(score: float) -> str:
    """Render a score for ``parsed.txt``: rounded to 3 decimals, always with a decimal point.

    A fixed rendering keeps files byte-stable across runs, so results compare and hash cleanly.
    """
    if not math.isfinite(score):
        raise ParseError(f"score {score!r} is not a finite number", stage="evaluation")
    text = f"{round(float(score), 3):.3f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text
