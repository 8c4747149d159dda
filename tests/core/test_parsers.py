"""Tests for daydreamd.core.parsers: every rule of each parser's contract has a case that breaks with it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daydreamd.core import parsers
from daydreamd.core.errors import ParseError
from daydreamd.core.parsers import (
    STAGES,
    format_score,
    is_registered,
    parse_reply,
    parser_names,
    read_verdict,
    resolve_parser_name,
)
from daydreamd.core.verdicts import VerdictSpec


def parse_score(name: str, raw: str) -> float:
    """The score on the default 0-10 scale with the SCORE label."""
    return read_verdict(name, raw, VerdictSpec()).score


# --- registry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("draft", ("essay_block", "essay_idea_last", "identity")),
        ("essay", ("identity",)),
        ("evaluation", ("complex", "in_last_line")),
        ("links", ()),
        ("", ()),
    ],
)
def test_parser_names(stage: str, expected: tuple[str, ...]) -> None:
    """Names are listed sorted per stage; an unknown stage has none."""
    assert parser_names(stage) == expected


def test_stages_constant() -> None:
    """Every stage has a registry entry and nothing else does."""
    assert STAGES == ("draft", "essay", "evaluation")
    assert set(parsers._REGISTRY) == set(STAGES)


@pytest.mark.parametrize(
    ("stage", "name", "expected"),
    [
        ("draft", "", True),
        ("essay", "", True),
        ("evaluation", "", False),
        ("draft", "identity", True),
        ("draft", "essay_block", True),
        ("draft", "essay_idea_last", True),
        ("essay", "identity", True),
        ("essay", "essay_block", False),
        ("evaluation", "in_last_line", True),
        ("evaluation", "complex", True),
        ("evaluation", "identity", False),
        ("draft", "complex", False),
        ("draft", "Identity", False),
        ("links", "identity", False),
        ("links", "", False),
    ],
)
def test_is_registered(stage: str, name: str, expected: bool) -> None:
    """Empty means identity for draft and essay only; names are exact and per stage."""
    assert is_registered(stage, name) is expected


@pytest.mark.parametrize(
    ("stage", "name", "expected"),
    [
        ("draft", "", "identity"),
        ("essay", "", "identity"),
        ("evaluation", "", ""),
        ("draft", "essay_block", "essay_block"),
        ("evaluation", "complex", "complex"),
        ("links", "", ""),
        ("draft", "nope", "nope"),
    ],
)
def test_resolve_parser_name(stage: str, name: str, expected: str) -> None:
    """Only the empty cell of a draft or essay template is rewritten."""
    assert resolve_parser_name(stage, name) == expected


def test_registry_is_immutable() -> None:
    """Parsers are fixed at import: neither the stage map nor a stage's parsers can be changed."""
    with pytest.raises(TypeError):
        parsers._REGISTRY["draft"]["mine"] = lambda raw: raw  # type: ignore[index]
    with pytest.raises(TypeError):
        parsers._REGISTRY["links"] = {}  # type: ignore[index]


@pytest.mark.parametrize(
    ("stage", "name", "message"),
    [
        ("links", "identity", "unknown stage 'links'"),
        ("", "", "unknown stage ''"),
        ("draft", "essay_blok", "unknown parser 'essay_blok'.*essay_block, essay_idea_last, identity"),
        ("essay", "essay_block", "unknown parser 'essay_block' for stage 'essay'"),
        ("evaluation", "", "evaluation template must name a parser.*complex, in_last_line"),
        ("evaluation", "identity", "unknown parser 'identity'"),
    ],
)
def test_parse_reply_unknown_stage_or_parser(stage: str, name: str, message: str) -> None:
    """A bad lookup is a ParseError that carries the stage and says what is registered."""
    with pytest.raises(ParseError, match=message) as info:
        parse_reply(stage, name, "SCORE: 7")
    assert info.value.stage == stage


