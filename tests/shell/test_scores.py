"""Score rows from SQLite and from files, and the ``results`` verb, on a real finished run.

The run is made with the service's own parts: the example experiment (a tmp copy of
``data/1_raw`` with two judges, two evaluation replicates and ``score_max`` 9 for one template),
the cohort written by ``write_cohort``, its membership synced into a ``Store``, every stage
approved, and each claimed generation run by ``Runner`` against an offline panel of judges (mock
replies, a score per judge and per call, some replies empty or without a verdict), then
committed with ``Store.complete`` exactly as the pool does.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from daydreamd.cli import results as ctl_results
from daydreamd.cli.main import cli
from daydreamd.core.build import read_and_build
from daydreamd.core.cohort import Cohort
from daydreamd.core.config import Settings, load_settings
from daydreamd.core.experiment import Generator
from daydreamd.core.jobs import Jobs
from daydreamd.core.results import SCORE_COLUMNS, build_tables
from daydreamd.core.scores import Scores
from daydreamd.core.stages import STAGES
from daydreamd.core.table import AGGREGATED_SCORES, CROSS_EXPERIMENT, FINAL_RESULTS, Table
from daydreamd.daemon.runner import Runner
from daydreamd.llm.offline import MockProvider
from daydreamd.llm.types import LlmRequest, Reply
from daydreamd.storage.cohort_files import all_memberships, write_cohort
from daydreamd.storage.gens import GensStore
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.score_db import read_rows_from_db
from daydreamd.storage.score_files import read_rows_from_files
from daydreamd.storage.score_inputs import ResultsError
from daydreamd.storage.scores import load_scores, write_table, write_tables
from daydreamd.storage.store import Completion, Store

ctl_results.register(cli)  # until daydreamd.cli.main registers them itself (idempotent)

ROOT = Path(__file__).parents[2]
EXAMPLE_RAW = ROOT / "data" / "1_raw"
CONFIG = """[paths]
data_dir = "data"
state_db = "state/dd.sqlite"
socket = "run/dd.sock"
[llm]
provider = "mock"
"""


# ---- the run -------------------------------------------------------------------------------------


class JudgePanel:
    """Mock replies; judges score by their own hash, per call, and some replies are unusable.

    About one evaluation reply in eleven is empty (``empty``) and one in eleven has no verdict
    (``parse_error``); the others end with ``SCORE: n``, n in 0..10 (clipped to 9 for the
    template whose scale is 0..9, so that its top score occurs).
    """

    def __init__(self) -> None:
        self.inner = MockProvider()
        self.calls: Counter[tuple[str, str]] = Counter()

    async def complete(self, request: LlmRequest) -> Reply:
        reply = await self.inner.complete(request)
        if request.stage != "evaluation":
            return reply
        self.calls[(request.model, request.prompt)] += 1
        seed = f"{request.model}|{request.prompt}|{self.calls[(request.model, request.prompt)]}"
        n = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
        if n % 11 == 0:
            text = ""
        elif n % 11 == 1:
            text = "I cannot decide on this one.\nNo verdict.\n"
        else:
            score = n % 13 if n % 13 <= 10 else 10
            if "rigor" in request.prompt.lower() or "criterion" in request.prompt.lower():
                score = min(score, 9)
            text = f"Judged by {request.model}.\nReasonable essay.\nSCORE: {score}\n"
        return replace(reply, text=text)


@dataclass(frozen=True, slots=True)
class Run:
    """A finished run on disk: its config, settings, cohort and where things are."""

    root: Path
    config: Path
    settings: Settings
    cohort: Cohort

    @property
    def data(self) -> Path:
        return self.settings.paths.data_dir

    @property
    def db(self) -> Path:
        return self.settings.paths.state_db


def prepare_experiment(root: Path) -> Path:
    """A copy of the example experiment: two judges, 2 evaluation replicates, rigor-judge on 0..9."""
    raw = root / "data" / "1_raw"
    shutil.copytree(EXAMPLE_RAW, raw)
    models = raw / "llm_models.csv"
    models.write_text(
        models.read_text().replace(
            "gpt_4o_mini,openai/gpt-4o-mini,openai,GPT-4o mini,false,false",
            "gpt_4o_mini,openai/gpt-4o-mini,openai,GPT-4o mini,false,true",
        )
    )
    (raw / "replication_config.csv").write_text("stage,replicates\ndraft,1\nessay,1\nevaluation,2\n")
    templates = raw / "evaluation_templates.csv"
    templates.write_text(templates.read_text().replace("complex,llm,True,10", "complex,llm,True,9"))
    config = root / "config.toml"
    config.write_text(CONFIG)
    return config


async def run_everything(root: Path) -> Run:
    """Build, sync, approve and run the whole cohort to the end; returns the finished run."""
    config = prepare_experiment(root)
    settings = load_settings(config, {})
    build = read_and_build(settings)
    assert build.cohort is not None, build.problems
    cohort = build.cohort
    write_cohort(settings.paths.data_dir, cohort)
    jobs = Jobs(build.experiment, settings)
    modes = {
        (t.stage, t.template_id): ("copy" if t.generator is Generator.COPY else "llm")
        for t in build.experiment.templates
    }
    runner = Runner(store=GensStore(settings.paths.data_dir), provider=JudgePanel())
    async with Store.open(settings.paths.state_db) as store:
        await store.sync_membership(cohort, modes, build.raw.fingerprint)
        for stage in STAGES:
            await store.approve(
                stage=str(stage),
                template_id=None,
                llm_model_id=None,
                limit=None,
                requested_by="test",
                cohort_id=cohort.cohort_id,
            )
        while True:
            claims = [
                c
                for mode in ("llm", "copy")
                for c in await ReadyWork(store).claim((mode, None), limit=10_000, lease_s=600)
            ]
            if not claims:
                break
            completions = []
            for claim in claims:
                job = jobs.job(claim.generation)
                assert job is not None
                outcome = await runner.run(job)
                completions.append(
                    Completion(
                        gen_id=claim.generation.gen_id,
                        token=claim.token,
                        llm_model_id=claim.generation.llm_model_id,
                        ok=outcome.ok,
                        error_kind=str(outcome.kind) if outcome.kind else None,
                        error_message=outcome.message or None,
                        score=outcome.score,
                    )
                )
            await store.complete(completions)
    return Run(root, config, settings, cohort)


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One finished run shared by this module's tests (they only read it)."""
    return asyncio.run(run_everything(tmp_path_factory.mktemp("run")))


