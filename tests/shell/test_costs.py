"""``summary/costs.csv`` from a real run state: calls written by ``Store.complete``, read back per scope.

The state is made by the project's own ``Store`` (its migrations, and ``complete`` recording each
attempt as the pool does): generations are put in ``running`` under a lease, then completed with
their attempts. Every expected number below is worked out by hand from these calls:

==========  ==========  ========  =====  ==============================================  ========
gen         stage       template  model  attempts: outcome, seconds, tokens p/c/r, cost  cohort
==========  ==========  ========  =====  ==============================================  ========
d_a         draft       sketch    m1     429 0.5 s, no usage; ok 2 s, 100/40/10, $0.002  yes
d_b         draft       sketch    m1     ok 1 s, 120/60/-, $0.003 (listed twice)          yes
d_c         draft       sketch    m2     ok 4 s, 90/30/-, no cost                          yes
e_a         essay       polish    m1     ok 3 s, 200/100/0, $0.01                          yes
e_copy      essay       copy      -      none (a copy essay)                               yes
v_a         evaluation  judge     m2     timeout 30 s, no usage; ok 1.5 s, 300/5/-         yes
v_pending   evaluation  judge     m2     none (never run)                                  yes
d_x         draft       sketch    m1     ok 0.25 s, 10/10/-, $0.5                          no
==========  ==========  ========  =====  ==============================================  ========
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from daydreamd.cli.main import cli
from daydreamd.core.cohort import MEMBERSHIP_COLUMNS
from daydreamd.core.costs import COST_COLUMNS, COSTS, costs_table
from daydreamd.storage import costs as storage_costs
from daydreamd.storage.costs import read_call_groups
from daydreamd.storage.score_inputs import ResultsError
from daydreamd.storage.scores import write_table
from daydreamd.storage.store import AttemptRow, Completion, Store

COHORT = "cohort_costs"
CONFIG = """[paths]
data_dir = "data"
state_db = "state/dd.sqlite"
socket = "run/dd.sock"
[llm]
provider = "mock"
"""

# gen_id -> (stage, template, model, mode)
GENERATIONS = {
    "d_a": ("draft", "sketch", "m1", "llm"),
    "d_b": ("draft", "sketch", "m1", "llm"),
    "d_c": ("draft", "sketch", "m2", "llm"),
    "e_a": ("essay", "polish", "m1", "llm"),
    "e_copy": ("essay", "copy", "", "copy"),
    "v_a": ("evaluation", "judge", "m2", "llm"),
    "d_x": ("draft", "sketch", "m1", "llm"),
}


def ok(
    start: float,
    end: float,
    p: int,
    c: int,
    r: int | None = None,
    cost: float | None = None,
    attempt: int = 1,
) -> AttemptRow:
    """A successful call that reported its usage (``cost`` None: the provider gave no price)."""
    return AttemptRow(
        attempt=attempt,
        started_at=start,
        finished_at=end,
        outcome="ok",
        status=200,
        prompt_tokens=p,
        completion_tokens=c,
        total_tokens=p + c,
        reasoning_tokens=r,
        cost=cost,
    )


ATTEMPTS = {
    "d_a": (
        AttemptRow(attempt=1, started_at=100.0, finished_at=100.5, outcome="rate_limited", status=429),
        ok(101.0, 103.0, 100, 40, 10, 0.002, attempt=2),
    ),
    "d_b": (ok(200.0, 201.0, 120, 60, cost=0.003),),
    "d_c": (ok(300.0, 304.0, 90, 30),),
    "e_a": (ok(400.0, 403.0, 200, 100, 0, 0.01),),
    "e_copy": (),
    "v_a": (
        AttemptRow(attempt=1, started_at=500.0, finished_at=530.0, outcome="timeout"),
        ok(531.0, 532.5, 300, 5, attempt=2),
    ),
    "d_x": (ok(600.0, 600.25, 10, 10, cost=0.5),),
}
MEMBERS = ("d_a", "d_b", "d_c", "e_a", "e_copy", "v_a", "v_pending", "d_b")  # d_b twice; v_pending never ran

HEADER = ",".join(COST_COLUMNS)
COHORT_ROWS = [
    "by_template_model,draft,sketch,m1,3,2,1,2,220,100,10,0.005,1,false,1,2",
    "by_template_model,draft,sketch,m2,1,1,0,1,90,30,,,1,false,4,4",
    "stage_total,draft,,,4,3,1,3,310,130,10,0.005,2,false,1,4",
    "by_template_model,essay,polish,m1,1,1,0,1,200,100,0,0.01,0,true,3,3",
    "stage_total,essay,,,1,1,0,1,200,100,0,0.01,0,true,3,3",
    "by_template_model,evaluation,judge,m2,2,1,1,1,300,5,,,2,false,1.5,30",
    "stage_total,evaluation,,,2,1,1,1,300,5,,,2,false,1.5,30",
    "overall,,,,7,5,2,5,810,235,10,0.015,4,false,2,30",
]
"""The cohort's table, worked out by hand. Latencies: draft/sketch/m1 is [0.5, 1, 2] (p50 = rank
ceil(1.5) = 2 -> 1, p95 = rank ceil(2.85) = 3 -> 2); the draft total [0.5, 1, 2, 4] (ranks 2 and
ceil(3.8) = 4); the judge [1.5, 30] (ranks 1 and 2); overall [0.5, 1, 1.5, 2, 3, 4, 30] (ranks
ceil(3.5) = 4 -> 2 and ceil(6.65) = 7 -> 30). The 429 and the timeout are calls (failed ones, and
without a cost), d_b is counted once though listed twice, and neither the copy essay nor the
evaluation that never ran has a row."""
ALL_ROWS = [
    "by_template_model,draft,sketch,m1,4,3,1,3,230,110,10,0.505,1,false,0.5,2",
    "by_template_model,draft,sketch,m2,1,1,0,1,90,30,,,1,false,4,4",
    "stage_total,draft,,,5,4,1,4,320,140,10,0.505,2,false,1,4",
    *COHORT_ROWS[3:7],
    "overall,,,,8,6,2,6,820,245,10,0.515,4,false,1.5,30",
]
"""``--all`` adds d_x (not a member): draft/sketch/m1 is then [0.25, 0.5, 1, 2] (ranks 2 and 4), the
draft total [0.25, 0.5, 1, 2, 4] (ranks 3 and 5), overall 8 calls (ranks 4 and 8)."""


async def make_state(db_path: Path) -> None:
    """Every generation claimed (running, lease 1), then completed with its calls by ``Store.complete``."""
    async with Store.open(db_path) as store:
        async with store.transaction() as db:
            await db.executemany(
                "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
                "llm_model_id, replicate, mode, state, lease_token, created_at, updated_at) "
                "VALUES (?, ?, 0, '', 'c', ?, ?, 1, ?, 'running', 1, 'x', 'x')",
                [(gid, stage, tpl, model, mode) for gid, (stage, tpl, model, mode) in GENERATIONS.items()],
            )
        committed = await store.complete(
            [
                Completion(gen_id=gid, token=1, llm_model_id=model, ok=True, attempts=ATTEMPTS[gid])
                for gid, (_, _, model, _) in GENERATIONS.items()
            ]
        )
        assert committed == len(GENERATIONS)


def write_membership(data: Path, members: tuple[str, ...] = MEMBERS) -> None:
    """The cohort's ``membership.csv`` (the columns daydreamd writes) listing ``members``."""
    folder = data / "cohorts" / COHORT
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "membership.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MEMBERSHIP_COLUMNS)
        for gid in members:
            stage = GENERATIONS.get(gid, ("evaluation",))[0]
            writer.writerow((stage, gid, COHORT, "", "c", "t", "m", 1))


