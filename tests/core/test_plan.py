"""Pins the plan estimates: which source each number comes from, and the numbers, computed by hand.

``estimate_group`` and ``summarize`` are pure; every expected value below is worked out in the
comment next to it from the inputs of the test, never by calling the code under test twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from daydreamd.core.estimates import (
    GroupEstimate,
    GroupInputs,
    Observed,
    estimate_group,
    observed_table,
    plan_hash,
    summarize,
)
from daydreamd.core.pricing import Price
from daydreamd.core.tokens import estimate_tokens


def inputs(**overrides: object) -> GroupInputs:
    """An llm group of 10 evaluations with nothing known about it; tests fill in what they need."""
    fields: dict[str, object] = {
        "stage": "evaluation",
        "template_id": "novelty-judge",
        "llm_model_id": "sonnet_4",
        "mode": "llm",
        "count": 10,
        "blocked": 0,
        "max_tokens": 1000,
    }
    fields.update(overrides)
    return GroupInputs(**fields)  # type: ignore[arg-type]


# -- plan_hash and estimate_tokens -------------------------------------------------------------


def test_plan_hash_is_16_hex_over_the_cohort_and_the_sorted_ids() -> None:
    expected = hashlib.sha256(b"cohort_abc\nv_1\nv_2\nv_3").hexdigest()[:16]
    assert plan_hash("cohort_abc", ["v_3", "v_1", "v_2"]) == expected
    assert plan_hash("cohort_abc", ("v_1", "v_2", "v_3")) == expected  # order does not matter


def test_plan_hash_changes_with_the_cohort_and_with_the_ids() -> None:
    base = plan_hash("cohort_abc", ["v_1", "v_2"])
    assert plan_hash("cohort_xyz", ["v_1", "v_2"]) != base
    assert plan_hash("cohort_abc", ["v_1"]) != base
    assert plan_hash("cohort_abc", ["v_1", "v_2", "v_3"]) != base
    # No cohort hashes like an empty cohort id; an empty plan still has a hash.
    assert plan_hash(None, ["v_1"]) == plan_hash("", ["v_1"]) == hashlib.sha256(b"\nv_1").hexdigest()[:16]
    assert plan_hash("cohort_abc", []) == hashlib.sha256(b"cohort_abc").hexdigest()[:16]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 1), ("abc", 1), ("abcd", 1), ("abcdefgh", 2), ("x" * 4001, 1000), ("é" * 8, 2)],
)
def test_estimate_tokens_is_characters_over_four_and_never_zero(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


# -- estimate_group: sources -------------------------------------------------------------------


def test_copy_groups_cost_nothing_and_say_copy() -> None:
    line = estimate_group(
        inputs(
            stage="essay",
            template_id="idea-as-essay",
            mode="copy",
            count=9,
            blocked=4,
            rendered_tokens=(100,),
            observed=Observed(calls=3, prompt_tokens=10.0, completion_tokens=10.0, cost=1.0),
            price=Price(1.0, 1.0),
        )
    )
    assert (line.count, line.blocked) == (9, 4)
    assert (line.input_tokens, line.output_tokens, line.usd) == (0, 0, 0.0)
    assert (line.input_source, line.output_source) == ("copy", "copy")
    assert line.price_known


def test_an_empty_group_estimates_nothing() -> None:
    line = estimate_group(inputs(count=0, rendered_tokens=(100,), price=Price(1.0, 1.0)))
    assert (line.input_tokens, line.output_tokens, line.usd) == (0, 0, 0.0)
    assert (line.input_source, line.output_source) == ("none", "none")


def test_rendered_prompts_and_observed_replies_with_observed_cost() -> None:
    line = estimate_group(
        inputs(
            rendered_tokens=(100, 200, 300),  # 200 per call
            observed=Observed(calls=4, prompt_tokens=999.0, completion_tokens=50.5, cost=0.002),
            price=Price(1000.0, 1000.0),  # ignored: the observed cost per call wins
        )
    )
    assert line.input_tokens == 2000  # 200 x 10
    assert line.output_tokens == 505  # 50.5 x 10
    assert line.usd == pytest.approx(0.02)  # 0.002 x 10
    assert (line.input_source, line.output_source) == ("rendered", "observed")
    assert line.price_known


def test_without_observed_replies_output_is_max_tokens_and_priced_by_tokens() -> None:
    line = estimate_group(inputs(rendered_tokens=(150, 250), price=Price(1.0, 4.0)))
    assert line.input_tokens == 2000  # (150 + 250) / 2 x 10
    assert line.output_tokens == 10_000  # max_tokens 1000 x 10
    assert line.output_source == "max_tokens (upper bound)"
    assert line.usd == pytest.approx((2000 * 1.0 + 10_000 * 4.0) / 1e6)  # 0.042


def test_observed_calls_without_completion_tokens_fall_back_to_max_tokens() -> None:
    line = estimate_group(
        inputs(count=2, rendered_tokens=(10,), observed=Observed(calls=3), price=Price(2.0, 2.0))
    )
    assert line.output_tokens == 2000 and line.output_source == "max_tokens (upper bound)"
    assert line.usd == pytest.approx((20 + 2000) * 2.0 / 1e6)  # no observed cost: tokens x price


def test_observed_prompt_tokens_when_nothing_can_be_rendered() -> None:
    line = estimate_group(
        inputs(
            count=4,
            template_tokens=50,
            parent_tokens=300.0,
            observed=Observed(calls=2, prompt_tokens=120.0, completion_tokens=30.0, cost=None),
            price=Price(10.0, 20.0),
        )
    )
    assert (line.input_tokens, line.input_source) == (480, "observed")  # 120 x 4
    assert (line.output_tokens, line.output_source) == (120, "observed")  # 30 x 4
    assert line.usd == pytest.approx((480 * 10.0 + 120 * 20.0) / 1e6)  # observed cost is None: price


def test_template_plus_typical_parent_when_nothing_is_known() -> None:
    line = estimate_group(inputs(count=3, template_tokens=50, parent_tokens=150.0))
    assert (line.input_tokens, line.input_source) == (600, "template + typical parent")  # (50+150) x 3
    without_parent = estimate_group(inputs(count=3, template_tokens=50))
    assert without_parent.input_tokens == 150  # 50 x 3: no typical parent known


def test_observed_calls_with_no_prompt_tokens_fall_back_to_the_template() -> None:
    line = estimate_group(
        inputs(
            count=2, template_tokens=40, parent_tokens=10.0, observed=Observed(calls=5, completion_tokens=7.0)
        )
    )
    assert (line.input_tokens, line.input_source) == (100, "template + typical parent")  # (40+10) x 2
    assert (line.output_tokens, line.output_source) == (14, "observed")


def test_a_model_without_a_price_is_unknown_never_free() -> None:
    line = estimate_group(inputs(rendered_tokens=(100,)))
    assert line.usd is None and not line.price_known
    assert line.to_dict()["usd"] is None and line.to_dict()["price_known"] is False


def test_observed_cost_makes_a_price_unnecessary() -> None:
    line = estimate_group(
        inputs(rendered_tokens=(100,), observed=Observed(calls=1, completion_tokens=5, cost=0.5))
    )
    assert line.usd == pytest.approx(5.0) and line.price_known


def test_to_dict_names_every_field_and_rounds_dollars() -> None:
    line = estimate_group(inputs(count=3, blocked=1, rendered_tokens=(7,), price=Price(1.0, 1.0)))
    # input 7 x 3 = 21; output 1000 x 3 = 3000; usd (21 + 3000) / 1e6 = 0.003021 -> 0.003 at 4 places
    assert line.to_dict() == {
        "stage": "evaluation",
        "template_id": "novelty-judge",
        "llm_model_id": "sonnet_4",
        "mode": "llm",
        "count": 3,
        "blocked_on_parent": 1,
        "input_tokens": 21,
        "output_tokens": 3000,
        "usd": 0.003,
        "batch_usd": None,
        "input_source": "rendered",
        "output_source": "max_tokens (upper bound)",
        "price_known": True,
    }


# -- summarize ---------------------------------------------------------------------------------


def _line(
    stage: str, model: str, count: int, tokens: tuple[int, int], usd: float | None, **kw: object
) -> GroupEstimate:
    return GroupEstimate(
        stage=stage,
        template_id=str(kw.get("template_id", "t")),
        llm_model_id=model,
        mode=str(kw.get("mode", "llm")),
        count=count,
        blocked=int(kw.get("blocked", 0)),  # type: ignore[call-overload]
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        usd=usd,
        price_known=usd is not None,
    )


def test_summarize_totals_per_stage_and_overall() -> None:
    lines = [
        _line("essay", "gemini", 9, (1000, 2000), 0.125, blocked=2),
        _line("essay", "-", 9, (0, 0), 0.0, mode="copy", template_id="idea-as-essay", blocked=3),
        _line("evaluation", "sonnet", 18, (3600, 900), 0.25),
    ]
    plan = summarize(lines, cohort_id="cohort_abc", hash_="0123456789abcdef")
    assert plan["plan"] == "0123456789abcdef" and plan["cohort_id"] == "cohort_abc"
    assert plan["count"] == 36
    assert plan["stages"] == {
        "essay": {
            "count": 18,
            "blocked_on_parent": 5,
            "input_tokens": 1000,
            "output_tokens": 2000,
            "usd": 0.125,
        },
        "evaluation": {
            "count": 18,
            "blocked_on_parent": 0,
            "input_tokens": 3600,
            "output_tokens": 900,
            "usd": 0.25,
        },
    }
    assert plan["total_usd"] == 0.375 and plan["known_usd"] == 0.375
    assert plan["unpriced_models"] == []
    assert [line["template_id"] for line in plan["lines"]] == ["t", "idea-as-essay", "t"]


def test_summarize_an_unpriced_model_makes_the_total_unknown() -> None:
    lines = [
        _line("evaluation", "sonnet", 2, (10, 10), None),
        _line("evaluation", "haiku", 2, (10, 10), 0.123456),
        _line("evaluation", "sonnet", 2, (10, 10), None, template_id="u"),
        _line("draft", "gemini", 1, (5, 5), 0.1),
    ]
    plan = summarize(lines, cohort_id=None, hash_="h")
    assert plan["total_usd"] is None
    assert plan["known_usd"] == round(0.123456 + 0.1, 4)  # 0.2235
    assert plan["unpriced_models"] == ["sonnet"]  # once, sorted
    assert plan["stages"]["evaluation"]["usd"] is None  # one unknown line makes the stage unknown
    assert plan["stages"]["evaluation"]["input_tokens"] == 30
    assert plan["stages"]["draft"]["usd"] == 0.1
    assert plan["cohort_id"] is None


def test_summarize_an_empty_plan() -> None:
    plan = summarize([], cohort_id="c", hash_="h")
    assert plan == {
        "plan": "h",
        "cohort_id": "c",
        "count": 0,
        "lines": [],
        "stages": {},
        "total_usd": 0,
        "known_usd": 0,
        "unpriced_models": [],
        "total_batch_usd": None,
    }


def test_batch_prices_show_beside_the_online_ones_for_lines_that_can_run_in_batches() -> None:
    """A line whose model has a batch endpoint costs its share in batches; the total with batches
    counts the others (no batch endpoint, copies) at their online price."""
    lines = [
        replace(_line("evaluation", "gpt", 10, (100, 100), 0.4), batch_share=0.5),
        _line("evaluation", "sonnet", 10, (100, 100), 0.25),
        replace(_line("essay", "-", 9, (0, 0), 0.0, mode="copy"), batch_share=0.5),
    ]
    plan = summarize(lines, cohort_id="c", hash_="h")
    assert [line["batch_usd"] for line in plan["lines"]] == [0.2, None, None]
    assert plan["total_usd"] == 0.65 and plan["total_batch_usd"] == 0.45
    unpriced = [replace(_line("evaluation", "gpt", 1, (1, 1), None), batch_share=0.5)]
    assert summarize(unpriced, cohort_id="c", hash_="h")["total_batch_usd"] is None


def test_observed_table_keys_rows_by_stage_template_and_model() -> None:
    rows = [
        {
            "stage": "draft",
            "template_id": "a",
            "model": "m",
            "calls": 3,
            "prompt_tokens": 10.0,
            "completion_tokens": 20.0,
            "cost": 0.5,
        },
        {
            "stage": "essay",
            "template_id": "a",
            "model": "m",
            "calls": 1,
            "prompt_tokens": None,
            "completion_tokens": None,
            "cost": None,
        },
    ]
    table = observed_table(rows)
    assert table[("draft", "a", "m")] == Observed(
        calls=3, prompt_tokens=10.0, completion_tokens=20.0, cost=0.5
    )
    assert table[("essay", "a", "m")] == Observed(calls=1)
    assert set(table) == {("draft", "a", "m"), ("essay", "a", "m")}
