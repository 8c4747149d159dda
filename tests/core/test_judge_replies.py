"""The evaluation parsers on a corpus of long-form judge replies, each with the score a careful human reads.

``tests/fixtures/judge_replies/expected.csv`` lists every reply with its parser, the scale and
verdict label of the template it answers, and the expected score (or ``parse_error`` where a
careful human could not decide either). The replies were written for this test: reasoning blocks,
unmarked deliberation, section subtotals, breakdowns and prose after the verdict, both scales.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from daydreamd.core.errors import ParseError
from daydreamd.core.parsers import read_verdict
from daydreamd.core.scales import Scale, ScaleSource
from daydreamd.core.verdicts import VerdictSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "judge_replies"
INDEX = FIXTURES / "expected.csv"


def _cases() -> list[dict[str, str]]:
    with INDEX.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


CASES = _cases()


def test_the_corpus_is_whole() -> None:
    """Every reply is listed once and every listed reply exists: none silently left out."""
    listed = [case["file"] for case in CASES]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in FIXTURES.glob("*.txt"))
    assert len(listed) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case["file"].removesuffix(".txt") for case in CASES])
def test_the_parser_reads_what_a_human_reads(case: dict[str, str]) -> None:
    raw = (FIXTURES / case["file"]).read_text(encoding="utf-8")
    scale = Scale(float(case["scale_min"]), float(case["scale_max"]), ScaleSource.CSV)
    spec = VerdictSpec(label=case["label"] or "SCORE", scale=scale)
    if case["expected"] == "parse_error":
        with pytest.raises(ParseError) as info:
            read_verdict(case["parser"], raw, spec)
        assert info.value.kind in {"no_verdict", "conflict", "out_of_range"}, info.value
        return
    verdict = read_verdict(case["parser"], raw, spec)
    assert verdict.score == pytest.approx(float(case["expected"])), (case["note"], verdict.steps)
    assert verdict.line >= 1
    assert raw.splitlines()[verdict.line - 1].strip(), "the verdict's line is a real, non-empty line"
