"""Named cohorts with the real service: re-judge the top essays of the default cohort with a new
rubric, paying only for the new evaluations; scoping; removal; a fresh clone rebuilds the same cohort."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import anyio.to_thread

from tests.fakellm import FakeLlm
from tests.integration.daemon import Daemon, ctl, fast_config, make

NAME = "rejudge-top5"
CLARITY = (
    "Rate how clearly this essay states its idea.\nESSAY:\n{{ response }}\nEND OF ESSAY.\n"
    "Finish with a final line SCORE: X, X a whole number from 0 to 10.\n"
)


def add_clarity_judge(raw: Path) -> None:
    """An inactive evaluation template: the default cohort does not change, a spec may name it."""
    with (raw / "evaluation_templates.csv").open("a", encoding="utf-8") as f:
        f.write("clarity-judge,Clarity Judge,How clearly the idea is stated,in_last_line,llm,False,10\n")
    (raw / "templates" / "evaluation" / "clarity-judge.txt").write_text(CLARITY, encoding="utf-8")


async def run_ctl(daemon: Daemon, *args: str) -> str:
    result = await anyio.to_thread.run_sync(lambda: ctl(daemon, *args))
    assert result.returncode == 0, f"daydreamctl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


async def scoped(daemon: Daemon, cohort: str) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = await daemon.get("/v1/status", cohort=cohort)
    except Exception:  # not known yet (404) or not answering
        return None
    return status


async def wait_scoped(daemon: Daemon, cohort: str, predicate: Any, what: str, deadline_s: float = 30) -> Any:
    with anyio.fail_after(deadline_s):
        while True:
            status = await scoped(daemon, cohort)
            if status is not None and predicate(status["stages"]):
                return status
            await anyio.sleep(0.05)
    raise AssertionError(what)


def membership(path: Path) -> list[tuple[str, ...]]:
    with path.open(newline="", encoding="utf-8") as f:
        return sorted(tuple(row) for row in csv.reader(f))


async def test_rejudge_the_top_essays_with_a_new_rubric(
    tmp_path: Path, fake: FakeLlm, daemons: list[Daemon]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "clone" / "data").mkdir(parents=True)
    daemon = make(daemons, tmp_path / "run", fast_config(fake.base_url))
    add_clarity_judge(daemon.raw)
    await daemon.start()
    for stage in ("draft", "essay", "evaluation"):
        await daemon.approve(stage)
    base = await daemon.wait_stage("evaluation", done=36)
    default_id = base["cohort_id"]
    paid_before = fake.request_count

    # the choice, written as a spec folder the service picks up by itself
    out = await run_ctl(
        daemon, "cohort", "new", NAME, "--from-top", "5", "--by", "novelty-judge",
        "--evaluation-template", "clarity-judge",
    )  # fmt: skip
    assert NAME in out
    spec_dir = daemon.data / "cohorts" / NAME / "spec"
    assert (spec_dir / "config.yaml").is_file()

    # the chosen essays and their drafts exist: done at once; only the 5 new evaluations are pending
    status = await wait_scoped(
        daemon,
        NAME,
        lambda s: s["evaluation"]["pending"] == 5 and s["essay"]["done"] == 5,
        "the named cohort with 5 pending evaluations",
    )
    assert status["cohort_id"] == NAME
    assert status["stages"]["essay"]["pending"] == status["stages"]["draft"]["pending"] == 0
    assert 1 <= status["stages"]["draft"]["done"] <= 5
    default_now = await daemon.status()
    assert default_now is not None and default_now["cohort_id"] == default_id
    assert default_now["stages"]["evaluation"]["pending"] == 0  # the default cohort has none of them

    # approving the default cohort's evaluations finds nothing; the named cohort's pays exactly 5 calls
    assert (await daemon.approve("evaluation"))["matched"] == 0
    plan = await daemon.post("/v1/plans", {"stage": "evaluation", "cohort": NAME, "requested_by": "test"})
    approved = await daemon.approve("evaluation", cohort=NAME, plan=plan["plan"])
    assert approved["matched"] == 5 and approved["cohort_id"] == NAME
    await wait_scoped(
        daemon, NAME, lambda s: s["evaluation"]["done"] == 5 and not s["evaluation"]["queued"], "5 done"
    )
    assert fake.request_count - paid_before == 5
    assert len(fake.requests_for("Rate how clearly")) == 5

    # results of that cohort hold only its members: the 5 new evaluations
    tables = tmp_path / "tables"
    await run_ctl(daemon, "results", "--cohort", NAME, "--out", str(tables))
    with (tables / "parsing" / "aggregated_scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert {row["evaluation_template"] for row in rows} == {"clarity-judge"}

    listing = await daemon.get("/v1/cohorts")
    names = [entry["cohort_id"] for entry in listing["cohorts"]]
    assert names == [default_id, NAME]
    assert listing["cohorts"][1]["stages"]["evaluation"]["done"] == 5
    cli_list = await run_ctl(daemon, "cohort", "list")
    assert NAME in cli_list and default_id in cli_list

    # a fresh clone of the experiment (1_raw and the spec, no run state) rebuilds the same membership
    original = membership(daemon.data / "cohorts" / NAME / "membership.csv")
    shutil.copytree(daemon.raw, tmp_path / "clone" / "data" / "1_raw")
    clone = make(daemons, tmp_path / "clone", fast_config(fake.base_url))
    shutil.copytree(spec_dir, clone.data / "cohorts" / NAME / "spec")
    await clone.start()
    await wait_scoped(clone, NAME, lambda s: s["evaluation"]["pending"] == 5, "the clone's named cohort")
    assert membership(clone.data / "cohorts" / NAME / "membership.csv") == original
    await clone.stop()

    # removing the spec retires what only it held (the 5 new evaluations), nothing of the default cohort
    shutil.rmtree(spec_dir)
    await daemon.wait_for(
        lambda s: s is not None and s["stages"]["evaluation"]["retired"] == 5,
        what="the named cohort's own evaluations retired",
    )
    after = await daemon.status()
    assert after is not None
    for stage, done in (("draft", 9), ("essay", 18), ("evaluation", 36)):
        assert after["stages"][stage]["done"] == done
    assert [entry["cohort_id"] for entry in (await daemon.get("/v1/cohorts"))["cohorts"]] == [default_id]
    assert await daemon.stop() == 0


async def test_spec_edits_rebuild_and_a_broken_spec_keeps_its_last_good_membership(
    tmp_path: Path, fake: FakeLlm, daemons: list[Daemon]
) -> None:
    daemon = make(daemons, tmp_path, fast_config(fake.base_url))
    deep = daemon.data / "cohorts" / "a-deep" / "spec"  # sorted first: it must not stop the others
    deep.mkdir(parents=True)
    (deep / "config.yaml").write_text("axes:\n  evaluation_template: " + "[" * 600 + "]" * 600 + "\n")
    await daemon.start()
    spec = daemon.data / "cohorts" / "one-judge" / "spec"
    spec.mkdir(parents=True)
    (spec / "config.yaml").write_text("axes:\n  evaluation_template: [novelty-judge]\n")
    await wait_scoped(
        daemon,
        "one-judge",
        lambda s: (s["essay"]["pending"], s["evaluation"]["pending"]) == (18, 18),
        "built",
    )

    # a broken spec: its file and line in status, the cohort as it was
    (spec / "config.yaml").write_text(
        "axes:\n  evaluation_template: [novelty-judge]\n  essay_template: [ghost]\n"
    )
    status = await daemon.wait_for(
        lambda s: (
            s is not None and any(e.get("file") == "cohorts/one-judge/spec/config.yaml" for e in s["errors"])
        ),
        what="the spec's error in status",
    )
    error = next(e for e in status["errors"] if e.get("file") == "cohorts/one-judge/spec/config.yaml")
    assert error["line"] == 3 and "ghost" in error["message"]
    assert any("a-deep" in str(e.get("file")) and "nests more than" in e["message"] for e in status["errors"])
    kept = await scoped(daemon, "one-judge")
    assert kept is not None and kept["stages"]["evaluation"]["pending"] == 18

    # fixed: rebuilt from the new spec (half the essays), the error gone
    (spec / "config.yaml").write_text("axes:\n  essay_template: [polished-essay]\n")
    await wait_scoped(
        daemon,
        "one-judge",
        lambda s: (s["essay"]["pending"], s["evaluation"]["pending"]) == (9, 18),
        "rebuilt",
    )
    # the membership is synced before the rebuild that synced it ends and puts its problems in force
    after = await daemon.wait_for(
        lambda s: s is not None and not any("one-judge" in str(e.get("file")) for e in s["errors"]),
        what="the spec's error gone after the fix",
    )
    assert after["stages"]["evaluation"]["pending"] == 36  # the default cohort is untouched
    assert await daemon.stop() == 0
