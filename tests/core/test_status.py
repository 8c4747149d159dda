"""The ``/v1/status`` document as types: ``to_json`` is the socket's shape, ``from_json`` reads it back.

A full document (every key the daemon sends, in its order) survives a round trip unchanged; a
partial one (another version's, a test's) reads with zeros and unknowns instead of raising.
"""

from __future__ import annotations

import json
from typing import Any

from daydreamd.core.problems import error, warning
from daydreamd.core.stages import State
from daydreamd.core.status import (
    CohortProgress,
    ModelStatus,
    PoolStatus,
    ProblemStatus,
    RebuildStatus,
    ServiceStatus,
    StageCounts,
)


def counts(**states: int) -> dict[str, int]:
    return {"pending": 0, "queued": 0, "running": 0, "done": 0, "failed": 0, "retired": 0, **states}


FULL: dict[str, Any] = {
    "version": "0.4.0",
    "started_at": "2025-01-31T12:00:00.000Z",
    "uptime_s": 12.5,
    "cohort_id": "cohort_0123456789ab",
    "stages": {
        "draft": counts(done=9),
        "essay": counts(queued=10, running=3, done=5, retired=2),
        "evaluation": counts(pending=30, done=2, failed=4),
    },
    "in_flight": 3,
    "models": {
        "gemini_25_flash": {
            "in_flight": 3,
            "concurrency": 2,
            "max_concurrency": 4,
            "requests_per_minute": 60,
            "requests_last_minute": 17,
            "provider": "openrouter",
            "paused": True,
            "cost_usd": 1.5,
            "unpriced_calls": 0,
        }
    },
    "endpoints": {
        "vllm-a": {
            "in_flight": 3,
            "concurrency": 8,
            "requests_per_minute": 500,
            "requests_last_minute": 120,
            "tokens_per_minute": 90000,
            "tokens_last_minute": 45000,
            "models": ["llama", "qwen"],
        }
    },
    "pool": {
        "concurrency": 8,
        "paused": False,
        "paused_models": ["gemini_25_flash"],
        "parked": {"all": {"resumes_in_s": 42.5}},
        "outcomes": {"done": 16, "parse_error": 1},
        "budgets": {"1": {"budget_usd": 2.0, "spent_usd": 1.25, "exhausted": False}},
        "troubles": [
            {
                "what": "provider_down",
                "since": "2026-01-01T00:00:00Z",
                "message": "",
                "next_try_in_s": 4.5,
                "waiting": 0,
            }
        ],
    },
    "spent_usd": 1.5,
    "rates_per_minute": {"draft": 4.5},
    "failures": {"evaluation": {"parse_error": 1, "auth": 3}},
    "recent_errors": {"rate_limit": 2},
    "errors": [
        {
            "level": "error",
            "file": "1_raw/llm_models.csv",
            "line": 2,
            "column": "for_generation",
            "message": "x",
        }
    ],
    "last_rebuild": {
        "at": "2025-01-31T12:00:00.100Z",
        "reason": "startup",
        "fingerprint": "f00",
        "ok": True,
        "duration_ms": 12.3,
        "added": 63,
        "retired": 0,
        "revived": 0,
    },
    "rebuilds": 1,
    "parent_changed": {"essay": 2},
    "cohort_progress": {
        "phase": "syncing",
        "reason": "watch",
        "started_at": "2025-01-01T00:00:00Z",
        "elapsed_s": 4.2,
        "generations": 1304160,
        "done": 40000,
        "total": 948480,
    },
    "batches": [
        {
            "id": 3,
            "endpoint": "oai",
            "model": "gpt_4o",
            "stage": "evaluation",
            "state": "submitted",
            "provider_state": "in_progress",
            "requests": 1000,
            "completed": 420,
            "failed": 2,
            "age_s": 3600.0,
            "problem": "GET /batches/b: HTTP 503: busy",
        }
    ],
}


def test_a_full_document_round_trips_exactly_with_its_key_order() -> None:
    back = ServiceStatus.from_json(json.loads(json.dumps(FULL))).to_json()
    assert back == FULL
    assert json.dumps(back) == json.dumps(FULL)  # same keys in the same order, all the way down


def test_an_empty_document_reads_as_zeros_and_unknowns() -> None:
    status = ServiceStatus.from_json({})
    assert status.cohort_id is None and status.in_flight is None
    assert status.pool == PoolStatus() and status.pool.concurrency is None
    assert status.stage("draft") == StageCounts()
    assert status.errors == () and status.last_rebuild is None
    assert status.to_json()["last_rebuild"] == {}


def test_partial_and_odd_values_never_raise() -> None:
    status = ServiceStatus.from_json(
        {
            "stages": {"draft": {"done": 1, "failed": "many"}, "essay": None},
            "models": {"m": {"limit": 3}, "n": "busy"},
            "pool": {"parked": {"all": 812.5}, "paused_models": "m"},
            "errors": ["boom", {"file": "1_raw/x.csv"}],
            "spent_usd": "lots",
        }
    )
    assert status.stage("draft") == StageCounts(done=1)
    assert status.stage("essay") == StageCounts()
    assert status.models["m"].concurrency == 3  # what older daemons called the limit
    assert status.models["n"] == ModelStatus()
    assert list(status.pool.parked) == ["all"] and status.pool.parked["all"].resumes_in_s is None
    assert status.pool.paused_models == ()
    assert [e.is_error for e in status.errors] == [True, True]
    assert status.spent_usd == 0.0


def test_stage_counts_follow_the_state_enum() -> None:
    stage = StageCounts.from_counts(counts(pending=1, queued=2, running=3, done=4, failed=5, retired=6))
    assert [stage.count(state) for state in State] == [1, 2, 3, 4, 5, 6]
    assert stage.approved == 2 + 3 + 4 + 5
    assert list(stage.to_json()) == [state.value for state in State]


def test_problems_keep_the_loader_shape() -> None:
    for problem in (error("1_raw/a.csv", "bad", line=3, column="c"), warning("1_raw/b.csv", "meh")):
        assert ProblemStatus.from_problem(problem).to_json() == problem.to_dict()


def test_a_limit_read_back_keeps_its_number_type() -> None:
    """4 stays 4 and 4.0 stays 4.0: the views print them as they came."""
    assert ModelStatus.from_json({"concurrency": 4}).concurrency.__class__ is int
    assert ModelStatus.from_json({"concurrency": 4.0}).concurrency.__class__ is float


def test_rebuild_status_round_trips() -> None:
    rebuild = RebuildStatus(at="t", reason="watch", fingerprint="f", ok=False, duration_ms=1.0)
    assert RebuildStatus.from_json(rebuild.to_json()) == rebuild


def test_cohort_progress_reads_back_and_describes_the_phase() -> None:
    status = ServiceStatus.from_json(FULL)
    assert status.cohort_progress is not None
    assert status.cohort_progress.describe() == (
        "building cohort: syncing 40,000 of 948,480 changes (1,304,160 generations, 4 s)"
    )
    building = CohortProgress(phase="building", elapsed_s=2.0)
    assert building.describe() == "building cohort: building (2 s)"
    assert ServiceStatus.from_json({"cohort_progress": None}).cohort_progress is None
    assert ServiceStatus.from_json({}).to_json()["cohort_progress"] is None
