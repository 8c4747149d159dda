"""The costs table's arithmetic (pure): percentiles, totals, unknown costs and tokens, row order."""

from __future__ import annotations

import pytest

from daydreamd.core.costs import COST_COLUMNS, COSTS, CallGroup, costs_table, format_usd, nearest_rank


def group(stage: str, template: str, model: str, **fields: object) -> CallGroup:
    values: dict[str, object] = {"calls": 1, "ok_calls": 1, "generations": 1, "latencies_s": (1.0,)}
    values.update(fields)
    return CallGroup(stage=stage, template_id=template, llm_model_id=model, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([], 50, None),
        ([7.0], 95, 7.0),
        ([1.0, 2.0], 50, 1.0),  # rank ceil(1.0) = 1: the lower one, not their mean
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([float(i) for i in range(1, 21)], 95, 19.0),  # rank ceil(19.0) = 19
        ([float(i) for i in range(1, 22)], 95, 20.0),  # rank ceil(19.95) = 20
        ([float(i) for i in range(1, 101)], 95, 95.0),
    ],
)
def test_nearest_rank(values: list[float], percent: int, expected: float | None) -> None:
    assert nearest_rank(values, percent) == expected


def test_dollars_keep_millionths_and_unknown_is_empty() -> None:
    assert [format_usd(v) for v in (None, 0.0, 0.000001, 0.0123456, 12.5, 0.1 + 0.2)] == [
        "",
        "0",
        "0.000001",
        "0.012346",
        "12.5",
        "0.3",
    ]


def test_totals_add_groups_and_merge_latencies() -> None:
    """A stage's total sums its groups; unknown token sums stay unknown; percentiles over all calls."""
    table = costs_table(
        [
            group(
                "draft",
                "t",
                "b",
                calls=3,
                ok_calls=2,
                generations=2,
                prompt_tokens=10,
                cost_usd=0.25,
                priced_calls=3,
                latencies_s=(9.0, 1.0, 5.0),
            ),
            group(
                "draft",
                "t",
                "a",
                calls=1,
                ok_calls=0,
                generations=1,
                prompt_tokens=None,
                cost_usd=None,
                priced_calls=0,
                latencies_s=(2.0,),
            ),
        ]
    )
    assert table.path == COSTS and table.columns == COST_COLUMNS
    rows = table.records()
    assert [(r["analysis_type"], r["llm_model_id"]) for r in rows] == [
        ("by_template_model", "a"),  # models in order within a template
        ("by_template_model", "b"),
        ("stage_total", ""),
        ("overall", ""),
    ]
    a, b, total, overall = rows
    assert (a["cost_usd"], a["unpriced_calls"], a["cost_complete"], a["prompt_tokens"]) == (
        "",
        1,
        "false",
        None,
    )
    assert (b["cost_usd"], b["unpriced_calls"], b["cost_complete"]) == ("0.25", 0, "true")
    assert (b["failed_calls"], b["latency_p50_s"], b["latency_p95_s"]) == (1, "5", "9")
    assert total == {
        "analysis_type": "stage_total",
        "stage": "draft",
        "template_id": "",
        "llm_model_id": "",
        "calls": 4,
        "ok_calls": 2,
        "failed_calls": 2,
        "generations": 3,
        "prompt_tokens": 10,
        "completion_tokens": None,
        "reasoning_tokens": None,
        "cost_usd": "0.25",  # a lower bound: the unpriced call says so
        "unpriced_calls": 1,
        "cost_complete": "false",
        "latency_p50_s": "2",  # [1, 2, 5, 9]: rank 2
        "latency_p95_s": "9",  # rank ceil(3.8) = 4
    }
    assert {k: v for k, v in overall.items() if k not in ("analysis_type", "stage")} == {
        k: v for k, v in total.items() if k not in ("analysis_type", "stage")
    }
    assert overall["stage"] == ""


def test_stages_in_flow_order_and_unknown_ones_last() -> None:
    table = costs_table([group("evaluation", "j", "m"), group("", "", "m"), group("draft", "d", "m")])
    stages = [(r["analysis_type"], r["stage"]) for r in table.records()]
    assert stages == [
        ("by_template_model", "draft"),
        ("stage_total", "draft"),
        ("by_template_model", "evaluation"),
        ("stage_total", "evaluation"),
        ("by_template_model", ""),
        ("stage_total", ""),
        ("overall", ""),
    ]


def test_no_calls_no_rows() -> None:
    """Nothing was called: the header alone, not an overall row of zeros that would read as free."""
    assert len(costs_table([]).rows) == 0
