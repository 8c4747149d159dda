"""A screenshot-free check of ``daydreamctl status``: a known ``/v1/status`` rendered to plain text.

The view is built from the status document alone, so rendering a hand-written document on a
colourless, fixed-width console gives text the tests can read line by line: the progress bars
(``━`` per full cell, ``╸`` for a half cell), done/approved figures, rates, ETAs, failures by
kind, per-model limits, spend, budgets, the paused and parked notices and the input problems.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from daydreamd.cli.statusview import render_status

FULL, HALF = "━", "╸"
BAR_WIDTH = 24

STATUS: dict[str, Any] = {
    "cohort_id": "cohort_0123456789ab",
    "in_flight": 3,
    "spent_usd": 1.5,
    "pool": {
        "concurrency": 8,
        "paused": True,
        "paused_models": ["gemini_25_flash"],
        "parked": {"all": {"resumes_in_s": 42.5}},
        "budgets": {
            "1": {"budget_usd": 2.0, "spent_usd": 1.25, "exhausted": False},
            "4": {"budget_usd": 0.35, "spent_usd": 0.3, "exhausted": True},
        },
    },
    "stages": {
        "draft": {"pending": 0, "queued": 0, "running": 0, "done": 9, "failed": 0, "retired": 0},
        "essay": {"pending": 0, "queued": 10, "running": 3, "done": 5, "failed": 0, "retired": 2},
        "evaluation": {"pending": 30, "queued": 0, "running": 0, "done": 2, "failed": 4, "retired": 0},
    },
    "rates_per_minute": {"draft": 4.5, "essay": 2.0},
    "failures": {"evaluation": {"parse_error": 1, "auth": 3}},
    "models": {
        "gemini_25_flash": {
            "in_flight": 3,
            "concurrency": 2,
            "max_concurrency": 4,
            "requests_per_minute": 60,
            "requests_last_minute": 17,
            "paused": True,
            "cost_usd": 1.5,
            "unpriced_calls": 0,
        },
        "sonnet_4": {
            "in_flight": 0,
            "concurrency": 8,
            "max_concurrency": 8,
            "requests_per_minute": 0,
            "requests_last_minute": 5,
            "paused": False,
            "cost_usd": 0.0,
            "unpriced_calls": 2,
        },
    },
    "errors": [
        {
            "level": "error",
            "file": "1_raw/llm_models.csv",
            "line": 2,
            "column": None,
            "message": "for_generation: 'maybe' is not a boolean",
        },
        {
            "level": "warning",
            "file": "1_raw/draft_templates.csv",
            "line": None,
            "column": None,
            "message": "template file is missing",
        },
    ],
}


def render(status: dict[str, Any], width: int = 120) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(render_status(status))
    return buffer.getvalue()


def row(text: str, first: str) -> list[str]:
    """The cells of the line starting with ``first``, split on whitespace."""
    (line,) = [line for line in text.splitlines() if line.split()[:1] == [first]]
    return line.split()


def bar_of(cells: list[str]) -> str:
    """The progress bar cell of a stage row (only bar characters), or '' when nothing is done."""
    return next((cell for cell in cells[1:] if set(cell) <= {FULL, HALF}), "")


def test_header_shows_cohort_in_flight_and_spend() -> None:
    first = render(STATUS).splitlines()[0]
    assert first.split() == ["cohort", "cohort_0123456789ab", "in", "flight", "3/8", "spent", "$1.50"]


def test_stage_rows_have_bars_figures_rates_and_etas() -> None:
    text = render(STATUS)
    header = text.splitlines()[1].split()
    assert header == ["stage", "progress", "done/approved", "rate/min", "eta", "running", "pending", "failed"]

    draft = row(text, "draft")
    assert bar_of(draft) == FULL * BAR_WIDTH  # 9 of 9: a full bar
    assert draft[2:] == ["9/9", "4.5", "-", "0", "0", "0"]

    essay = row(text, "essay")
    # 5 of 18 (done + queued + running + failed; retired and pending are not approved work):
    # 24 cells x 5/18 = 6.67 cells, drawn in half cells: 13 halves = 6 full cells and a half.
    assert bar_of(essay) == FULL * 6 + HALF
    # 13 left at 2 a minute: 6.5 minutes, shown as whole minutes.
    assert essay[2:] == ["5/18", "2", "6m", "3", "0", "0"]

    evaluation = row(text, "evaluation")
    assert bar_of(evaluation) == FULL * 8  # 2 of 6 (2 done + 4 failed): a third
    # Nothing left to run (the rest failed): no ETA; failures by kind, sorted by kind.
    assert evaluation[2:] == ["2/6", "-", "-", "0", "30", "auth", "3,", "parse_error", "1"]


def test_model_rows_show_limits_requests_spend_and_pause() -> None:
    text = render(STATUS)
    assert text.splitlines()[5].split() == ["model", "in", "flight", "limit", "max", "req/min", "spent"]
    assert row(text, "gemini_25_flash") == ["gemini_25_flash", "paused", "3", "2", "4", "17/60", "$1.50"]
    # No rpm limit: requests only; calls without a price are flagged rather than shown as free.
    assert row(text, "sonnet_4") == ["sonnet_4", "0", "8", "8", "5", "$0.00", "+", "unpriced"]


def test_notices_for_pause_parking_budgets_and_problems() -> None:
    lines = [line.rstrip() for line in render(STATUS).splitlines()]
    assert lines[8:] == [
        "all work is paused (daydreamctl resume)",
        "parked after a quota error: all, resumes in 42.5 s",
        "approval 1: spent $1.25 of $2.00",
        "approval 4: spent $0.30 of $0.35 (budget reached: no new calls)",
        "problems in data/1_raw (2):",
        "  1_raw/llm_models.csv:2: error: for_generation: 'maybe' is not a boolean",
        "  1_raw/draft_templates.csv: warning: template file is missing",
    ]


def test_a_quiet_service_shows_empty_bars_and_no_notices() -> None:
    quiet = {
        **STATUS,
        "pool": {"concurrency": 8, "paused": False, "parked": {}, "budgets": {}},
        "models": {},
        "errors": [],
        "failures": {},
        "rates_per_minute": {},
        "stages": {
            "draft": {"pending": 9, "queued": 0, "running": 0, "done": 0, "failed": 0, "retired": 0},
            "essay": {"pending": 18, "queued": 0, "running": 0, "done": 0, "failed": 0, "retired": 0},
            "evaluation": {"pending": 36, "queued": 0, "running": 0, "done": 0, "failed": 0, "retired": 0},
        },
    }
    text = render(quiet)
    for stage, pending in (("draft", "9"), ("essay", "18"), ("evaluation", "36")):
        cells = row(text, stage)
        assert bar_of(cells) == ""  # nothing done: no filled cells (a colourless console draws no track)
        assert cells[1:] == ["0/0", "-", "-", "0", pending, "0"]
    assert FULL not in text and HALF not in text
    assert "paused" not in text and "parked" not in text and "approval" not in text and "problems" not in text
    assert len(text.splitlines()) == 5  # header, table header, three stages: no model table without models


def test_unknown_rate_and_long_etas() -> None:
    busy = {
        **STATUS,
        "stages": {
            "draft": {"pending": 0, "queued": 360, "running": 0, "done": 0, "failed": 0, "retired": 0},
            "essay": {"pending": 0, "queued": 100, "running": 0, "done": 0, "failed": 0, "retired": 0},
        },
        "rates_per_minute": {"draft": 2.0},
        "failures": {},
    }
    text = render(busy)
    assert row(text, "draft")[1:5] == ["0/360", "2", "3.0h", "0"]  # 180 minutes: in hours
    assert row(text, "essay")[1:5] == ["0/100", "-", "?", "0"]  # work left but no rate yet
    assert row(text, "evaluation")[1:3] == ["0/0", "-"]  # a stage missing from the document: zeros


def test_a_document_with_nothing_in_it_still_renders() -> None:
    text = render({})
    assert text.splitlines()[0].split() == [
        "cohort",
        "(none",
        "yet)",
        "in",
        "flight",
        "0/?",
        "spent",
        "$0.00",
    ]
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["draft", "essay", "evaluation"]


def test_large_counts_use_thousands_separators() -> None:
    big = {
        "stages": {
            "evaluation": {"pending": 12345, "queued": 1000, "running": 500, "done": 98500, "failed": 0},
        },
        "rates_per_minute": {"evaluation": 250.0},
    }
    cells = row(render(big), "evaluation")
    assert cells[1:] == [FULL * 23 + HALF, "98,500/100,000", "250", "6m", "500", "12,345", "0"]


def test_an_80_column_terminal_keeps_every_header_whole() -> None:
    text = render(STATUS, width=80)
    assert "done/approved" in text.splitlines()[1]


def test_endpoint_rows_show_calls_requests_and_tokens_against_their_limits() -> None:
    """With several endpoints, each gets a row; with one (the [llm] alone), none is shown."""
    endpoints = {
        "llm": {"in_flight": 2, "models": ["gemini_25_flash"], "requests_last_minute": 40},
        "vllm-a": {
            "in_flight": 3,
            "concurrency": 8,
            "requests_per_minute": 500,
            "requests_last_minute": 120,
            "tokens_per_minute": 90000,
            "tokens_last_minute": 45000,
            "models": ["llama", "qwen"],
        },
    }
    text = render({**STATUS, "endpoints": endpoints})
    assert row(text, "endpoint") == ["endpoint", "in", "flight", "req/min", "tokens/min", "models"]
    assert row(text, "llm") == ["llm", "2", "40", "0", "gemini_25_flash"]
    assert row(text, "vllm-a") == ["vllm-a", "3/8", "120/500", "45000/90000", "llama,", "qwen"]
    single = render({**STATUS, "endpoints": {"llm": endpoints["llm"]}})
    assert "endpoint" not in single


def test_batch_rows_show_each_batch_here_and_at_the_provider_with_its_counts_and_age() -> None:
    """A row per batch; a batch whose step is being tried again says so, and its problem is a notice."""
    batches = [
        {
            "id": 731,
            "endpoint": "oai",
            "model": "gpt_4o",
            "stage": "evaluation",
            "state": "submitted",
            "provider_state": "in_progress",
            "requests": 1000,
            "completed": 420,
            "failed": 2,
            "age_s": 5400.0,
        },
        {
            "id": 732,
            "endpoint": "oai",
            "model": "gpt_4o",
            "stage": "evaluation",
            "state": "submitting",
            "provider_state": None,
            "requests": 12,
            "age_s": 30.0,
            "problem": "POST /batches: HTTP 503: busy",
        },
    ]
    text = render({**STATUS, "batches": batches})
    header = ["batch", "model", "endpoint", "state", "provider", "done", "failed", "age"]
    assert header in [line.split() for line in text.splitlines()]
    assert row(text, "731") == ["731", "gpt_4o", "oai", "submitted", "in_progress", "420/1000", "2", "90m"]
    assert row(text, "732") == [
        "732",
        "gpt_4o",
        "oai",
        "submitting",
        "(retrying)",
        "0/12",
        "0",
        "30s",
    ]  # no provider state yet
    assert "batch 732: POST /batches: HTTP 503: busy (trying again)" in text
    assert "provider" not in render(STATUS)