@pytest.mark.parametrize("name", ["", "identity", "essay_block", "nope"])
def test_parse_score_needs_an_evaluation_parser(name: str) -> None:
    """parse_score only knows evaluation parsers."""
    with pytest.raises(ParseError) as info:
        parse_score(name, "SCORE: 7")
    assert info.value.stage == "evaluation"


# --- identity -------------------------------------------------------------------------------------

IDENTITY_TEXTS = [
    "",
    "plain prose",
    "  leading and trailing whitespace kept \n\n",
    "Windows\r\nline endings\r\n",
    "Unicode: naïve café — 思考 ✓ 🚀",
    "<essay>tags are not special here</essay>",
]


@pytest.mark.parametrize("stage", ["draft", "essay"])
@pytest.mark.parametrize("name", ["", "identity"])
@pytest.mark.parametrize("raw", IDENTITY_TEXTS)
def test_identity_returns_text_unchanged(stage: str, name: str, raw: str) -> None:
    """identity (and the empty default) is byte-for-byte the reply."""
    assert parse_reply(stage, name, raw) == raw


# --- essay_block ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            "Let me plan first.\n1. Links...\n<essay>\nThe essay body.\n\nSecond paragraph.\n</essay>\nDone.",
            "The essay body.\n\nSecond paragraph.",
            id="planning-then-essay",
        ),
        pytest.param(
            "<essay>   \n\t Indented body \n  </essay>", "Indented body", id="strips-outer-whitespace"
        ),
        pytest.param("<essay>First</essay>\n<essay>Second</essay>", "First", id="first-block-wins"),
        pytest.param(
            "Notes\n<essay>\nRuns to the end\nof the text.\n", "Runs to the end\nof the text.", id="unclosed"
        ),
        pytest.param(
            "x\r\n<essay>\r\nLine one\r\nLine two\r\n</essay>\r\n", "Line one\r\nLine two", id="crlf"
        ),
        pytest.param("<essay>Über die Zeit — 时间 ✓</essay>", "Über die Zeit — 时间 ✓", id="unicode"),
        pytest.param(
            "<essay-idea>not it</essay-idea>\n<essay>the essay</essay>", "the essay", id="ignores-essay-idea"
        ),
    ],
)
def test_essay_block(raw: str, expected: str) -> None:
    """The first <essay> block's text, stripped; an unclosed tag runs to the end."""
    assert parse_reply("draft", "essay_block", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("Just prose, no tags.", "no <essay> tag", id="no-tag"),
        pytest.param("", "no <essay> tag", id="empty-text"),
        pytest.param("Body</essay>", "no <essay> tag", id="closing-only"),
        pytest.param("<essay-idea>\nidea\n</essay-idea>", "no <essay> tag", id="essay-idea-only"),
        pytest.param("<essay>  \n </essay>", "empty", id="blank-block"),
    ],
)
def test_essay_block_errors(raw: str, message: str) -> None:
    """No <essay> tag at all (or an empty block) is a ParseError naming the parser."""
    with pytest.raises(ParseError, match=message) as info:
        parse_reply("draft", "essay_block", raw)
    assert (info.value.parser, info.value.stage) == ("essay_block", "draft")


# --- essay_idea_last ------------------------------------------------------------------------------

