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
    ``in_last_line`` and ``complex`` read the judge's final verdict on the template's own scale
    and label (:class:`~daydreamd.core.verdicts.VerdictSpec`); :mod:`daydreamd.core.verdicts`
    documents the algorithm, and :func:`read_verdict` returns where the score came from.

Each parser has a version (:data:`PARSER_VERSIONS`); raising it re-parses finished generations.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from daydreamd.core.errors import ParseError
from daydreamd.core.experiment import Generator
from daydreamd.core.verdicts import Verdict, VerdictSpec, read_complex, read_last_line

if TYPE_CHECKING:
    from daydreamd.core.experiment import Template

STAGES: tuple[str, ...] = ("draft", "essay", "evaluation")

ReplyParser = Callable[[str], str]
"""Maps a raw reply to the text of ``parsed.txt``."""

VerdictReader = Callable[[str, VerdictSpec], Verdict]
"""Reads a judge's reply into its verdict on the template's scale (:mod:`daydreamd.core.verdicts`)."""

_IDENTITY_DEFAULT_STAGES = frozenset({"draft", "essay"})

# --- regexes (compiled once) -------------------------------------------------------------------

_ESSAY_RE = re.compile(r"<essay>(.*?)(?:</essay>|\Z)", re.DOTALL | re.IGNORECASE)
_IDEA_OPEN_RE = re.compile(r"^\s*<essay-idea(?P<attrs>\s[^>]*)?>\s*$", re.IGNORECASE)
_IDEA_CLOSE_RE = re.compile(r"^\s*</essay-idea>\s*$", re.IGNORECASE)
_STAGE_ATTR_RE = re.compile(r"""\bstage\s*=\s*(?:"([^"]*)"|'([^']*)'|(\S+))""", re.IGNORECASE)


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


# --- registry and public API ---------------------------------------------------------------------


def _default_scale_text(reader: VerdictReader, raw: str) -> str:
    """An evaluation parser in the registry's text-in, text-out shape (0-10, ``SCORE``)."""
    return format_score(reader(raw, VerdictSpec()).score)


_VERDICT_READERS: Mapping[str, VerdictReader] = MappingProxyType(
    {"in_last_line": read_last_line, "complex": read_complex}
)

PARSER_VERSIONS: Mapping[tuple[str, str], int] = MappingProxyType(
    {
        ("draft", "identity"): 1,
        ("draft", "essay_block"): 1,
        ("draft", "essay_idea_last"): 1,
        ("essay", "identity"): 1,
        ("evaluation", "in_last_line"): 2,
        ("evaluation", "complex"): 2,
    }
)
"""Each parser's version: raise it when a parser reads replies differently, so that finished
generations are re-parsed from their saved replies (nothing is paid again)."""

_REGISTRY: Mapping[str, Mapping[str, ReplyParser]] = MappingProxyType(
    {
        "draft": MappingProxyType(
            {"identity": _identity, "essay_block": _essay_block, "essay_idea_last": _essay_idea_last}
        ),
        "essay": MappingProxyType({"identity": _identity}),
        "evaluation": MappingProxyType(
            {
                name: functools.partial(_default_scale_text, reader)
                for name, reader in _VERDICT_READERS.items()
            }
        ),
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


def parse_reply(stage: str, name: str, raw: str, spec: VerdictSpec | None = None) -> str:
    """The text to store in ``parsed.txt`` for a reply, or :class:`ParseError`.

    ``spec`` is the evaluation template's verdict label and scale (0-10 and ``SCORE`` when None).
    """
    if stage == "evaluation":
        return format_score(read_verdict(name, raw, spec or VerdictSpec()).score)
    return _lookup(stage, name)(raw)


def read_verdict(name: str, raw: str, spec: VerdictSpec) -> Verdict:
    """The verdict an evaluation parser reads from a judge's reply, with where it came from."""
    _lookup("evaluation", name)
    return _VERDICT_READERS[name](raw, spec)


def parser_version(stage: str, name: str) -> int:
    """The version of a registered parser (see :data:`PARSER_VERSIONS`)."""
    return PARSER_VERSIONS[(stage, resolve_parser_name(stage, name))]


# --- parsing a saved reply, with what it depends on ----------------------------------------------

COPY_KEY = "copy"
"""The parse key of copy generations: their text is the parent's, no parser is involved."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A reply's ``parsed.txt`` text, the parse key it was made under, and where it came from."""

    text: str
    key: str
    provenance: dict[str, object]
    """For ``metadata.json`` and the run state: parser, version, key and, for a score, its line."""

    @property
    def score(self) -> float | None:
        """The score, for an evaluation."""
        verdict = self.provenance.get("verdict")
        return float(self.text) if verdict is not None else None


def parse_key(stage: str, name: str, spec: VerdictSpec | None) -> str:
    """Everything the parsed text of a saved reply depends on besides the reply itself.

    A finished generation whose key differs from its template's current key is re-parsed (its
    parser, its version, or for evaluations the verdict label or scale changed).
    """
    resolved = resolve_parser_name(stage, name)
    key = f"{stage}/{resolved}@{PARSER_VERSIONS.get((stage, resolved), 0)}"
    if stage == "evaluation":
        spec = spec or VerdictSpec()
        key += f"/{spec.label}/{spec.scale.minimum:g}-{spec.scale.maximum:g}"
    return key


def template_parse_key(template: Template) -> str:
    """The parse key of a template's generations (:data:`COPY_KEY` for copy templates)."""
    if template.generator is Generator.COPY:
        return COPY_KEY
    return parse_key(str(template.stage), template.parser, template.verdict)


def parse_saved(stage: str, name: str, raw: str, spec: VerdictSpec | None = None) -> Parsed:
    """Parse a reply with its provenance, or raise :class:`ParseError` (whose provenance is
    :func:`failure_provenance`)."""
    if stage != "evaluation":
        return Parsed(
            parse_reply(stage, name, raw), parse_key(stage, name, spec), _made_by(stage, name, spec)
        )
    verdict = read_verdict(name, raw, spec or VerdictSpec())
    provenance = _made_by(stage, name, spec) | {"verdict": verdict.provenance()}
    return Parsed(format_score(verdict.score), parse_key(stage, name, spec), provenance)


def failure_provenance(
    stage: str, name: str, spec: VerdictSpec | None, error: ParseError
) -> dict[str, object]:
    """What a failed parse records: the key it ran under, why it failed, and the candidates."""
    return _made_by(stage, name, spec) | {"error_kind": error.kind, "candidates": list(error.candidates[:5])}


def _made_by(stage: str, name: str, spec: VerdictSpec | None) -> dict[str, object]:
    resolved = resolve_parser_name(stage, name)
    version = PARSER_VERSIONS.get((stage, resolved), 0)
    return {"parser": resolved, "version": version, "key": parse_key(stage, name, spec), "verdict": None}


def format_score(score: float) -> str:
    """Render a score for ``parsed.txt``: rounded to 3 decimals, always with a decimal point.

    A fixed rendering keeps files byte-stable across runs, so results compare and hash cleanly.
    """
    if not math.isfinite(score):
        raise ParseError(f"score {score!r} is not a finite number", stage="evaluation")
    text = f"{round(float(score), 3):.3f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text