def invoke(run: Run, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(run.config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.csv"))}


# ---- the run itself ------------------------------------------------------------------------------


def test_run_has_scores_and_failures_of_two_kinds(run: Run) -> None:
    """The fixture's run is what the other tests assume: every evaluation finished, some failed."""
    db = sqlite3.connect(run.db)
    states = dict(
        db.execute("SELECT state, count(*) FROM generations WHERE stage = 'evaluation' GROUP BY state")
    )
    kinds = {k for (k,) in db.execute("SELECT DISTINCT error_kind FROM generations WHERE state = 'failed'")}
    db.close()
    assert sum(states.values()) == run.cohort.counts()["evaluation"] == 144
    assert states["done"] > 100 and states["failed"] > 0
    assert kinds == {"empty", "parse_error"}


# ---- both sources --------------------------------------------------------------------------------


def test_sqlite_and_files_give_identical_tables(run: Run, tmp_path: Path) -> None:
    """--from-files and the run state produce byte-identical tables, for the cohort and for --all."""
    for cohort_id in (run.cohort.cohort_id, None):
        from_db, _ = load_scores(data_dir=run.data, db_path=run.db, cohort_id=cohort_id, from_files=False)
        from_files, _ = load_scores(data_dir=run.data, db_path=run.db, cohort_id=cohort_id, from_files=True)
        cross = cohort_id is None
        a = write_tables(tmp_path / f"db-{cross}", build_tables(from_db, cross_experiment=cross))
        b = write_tables(tmp_path / f"files-{cross}", build_tables(from_files, cross_experiment=cross))
        assert len(a) == len(b) == (10 if cross else 9)
        assert tree(tmp_path / f"db-{cross}") == tree(tmp_path / f"files-{cross}")
        assert len(from_db) == 144


def test_rows_carry_the_whole_lineage(run: Run) -> None:
    """Each row names its essay, draft, combo, concepts, templates, models, replicate, scale and cohort."""
    loaded = read_rows_from_db(run.db, run.data, cohort_id=run.cohort.cohort_id)
    members = {g.gen_id: g for g in run.cohort.generations}
    combos = {c.combo_id: c.concept_ids for c in run.cohort.combos}
    for row in loaded.rows:
        evaluation = members[row.gen_id]
        essay = members[row.essay_gen_id]
        draft = members[row.draft_gen_id]
        assert evaluation.parent_gen_id == essay.gen_id and essay.parent_gen_id == draft.gen_id
        assert (row.evaluation_template, row.evaluation_model) == (
            evaluation.template_id,
            evaluation.llm_model_id,
        )
        assert (row.essay_template, row.draft_template) == (essay.template_id, draft.template_id)
        assert row.generation_model == draft.llm_model_id == "gemini_25_flash"
        assert row.replicate == evaluation.replicate
        assert row.concept_ids == combos[row.combo_id]
        assert row.score_max == (9.0 if row.evaluation_template == "rigor-judge" else 10.0)
        assert row.cohorts == (run.cohort.cohort_id,)
        assert (run.data / row.essay_path).is_file()
        if row.ok:
            assert (run.data / row.evaluation_path).is_file()


def test_failed_evaluations_are_rows_with_their_error_kind(run: Run) -> None:
    """Failed evaluations are listed (no score, their kind and message), from both sources."""
    db = sqlite3.connect(run.db)
    failed = dict(
        db.execute(
            "SELECT gen_id, error_kind FROM generations WHERE stage = 'evaluation' AND state = 'failed'"
        )
    )
    db.close()
    for loaded in (
        read_rows_from_db(run.db, run.data, cohort_id=None),
        read_rows_from_files(run.data, cohort_id=None),
    ):
        rows = {r.gen_id: r for r in loaded.rows if not r.ok}
        assert {g: r.error_kind for g, r in rows.items()} == failed
        assert all(r.score is None and r.error_message for r in rows.values())


def test_cohort_scope_keeps_only_its_members(run: Run, tmp_path: Path) -> None:
    """A cohort's results hold only its evaluations; --all lists each row's cohorts (several if shared)."""
    data = tmp_path / "data"
    shutil.copytree(run.data, data)
    members = run.data / "cohorts" / run.cohort.cohort_id / "membership.csv"
    lines = members.read_text().splitlines(keepends=True)
    evaluations = [line for line in lines[1:] if line.startswith("evaluation,")]
    other = data / "cohorts" / "cohort_small" / "membership.csv"
    other.parent.mkdir(parents=True)
    other.write_text(lines[0] + "".join(evaluations[:5]))
    small = read_rows_from_db(run.db, data, cohort_id="cohort_small")
    assert len(small.rows) == 5 and all(r.cohorts == ("cohort_small",) for r in small.rows)
    everything = read_rows_from_files(data, cohort_id=None)
    shared = {line.split(",")[1] for line in evaluations[:5]}
    for row in everything.rows:
        expected = (run.cohort.cohort_id, "cohort_small") if row.gen_id in shared else (run.cohort.cohort_id,)
        assert row.cohorts == tuple(sorted(expected))
    assert all_memberships(data)[next(iter(shared))] == tuple(sorted((run.cohort.cohort_id, "cohort_small")))


def test_unknown_cohort_and_missing_state_are_clear_errors(run: Run, tmp_path: Path) -> None:
    """Asking for a cohort without membership, or SQLite without a run state, says what to do."""
    with pytest.raises(ResultsError, match=r"has no .*membership\.csv"):
        read_rows_from_db(run.db, run.data, cohort_id="cohort_nope")
    with pytest.raises(ResultsError, match=r"no run state.*--from-files"):
        read_rows_from_db(tmp_path / "none.sqlite", run.data, cohort_id=None)


def test_done_row_without_recorded_score_reads_parsed_txt(run: Run, tmp_path: Path) -> None:
    """An evaluation done before scores were recorded (score NULL) gets its score from parsed.txt."""
    db_path = tmp_path / "old.sqlite"
    shutil.copy(run.db, db_path)
    db = sqlite3.connect(db_path)
    db.execute("UPDATE generations SET score = NULL")
    db.commit()
    db.close()
    old = read_rows_from_db(db_path, run.data, cohort_id=None)
    new = read_rows_from_db(run.db, run.data, cohort_id=None)
    assert Scores(old.rows).rows == Scores(new.rows).rows


def test_reads_while_a_writer_holds_the_database(run: Run, tmp_path: Path) -> None:
    """The run state is opened read-only: results work while the service is writing."""
    db_path = tmp_path / "busy.sqlite"
    shutil.copy(run.db, db_path)
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE generations SET updated_at = 'now'")
    try:
        loaded = read_rows_from_db(db_path, run.data, cohort_id=None)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert len(loaded.rows) == 144


# ---- old-pipeline metadata -----------------------------------------------------------------------


def write_gen(data: Path, stage: str, gen_id: str, metadata: dict[str, object], parsed: str | None) -> None:
    directory = data / "gens" / stage / gen_id
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps(metadata))
    if parsed is not None:
        (directory / "parsed.txt").write_text(parsed)


@pytest.fixture(name="legacy")
def _legacy(tmp_path: Path) -> Path:
    """A gens store as the old pipeline wrote it: model_id, *_template and evaluation_model keys."""
    data = tmp_path / "old" / "data"
    write_gen(
        data,
        "draft",
        "d1",
        {
            "stage": "draft",
            "gen_id": "d1",
            "combo_id": "combo_a",
            "draft_template": "links-v4",
            "model_id": "sonnet",
        },
        "notes",
    )
    write_gen(
        data,
        "essay",
        "e1",
        {
            "stage": "essay",
            "gen_id": "e1",
            "parent_gen_id": "d1",
            "essay_template": "creative-synthesis",
            "model_id": "",
        },
        "an essay",
    )
    write_gen(
        data,
        "evaluation",
        "v1",
        {
            "stage": "evaluation",
            "parent_gen_id": "e1",
            "evaluation_template": "novelty",
            "evaluation_model": "qwen",
        },
        "Reasoning...\n8.5\n",
    )
    write_gen(
        data,
        "evaluation",
        "v2",
        {
            "stage": "evaluation",
            "parent_gen_id": "e1",
            "template_id": "novelty",
            "model_id": "deepseek",
            "cohort_id": "cohort-2025-q1",
        },
        "9\n",
    )
    write_gen(
        data,
        "evaluation",
        "v3",
        {"stage": "evaluation", "parent_gen_id": "e1", "template_id": "rigor", "model_id": "deepseek"},
        None,
    )
    write_gen(
        data,
        "evaluation",
        "v4",
        {"stage": "evaluation", "parent_gen_id": "e1", "template_id": "rigor", "model_id": "qwen"},
        "no number here\n",
    )
    (data / "combo_mappings.csv").write_text(
        "combo_id,version,concept_id,description_level,k_max,created_at\n"
        "combo_a,v1,dmn,paragraph,2,2025-01-01\ncombo_a,v1,rem-sleep,paragraph,2,2025-01-01\n"
    )
    return data


def test_old_pipeline_metadata_is_read_with_fallbacks(legacy: Path) -> None:
    """model_id, draft_template, essay_template, evaluation_template and evaluation_model are understood."""
    rows = {r.gen_id: r for r in read_rows_from_files(legacy, cohort_id=None).rows}
    v1, v2 = rows["v1"], rows["v2"]
    assert (v1.evaluation_template, v1.evaluation_model, v1.score) == ("novelty", "qwen", 8.5)
    assert (v2.evaluation_template, v2.evaluation_model, v2.score) == ("novelty", "deepseek", 9.0)
    for row in (v1, v2):
        assert (row.essay_gen_id, row.draft_gen_id, row.combo_id) == ("e1", "d1", "combo_a")
        assert (row.draft_template, row.essay_template, row.generation_model) == (
            "links-v4",
            "creative-synthesis",
            "sonnet",
        )
        assert row.concept_ids == ("dmn", "rem-sleep") and row.replicate == 1 and row.score_max == 10
    assert v2.cohorts == ("cohort-2025-q1",) and v1.cohorts == ()
    assert (rows["v3"].score, rows["v3"].error_kind) == (None, "missing_score")
    assert (rows["v4"].score, rows["v4"].error_kind) == (None, "parse_error")


def test_results_from_files_on_an_old_data_dir(legacy: Path, run: Run, tmp_path: Path) -> None:
    """`results --all --from-files --data OLD` writes the tables of an old store, failures included."""
    out = tmp_path / "out"
    code, stdout, _ = invoke(
        run, "results", "--all", "--from-files", "--data", str(legacy), "--out", str(out), "--json"
    )
    assert code == 0, stdout
    summary = json.loads(stdout)
    assert (summary["evaluations"], summary["scored"], summary["failed"]) == (4, 2, 2)
    assert summary["failures_by_kind"] == {"missing_score": 1, "parse_error": 1}
    rows = read_csv(out / AGGREGATED_SCORES)
    assert [r["gen_id"] for r in rows] == ["v2", "v1", "v3", "v4"]  # by template, then judge
    assert (out / CROSS_EXPERIMENT).is_file()


# ---- the verb ------------------------------------------------------------------------------------


def test_results_verb_writes_every_table_under_the_cohort(run: Run, tmp_path: Path) -> None:
    """`results` writes the six tables under data/cohorts/<id>/reports/ and reports counts as JSON."""
    data = tmp_path / "data"
    shutil.copytree(run.data, data)
    code, stdout, _ = invoke(run, "results", "--data", str(data), "--cohort", run.cohort.cohort_id, "--json")
    assert code == 0, stdout
    summary = json.loads(stdout)
    reports = data / "cohorts" / run.cohort.cohort_id / "reports"
    assert summary["out_dir"] == str(reports)
    assert set(summary["tables"]) == {
        "parsing/aggregated_scores.csv",
        "summary/generation_scores.csv",
        "summary/final_results.csv",
        "summary/perfect_score_paths.csv",
        "analysis/judge_agreement.csv",
        "analysis/variance_analysis.csv",
        "summary/breakdowns.csv",
        "summary/breakdowns_by_judge.csv",
        "analysis/agreement_pairs.csv",
        "summary/costs.csv",
    }
    rows = read_csv(reports / AGGREGATED_SCORES)
    assert len(rows) == 144 == summary["evaluations"] == summary["scored"] + summary["failed"]
    assert tuple(rows[0]) == SCORE_COLUMNS
    overall = [r for r in read_csv(reports / FINAL_RESULTS) if r["analysis_type"] == "overall"]
    assert int(overall[0]["count"]) == summary["scored"] and int(overall[0]["failed"]) == summary["failed"]
    assert summary["top_essays"] and summary["by_draft_template"] and summary["by_generation_model"]


def test_results_verb_defaults_to_the_applied_cohort_and_prints_tables(run: Run) -> None:
    """Without --cohort it picks the cohort the run state applied last; --show prints readable tables."""
    code, stdout, _ = invoke(run, "results", "--show", "--top", "3")
    assert code == 0, stdout
    assert f"cohort {run.cohort.cohort_id} from the run state (SQLite): 144 finished evaluations" in stdout
    assert "top essays" in stdout and "mean score by draft template:" in stdout
    assert "mean score by generation model:" in stdout and "mean score by judge model:" in stdout
    assert "bridge-sketch" in stdout and "gemini_25_flash" in stdout


def test_results_verb_ranks_top_essays_by_one_rubric(run: Run) -> None:
    """--by T ranks by that rubric's mean alone: each listed essay's mean is its novelty-judge mean,
    in descending order; a rubric that scored nothing is a usage error naming the ones used."""
    code, stdout, _ = invoke(run, "results", "--top", "5", "--by", "novelty-judge", "--json")
    assert code == 0, stdout
    summary = json.loads(stdout)
    top = summary["top_essays"]
    assert summary["top_by"] == "novelty-judge" and len(top) == 5
    means = [t["mean"] for t in top]
    assert means == sorted(means, reverse=True)
    code, _, stderr = invoke(run, "results", "--by", "clarity-judge")
    assert code == 2 and "clarity-judge" in stderr and "novelty-judge:" in stderr


def test_results_verb_rejects_cohort_and_all_together(run: Run) -> None:
    """--cohort and --all are exclusive: a usage error (exit 2)."""
    code, _, _ = invoke(run, "results", "--all", "--cohort", "x")
    assert code == 2


def test_empty_result_writes_headers_over_old_tables(run: Run, tmp_path: Path) -> None:
    """With no finished evaluation every table is rewritten with just its header, never kept stale."""
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    out = tmp_path / "out"
    stale = out / AGGREGATED_SCORES
    stale.parent.mkdir(parents=True)
    stale.write_text("stale,table\n1,2\n")
    code, stdout, _ = invoke(
        run, "results", "--all", "--from-files", "--data", str(data), "--out", str(out), "--json"
    )
    assert code == 0, stdout
    assert stale.read_text() == ",".join(SCORE_COLUMNS) + "\n"
    files = tree(out)
    assert len(files) == 10
    for name, content in files.items():
        lines = content.decode().splitlines()
        assert len(lines) == (2 if name == FINAL_RESULTS else 1), name  # final_results keeps its overall row
    assert not list(out.rglob(".*.tmp"))


def iter_rows(path: Path) -> Iterator[dict[str, str]]:
    yield from read_csv(path)


def test_tables_are_written_exactly_as_csv_writes_them(tmp_path: Path) -> None:
    """The fast writer gives csv.writer's bytes, quoting cells with commas, quotes and line breaks."""
    rows = [
        ("a", "b", "c"),
        ("with,comma", "x", ""),
        ('say "hi"', "line\nbreak", "tab\there"),
        ("", "", ""),
        ("plain", "7.5", "0"),
    ] * 3000
    path = write_table(tmp_path, Table("t/x.csv", ("one", "two", "three"), tuple(rows), text=True))
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(("one", "two", "three"))
    writer.writerows(rows)
    assert path.read_bytes() == expected.getvalue().encode()
    with path.open(newline="") as f:
        assert list(csv.reader(f))[1:] == [list(r) for r in rows]