SCRAMBLED_STAGES = """Thinking about stage 2 first.
<essay-idea stage="2">
Stage two idea.
</essay-idea>
Now the final refinement.
<essay-idea stage="3">
Stage three, first take.
</essay-idea>
Back to basics for a moment.
<essay-idea stage="1">
Stage one idea.
</essay-idea>
<essay-idea stage="3">
Stage three, revised.
  Indented line kept.

After a blank line.
</essay-idea>
<essay-idea stage="2">
Late stage two.
</essay-idea>
"""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            SCRAMBLED_STAGES,
            "Stage three, revised.\n  Indented line kept.\n\nAfter a blank line.\n",
            id="highest-stage-last-of-ties",
        ),
        pytest.param(
            '<essay-idea stage="10">\nten\n</essay-idea>\n<essay-idea stage="9">\nnine\n</essay-idea>\n',
            "ten\n",
            id="stage-compared-as-integer",
        ),
        pytest.param(
            "<essay-idea>\nfirst\n</essay-idea>\n<essay-idea>\nsecond\n</essay-idea>\ntrailing notes",
            "second\n",
            id="no-stage-attrs-last-block",
        ),
        pytest.param(
            '<essay-idea stage="2">\nstaged\n</essay-idea>\n<essay-idea>\nunstaged, later\n</essay-idea>\n',
            "staged\n",
            id="staged-beats-unstaged",
        ),
        pytest.param(
            " <essay-idea stage='1'>\n  Indented tags, single quotes.\n  </essay-idea>  \n",
            "  Indented tags, single quotes.\n",
            id="indented-tags",
        ),
        pytest.param(
            '<essay-idea stage="1">\r\nCRLF kept\r\nverbatim \r\n</essay-idea>\r\n',
            "CRLF kept\r\nverbatim \r\n",
            id="crlf-verbatim",
        ),
        pytest.param(
            '<essay-idea stage="1">\nIdée — 发散思维 ✓\n</essay-idea>',
            "Idée — 发散思维 ✓\n",
            id="unicode-no-final-newline",
        ),
        pytest.param(
            "Inline <essay-idea>ignored</essay-idea> mention.\n<essay-idea>\nreal\n</essay-idea>\n",
            "real\n",
            id="inline-tags-are-not-blocks",
        ),
        pytest.param(
            "</essay-idea>\n<essay-idea>\nafter a stray close\n</essay-idea>\n",
            "after a stray close\n",
            id="stray-close-ignored",
        ),
    ],
)
def test_essay_idea_last(raw: str, expected: str) -> None:
    """The last block of the highest stage (or the last block), content verbatim without tag lines."""
    assert parse_reply("draft", "essay_idea_last", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("No blocks here.", "no <essay-idea> block", id="no-block"),
        pytest.param("", "no <essay-idea> block", id="empty-text"),
        pytest.param(
            '<essay-idea stage="1">inline only</essay-idea>', "no <essay-idea> block", id="inline-only"
        ),
        pytest.param(
            '<essay-idea stage="1">\none\n</essay-idea>\nnotes\n<essay-idea stage="2">\nunfinished\n',
            r"line 5: <essay-idea> block has no closing",
            id="unclosed-at-end",
        ),
        pytest.param(
            '<essay-idea stage="1">\none\n<essay-idea stage="2">\ntwo\n</essay-idea>\n',
            r"line 1: <essay-idea> block is not closed before the next one opens on line 3",
            id="unclosed-before-next",
        ),
        pytest.param(
            '<essay-idea stage="final">\ntext\n</essay-idea>\n',
            r'line 1: stage="final" is not an integer',
            id="bad-stage",
        ),
        pytest.param('<essay-idea stage="1">\n   \n</essay-idea>\n', "line 1: .*empty", id="blank-block"),
    ],
)
def test_essay_idea_last_errors(raw: str, message: str) -> None:
    """Missing or malformed blocks are ParseErrors that name the line."""
    with pytest.raises(ParseError, match=message) as info:
        parse_reply("draft", "essay_idea_last", raw)
    assert (info.value.parser, info.value.stage) == ("essay_idea_last", "draft")


# --- in_last_line ---------------------------------------------------------------------------------