@pytest.fixture(name="root")
async def _root(tmp_path: Path) -> Path:
    """A config, a run state with the calls above, and the cohort's membership.csv."""
    (tmp_path / "config.toml").write_text(CONFIG)
    await make_state(tmp_path / "state" / "dd.sqlite")
    write_membership(tmp_path / "data")
    return tmp_path


def written(path: Path) -> list[str]:
    """A file's lines."""
    return path.read_text(encoding="utf-8").splitlines()


def as_csv(root: Path, cohort: str | None) -> list[str]:
    """The costs of ``cohort`` (None: every call) as the lines of the CSV file the real writer makes."""
    table = costs_table(read_call_groups(root / "state" / "dd.sqlite", root / "data", cohort))
    return written(write_table(root / "out" / str(cohort), table))


@pytest.mark.parametrize("probe_cost", [0, 10**9], ids=["members-first", "attempts-first"])
def test_cohort_costs_count_every_call_of_its_members(
    root: Path, probe_cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of reading a cohort's calls (member by member, or every attempt) give the hand-made table."""
    monkeypatch.setattr(storage_costs, "PROBE_COST", probe_cost)
    assert as_csv(root, COHORT) == [HEADER, *COHORT_ROWS]


def test_all_costs_count_every_call_in_the_run_state(root: Path) -> None:
    """--all is every attempt, a non-member's too, in one table (no cohort column)."""
    assert as_csv(root, None) == [HEADER, *ALL_ROWS]


def test_groups_carry_the_raw_sums(root: Path) -> None:
    """What the SQL hands over for one group: unknown sums are None, not 0; every call's seconds."""
    groups = read_call_groups(root / "state" / "dd.sqlite", root / "data", COHORT)
    judge = next(g for g in groups if g.stage == "evaluation")
    assert (judge.calls, judge.ok_calls, judge.generations, judge.priced_calls) == (2, 1, 1, 0)
    assert (judge.prompt_tokens, judge.completion_tokens, judge.reasoning_tokens, judge.cost_usd) == (
        300,
        5,
        None,
        None,
    )
    assert sorted(judge.latencies_s) == [1.5, 30.0]
    assert {(g.stage, g.template_id) for g in groups} == {
        ("draft", "sketch"),
        ("essay", "polish"),
        ("evaluation", "judge"),
    }  # no copy essay


def test_a_cohort_without_membership_is_a_clear_error(root: Path) -> None:
    with pytest.raises(ResultsError, match=r"membership\.csv"):
        read_call_groups(root / "state" / "dd.sqlite", root / "data", "cohort_unknown")
    with pytest.raises(ResultsError, match="no run state"):
        read_call_groups(root / "nowhere.sqlite", root / "data", None)


def test_a_cohort_without_calls_gets_the_header_alone(root: Path) -> None:
    write_membership(root / "data", ("e_copy", "v_pending"))
    assert as_csv(root, COHORT) == [HEADER]


# ---- through daydreamctl results -----------------------------------------------------------------


def invoke(root: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(root / "config.toml"), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_results_writes_the_costs_table_under_the_cohort(root: Path) -> None:
    """`daydreamctl results --cohort C` writes reports/summary/costs.csv beside the score tables."""
    code, stdout, stderr = invoke(root, "results", "--cohort", COHORT, "--json")
    assert code == 0, stderr
    path = root / "data" / "cohorts" / COHORT / "reports" / COSTS
    assert written(path) == [HEADER, *COHORT_ROWS]
    assert json.loads(stdout)["tables"][COSTS] == {"path": str(path), "rows": len(COHORT_ROWS)}
    code, _, stderr = invoke(root, "results", "--all", "--out", str(root / "all"))
    assert code == 0, stderr
    assert written(root / "all" / COSTS) == [HEADER, *ALL_ROWS]


def test_results_from_files_writes_no_costs_and_says_why(root: Path) -> None:
    """From the gens store there are no calls to count: no table, a warning on stderr naming an old one."""
    out = root / "files"
    code, stdout, stderr = invoke(
        root, "results", "--cohort", COHORT, "--from-files", "--out", str(out), "--json"
    )
    assert code == 0, stderr
    assert not (out / COSTS).exists() and COSTS not in json.loads(stdout)["tables"]
    assert f"warning: {COSTS} not written" in stderr and "earlier run" not in stderr
    (out / COSTS).write_text("old\n")
    _, _, stderr = invoke(root, "results", "--cohort", COHORT, "--from-files", "--out", str(out))
    assert f"{out / COSTS} is from an earlier run" in stderr
    assert (out / COSTS).read_text() == "old\n"