JUDGE_REASONING = "REASONING: The essay links both concepts with a concrete mechanism.\nIt could cite more."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 7", 7.0, id="plain"),
        pytest.param(f"{JUDGE_REASONING}\nscore: 3", 3.0, id="lowercase"),
        pytest.param(f"{JUDGE_REASONING}\n**SCORE: 8**", 8.0, id="bold"),
        pytest.param(f"{JUDGE_REASONING}\n*SCORE: 8*", 8.0, id="italic"),
        pytest.param(f"{JUDGE_REASONING}\n**Score:** 5", 5.0, id="bold-label"),
        pytest.param(f"{JUDGE_REASONING}\n__Score:__ 6", 6.0, id="underscore-bold"),
        pytest.param(f"{JUDGE_REASONING}\n_Score_: **4**", 4.0, id="underscore-italic"),
        pytest.param(f"{JUDGE_REASONING}\n### SCORE: 9", 9.0, id="heading"),
        pytest.param(f"{JUDGE_REASONING}\nTotal Score: 6", 6.0, id="total"),
        pytest.param(f"{JUDGE_REASONING}\nFinal Score: 8.5", 8.5, id="final-decimal"),
        pytest.param(f"{JUDGE_REASONING}\nScore = 7", 7.0, id="equals"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE:7", 7.0, id="no-space"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 7 (solid, specific)", 7.0, id="trailing-remark"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 10", 10.0, id="top-of-range"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 0", 0.0, id="bottom-of-range"),
        pytest.param("Score: 456", 5.0, id="three-digits"),
        pytest.param("Score: 4,5,6", 5.0, id="three-digits-commas"),
        pytest.param("**Score:** 4, 5, 6", 5.0, id="three-digits-comma-space"),
        pytest.param("SCORE: 789", 8.0, id="three-digits-789"),
        pytest.param(
            "Analysis...\n\n**SCORE: 7**  \n*(Clear mechanism, weak on terminology.)*\nThanks for reading.",
            7.0,
            id="score-then-two-explanation-lines",
        ),
        pytest.param("SCORE: 7\n\n\n\nnote one\n\n\nnote two\n\n", 7.0, id="blank-lines-do-not-count"),
        pytest.param("SCORE: 4\nOn reflection:\nSCORE: 6", 6.0, id="bottom-line-wins"),
        # Changed (parser v2): a fraction on the template's own scale is a verdict, and "Criterion score"
        # names a part. It used to skip the fraction and read the criterion.
        pytest.param("Criterion score: 9\nSCORE: 8/10\n", 8.0, id="fraction-on-own-scale-wins"),
        pytest.param("SCORE: 9\nSCORE: 4/5\n", 9.0, id="fraction-on-other-scale-skipped"),
        pytest.param("Reasoning here.\r\nSCORE: 7\r\n", 7.0, id="crlf"),
        pytest.param("Évaluation — très cohérent ✓ 思考\n**SCORE: 9**", 9.0, id="unicode"),
    ],
)
def test_in_last_line(raw: str, expected: float) -> None:
    """A labelled score on one of the last 3 non-empty lines, searched bottom-up."""
    assert parse_score("in_last_line", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("SCORE: 7\none\ntwo\nthree", "last 3 non-empty lines", id="fourth-from-last"),
        # Changed (parser v2): 7/10 on a 0-10 template is 7; another denominator is still not a score.
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 7/9", "last 3 non-empty lines", id="fraction-other-scale"),
        pytest.param(f"{JUDGE_REASONING}\n8", "last 3 non-empty lines", id="bare-number"),
        # Changed (parser v2): a label alone on its line takes its value from the next one, as in
        # ``complex`` (tested in test_in_last_line_reads_heading_then_value).
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 8-9", "last 3 non-empty lines", id="range"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: X", "last 3 non-empty lines", id="placeholder"),
        pytest.param(
            f"{JUDGE_REASONING}\nScore_0_9 = 5", "last 3 non-empty lines", id="identifier-underscores"
        ),
        pytest.param("The essay is good.", "last 3 non-empty lines", id="no-score"),
        pytest.param("", "no non-empty line", id="empty"),
        pytest.param(" \n\t\r\n", "no non-empty line", id="whitespace-only"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: 11", "outside the template's scale 0-10", id="above-range"),
        pytest.param(f"{JUDGE_REASONING}\nSCORE: -1", "outside the template's scale 0-10", id="negative"),
        pytest.param("SCORE: 10.5", "outside the template's scale 0-10", id="just-above-range"),
        pytest.param(
            "SCORE: 4\nnotes\nSCORE: 12",
            "outside the template's scale 0-10",
            id="first-found-is-out-of-range",
        ),
    ],
)
def test_in_last_line_errors(raw: str, message: str) -> None:
    """No score where it must be, or one outside 0..10, is a ParseError."""
    with pytest.raises(ParseError, match=message) as info:
        parse_score("in_last_line", raw)
    assert (info.value.parser, info.value.stage) == ("in_last_line", "evaluation")


# --- complex --------------------------------------------------------------------------------------

LEGACY_JUDGE_REPLY = """
**REASONING:**
The text partially reproduces the core concepts but lacks precise terminology.

### **Core Concepts Identified**
**1. The Problem: Static LLMs**
- **Score**: **1/1** (alignment exists).

**2. The Mechanism**
- **Score**: **2/2** (generator and critic present).

**Total for Core Concepts**: **3/5**

### **SCORE:**
**Total Score: 7/10**

**Summary:**
Captures the mechanism; misses the economics.
"""

FINAL_THEN_SUBSCORES = """Overall the essay is strong.

**Final Score: 8/10**

Breakdown:
- Criterion 1 score: 3/3
- Criterion 2 score: 2/3
"""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("REASONING: creative\nSCORE: 8.5", 8.5, id="plain"),
        pytest.param("SCORE: 8/10", 8.0, id="fraction"),
        # Changed (parser v2): a fraction on another scale is never rescaled (it was 3/5 -> 6.0).
        pytest.param("Score: 7 / 10", 7.0, id="fraction-spaced"),
        pytest.param("**Score:** **8.5/10**", 8.5, id="decimal-fraction-bold"),
        pytest.param(LEGACY_JUDGE_REPLY, 7.0, id="legacy-reply-total-over-subscores"),
        pytest.param(FINAL_THEN_SUBSCORES, 8.0, id="final-beats-later-subscores"),
        pytest.param(
            "Criterion 1 score: 3/3\nCriterion 2 score: 1/3\n**Final Score: 6/10**",
            6.0,
            id="subscores-then-final",
        ),
        # Changed (parser v2): the format the template asked for (SCORE) beats "Final Score" labels.
        pytest.param("Total Score: 6\nmore thoughts\nFinal Score: 7\nSCORE: 2", 2.0, id="verdict-label-wins"),
        pytest.param("Total Score: 6\nmore thoughts\nFinal Score: 7", 7.0, id="last-final-label"),
        pytest.param("Overall score = 5\nclarity score: 9", 5.0, id="overall-label"),
        pytest.param("### Final Score\n\n**8**\n\nWell argued.", 8.0, id="heading-value-next-line"),
        pytest.param("**Final Score**\n7/10", 7.0, id="bold-heading-fraction-next-line"),
        pytest.param("## Final Score:\n8 — strong synthesis", 8.0, id="heading-value-with-remark"),
        pytest.param("- Clarity score: 9\n### **SCORE:**\n6", 6.0, id="plain-heading-next-line"),
        pytest.param("### Final Score\r\n\r\n8\r\nGood.\r\n", 8.0, id="crlf-heading"),
        pytest.param(
            "Final Score: 8\n" + "\n".join(f"Explanation line {i}." for i in range(10)),
            8.0,
            id="looks-past-last-lines",
        ),
        pytest.param("Score: 6\nThat is about 7/10 in the old rubric.", 6.0, id="score-line-beats-fraction"),
        pytest.param("Thoughtful but thin.\nI would rate it 7/10.", 7.0, id="trailing-fraction"),
        pytest.param("Rating: 4/5\nOverall I rate it 8/10.\n", 8.0, id="trailing-fraction-on-own-scale"),
        pytest.param("Final Score: 456", 5.0, id="three-digits"),
        pytest.param("Évaluation — 思考 ✓\n**Note finale / Final Score:** 9", 9.0, id="unicode"),
    ],
)
def test_complex(raw: str, expected: float) -> None:
    """The final verdict wins over sub-scores; fractions scale to 10; headings read the next line."""
    assert parse_score("complex", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("Final Score: 12/10", "outside the template's scale 0-10", id="fraction-above-range"),
        pytest.param("Total Score: 15", "outside the template's scale 0-10", id="above-range"),
        pytest.param("Score: -2", "outside the template's scale 0-10", id="negative"),
        pytest.param("**Final Score**\n11", "outside the template's scale 0-10", id="heading-above-range"),
        pytest.param("Score: 5/0", "no verdict", id="zero-denominator"),
        pytest.param("It was fine.\nI liked it.", "no verdict", id="no-score"),
        pytest.param("7/10 early on\na\nb\nc\nd", "no verdict", id="fraction-too-early"),
        pytest.param("SCORE: X", "no verdict", id="placeholder"),
        pytest.param("SCORE: 0-10 (0 = none, 10 = best)", "no verdict", id="rubric-range"),
        pytest.param(
            "## FINAL SCORE\n1. Calculate the raw score out of 100",
            "no verdict",
            id="list-after-heading",
        ),
        pytest.param("", "no non-empty line", id="empty"),
    ],
)
def test_complex_errors(raw: str, message: str) -> None:
    """Out-of-range scores, bad fractions and missing scores are ParseErrors."""
    with pytest.raises(ParseError, match=message) as info:
        parse_score("complex", raw)
    assert (info.value.parser, info.value.stage) == ("complex", "evaluation")


def test_complex_reads_further_back_than_in_last_line() -> None:
    """The same long reply fails in_last_line but succeeds with complex."""
    raw = "Final Score: 8\nline a\nline b\nline c"
    with pytest.raises(ParseError, match="last 3 non-empty lines"):
        parse_score("in_last_line", raw)
    assert parse_score("complex", raw) == 8.0


def test_in_last_line_reads_heading_then_value() -> None:
    """``**Final Score**`` alone on a line takes its value from the next line (changed in v2)."""
    assert parse_score("in_last_line", f"{JUDGE_REASONING}\n**Final Score**\n8") == 8.0


# --- evaluation text and format_score -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("in_last_line", "SCORE: 7", "7.0"),
        ("in_last_line", "Score: 1,2,2", "1.667"),
        ("complex", "Score: 6.6667/10", "6.667"),
        ("complex", FINAL_THEN_SUBSCORES, "8.0"),
    ],
)
def test_parse_reply_evaluation_is_formatted_score(name: str, raw: str, expected: str) -> None:
    """An evaluation's parsed.txt holds format_score(parse_score(...))."""
    assert parse_reply("evaluation", name, raw) == expected
    assert parse_reply("evaluation", name, raw) == format_score(parse_score(name, raw))


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (7, "7.0"),
        (8.5, "8.5"),
        (5.333333, "5.333"),
        (6.6666, "6.667"),
        (0, "0.0"),
        (-0.0, "0.0"),
        (10.0, "10.0"),
        (2.0004, "2.0"),
        (0.125, "0.125"),
    ],
)
def test_format_score(score: float, expected: str) -> None:
    """Rounded to 3 decimals, always with at least one decimal."""
    assert format_score(score) == expected


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_format_score_rejects_non_finite(score: float) -> None:
    """A non-number never reaches parsed.txt."""
    with pytest.raises(ParseError, match="not a finite number"):
        format_score(score)


# --- properties -----------------------------------------------------------------------------------


@given(st.floats(min_value=0, max_value=10))
def test_format_score_round_trips(score: float) -> None:
    """The text always has a decimal point, at most 3 decimals, and is within rounding of the score."""
    text = format_score(score)
    whole, _, decimals = text.partition(".")
    assert whole.isdigit() and decimals.isdigit() and 1 <= len(decimals) <= 3
    assert abs(float(text) - score) <= 0.0005 + 1e-12


@given(hundredths=st.integers(min_value=0, max_value=1000), name=st.sampled_from(["in_last_line", "complex"]))
def test_labelled_score_round_trips(hundredths: int, name: str) -> None:
    """Any 0..10 score with up to 2 decimals written as 'SCORE: x' is read back exactly."""
    score = hundredths / 100
    assert parse_score(name, f"{JUDGE_REASONING}\n**SCORE: {score!r}**") == score


@given(raw=st.text(), stage_name=st.sampled_from([(s, n) for s in STAGES for n in parser_names(s)]))
def test_parsers_only_raise_parse_error(raw: str, stage_name: tuple[str, str]) -> None:
    """Whatever the reply, a parser returns text or raises ParseError, nothing else."""
    stage, name = stage_name
    try:
        result = parse_reply(stage, name, raw)
    except ParseError:
        return
    assert isinstance(result, str)


@given(st.text())
def test_identity_property(raw: str) -> None:
    """identity never alters a reply."""
    assert parse_reply("draft", "", raw) == raw
    assert parse_reply("essay", "identity", raw) == raw


# --- parse keys and provenance -------------------------------------------------------------------


def test_the_parse_key_names_everything_the_parsed_text_depends_on() -> None:
    """Parser, version and (for evaluations) label and scale; a change to any gives a new key."""
    from daydreamd.core.parsers import PARSER_VERSIONS, parse_key
    from daydreamd.core.scales import Scale

    version = PARSER_VERSIONS[("evaluation", "complex")]
    nine = VerdictSpec(scale=Scale(0, 9))
    assert parse_key("evaluation", "complex", nine) == f"evaluation/complex@{version}/SCORE/0-9"
    assert parse_key("evaluation", "complex", None) == f"evaluation/complex@{version}/SCORE/0-10"
    assert parse_key("draft", "", None) == "draft/identity@1"
    keys = {
        parse_key("evaluation", "complex", nine),
        parse_key("evaluation", "in_last_line", nine),
        parse_key("evaluation", "complex", VerdictSpec(label="VERDICT", scale=Scale(0, 9))),
        parse_key("evaluation", "complex", VerdictSpec(scale=Scale(1, 9))),
    }
    assert len(keys) == 4


def test_parse_saved_records_where_the_score_came_from() -> None:
    from daydreamd.core.parsers import parse_saved
    from daydreamd.core.scales import Scale

    raw = "<think>\nTotal score: 4 + 4 = 8.\n</think>\nNovelty (3/5)\n**SCORE: 7/9**\n"
    parsed = parse_saved("evaluation", "complex", raw, VerdictSpec(scale=Scale(0, 9)))
    assert (parsed.text, parsed.score, parsed.key.endswith("/SCORE/0-9")) == ("7.0", 7.0, True)
    verdict = parsed.provenance["verdict"]
    assert isinstance(verdict, dict)
    assert (verdict["line"], verdict["text"], verdict["set_aside"]) == (5, "SCORE: 7/9", 2)
    draft = parse_saved("draft", "identity", "text")
    assert (draft.text, draft.score, draft.provenance["verdict"]) == ("text", None, None)


def test_a_failed_parse_records_why_and_the_candidates() -> None:
    from daydreamd.core.parsers import failure_provenance

    raw = "SCORE: 6\nSCORE: 7\n"
    with pytest.raises(ParseError) as info:
        read_verdict("in_last_line", raw, VerdictSpec())
    assert info.value.kind == "conflict" and len(info.value.candidates) == 2
    record = failure_provenance("evaluation", "in_last_line", VerdictSpec(), info.value)
    assert record["error_kind"] == "conflict" and record["candidates"] == list(info.value.candidates)
