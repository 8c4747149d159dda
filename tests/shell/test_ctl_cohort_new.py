"""``daydreamctl cohort new``: a spec re-judging the best essays, from a real run state and real files.

The state is made with the service's own parts: the example experiment as ``test_scores`` prepares
it (two judges, two evaluation replicates), its cohort written by ``write_cohort``, the membership
synced by ``Store`` (so the schema is the migrations'), ``cohort.current`` recorded as the service
does. Then a few evaluations are given chosen states and scores, so the ranking is known:

novelty-judge, all judges: A 9.0 (3 scores), B 8.5 (2), C 8.5 (2), D 8.5 (1), E 5.0 (2), with D < B < C
by gen_id; judge gpt_4o_mini only: C 9.0 (1), B 8.5 (2), A 8.0 (1), E 3.0 (1). F is scored by rigor-judge
only (and failed by novelty-judge), G's novelty score belongs to a row still ``running``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from daydreamd.cli.main import cli
from daydreamd.core.build import read_and_build
from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.config import load_settings
from daydreamd.core.experiment import Generator
from daydreamd.core.problems import Level
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.curation import Criterion, Ranked, rank_essays, spec_text
from daydreamd.core.stages import Stage
from daydreamd.storage.cohort_files import write_cohort
from daydreamd.storage.spec_files import read_spec
from daydreamd.storage.store import Store
from tests.shell.test_scores import prepare_experiment

ROOT = Path(__file__).parents[2]
HEADER = (
    "essay_gen_id,combo_id,draft_template,draft_llm,draft_replicate,essay_template,essay_llm,essay_replicate"
)
SONNET, GPT = "sonnet_4", "gpt_4o_mini"

# (essay letter, evaluation template, judge, replicate) -> (state, score)
SCORES: dict[tuple[str, str, str, int], tuple[str, float | None]] = {
    ("A", "novelty-judge", SONNET, 1): ("done", 10),
    ("A", "novelty-judge", SONNET, 2): ("done", 9),
    ("A", "novelty-judge", GPT, 1): ("done", 8),
    ("B", "novelty-judge", GPT, 1): ("done", 9),
    ("B", "novelty-judge", GPT, 2): ("done", 8),
    ("C", "novelty-judge", SONNET, 1): ("done", 8),
    ("C", "novelty-judge", GPT, 1): ("done", 9),
    ("D", "novelty-judge", SONNET, 1): ("done", 8.5),
    ("E", "novelty-judge", SONNET, 1): ("done", 7),
    ("E", "novelty-judge", GPT, 1): ("done", 3),
    ("F", "rigor-judge", SONNET, 1): ("done", 10),
    ("F", "novelty-judge", GPT, 1): ("failed", None),
    ("G", "novelty-judge", SONNET, 1): ("running", 10),
}
ALL_JUDGES = ["A", "B", "C", "D", "E"]
GPT_ONLY = ["C", "B", "A", "E"]


@dataclass(frozen=True, slots=True)
class State:
    """A run on disk: its config, the cohort, and the essays of the table above by letter."""

    config: Path
    data: Path
    db: Path
    cohort: Cohort
    essays: dict[str, Generation]

    def coordinates(self, letter: str) -> dict[str, str]:
        """What items/top_essays.csv must say of an essay, from the cohort (not from the run state)."""
        essay = self.essays[letter]
        draft = next(g for g in self.cohort.generations if g.gen_id == essay.parent_gen_id)
        return {
            "essay_gen_id": essay.gen_id,
            "combo_id": essay.combo_id,
            "draft_template": draft.template_id,
            "draft_llm": draft.llm_model_id,
            "draft_replicate": str(draft.replicate),
            "essay_template": essay.template_id,
            "essay_llm": essay.llm_model_id,
            "essay_replicate": str(essay.replicate),
        }


def essay_letters(cohort: Cohort) -> dict[str, Generation]:
    """The essays of the table, by letter: D before B before C by gen_id, so both tie-breaks show."""
    essays = sorted((g for g in cohort.generations if g.stage is Stage.ESSAY), key=lambda g: g.gen_id)
    return dict(zip("DBCAEFG", essays[0:3] + essays[5:9], strict=True))


async def _build(root: Path) -> State:
    config = prepare_experiment(root)
    settings = load_settings(config, {})
    build = read_and_build(settings)
    assert build.cohort is not None, build.problems
    cohort = build.cohort
    write_cohort(settings.paths.data_dir, cohort)
    modes = {
        (t.stage, t.template_id): ("copy" if t.generator is Generator.COPY else "llm")
        for t in build.experiment.templates
    }
    async with Store.open(settings.paths.state_db) as store:
        await store.sync_membership(cohort, modes, build.raw.fingerprint)
        await store.set_fact("cohort.current", cohort.cohort_id)
    letters = essay_letters(cohort)
    by_parent: dict[tuple[str, str, str, int], str] = {
        (g.parent_gen_id, g.template_id, g.llm_model_id, g.replicate): g.gen_id
        for g in cohort.generations
        if g.stage is Stage.EVALUATION
    }
    db = sqlite3.connect(settings.paths.state_db)
    with db:
        for (letter, template, judge, replicate), (state, score) in SCORES.items():
            gen_id = by_parent[(letters[letter].gen_id, template, judge, replicate)]
            db.execute("UPDATE generations SET state = ?, score = ? WHERE gen_id = ?", (state, score, gen_id))
    db.close()
    return State(config, settings.paths.data_dir, settings.paths.state_db, cohort, letters)


@pytest.fixture(scope="module", name="built")
def _built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("built")
    asyncio.run(_build(root))
    return root


@pytest.fixture(name="state")
def _state(built: Path, tmp_path: Path) -> State:
    """A private copy of the built run (each test may write specs into it)."""
    root = tmp_path / "run"
    shutil.copytree(built, root)
    settings = load_settings(root / "config.toml", {})
    cohort = read_and_build(settings).cohort
    assert cohort is not None
    return State(
        root / "config.toml", settings.paths.data_dir, settings.paths.state_db, cohort, essay_letters(cohort)
    )


def new(state: State, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(state.config), "cohort", "new", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def spec_dir(state: State, name: str) -> Path:
    return state.data / "cohorts" / name / "spec"


def items(state: State, name: str) -> list[dict[str, str]]:
    with (spec_dir(state, name) / "items" / "top_essays.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def compiled_rows(state: State, name: str) -> list[dict[str, str]]:
    """The spec compiled by the project's compiler, no catalog: no errors allowed, warnings ignored."""
    compiled, problems = compile_spec(read_spec(spec_dir(state, name)), catalog=None)
    assert compiled is not None, problems
    assert not [p for p in problems if p.level is Level.ERROR]
    return [{k: str(v) for k, v in row.items()} for row in compiled.dicts()]


# ---- ranking -------------------------------------------------------------------------------------


def test_ranks_by_mean_then_count_then_gen_id(state: State) -> None:
    """Mean descending; equal means: more scores first, then gen_id; failed, running and other templates
    do not count; the default source is the run state's current cohort."""
    code, _, err = new(state, "top5", "--from-top", "5", "--by", "novelty-judge")
    assert code == 0, err
    assert [r["essay_gen_id"] for r in items(state, "top5")] == [state.essays[x].gen_id for x in ALL_JUDGES]
    assert err == ""


def test_rank_essays_is_pure_and_deterministic() -> None:
    """The ranking alone: mean, then the number of scores, then gen_id; input order does not matter."""
    scores = [("e_b", 8.0), ("e_a", 8.0), ("e_c", 9.0), ("e_b", 8.0), ("e_d", 7.0), ("e_d", 9.0)]
    expected = [
        Ranked("e_c", 9.0, 1),
        Ranked("e_b", 8.0, 2),
        Ranked("e_d", 8.0, 2),
        Ranked("e_a", 8.0, 1),
    ]
    assert rank_essays(scores) == expected
    assert rank_essays(reversed(scores)) == expected


@pytest.mark.parametrize("value", ["sonnet_4", "no", "017", "0x1F", "2024-05-01", "~", "<<", "a b", "é"])
def test_ids_in_the_written_yaml_read_back_as_themselves(value: str) -> None:
    assert yaml.safe_load(spec_text_axes(value)) == [value]


def spec_text_axes(value: str) -> str:
    mapping = spec_text(
        source="c",
        criterion=Criterion("t", None),
        chosen=[],
        requested=0,
        when="now",
        command="daydreamctl",
        evaluation_templates=[value],
        judges=[],
    )
    line = next(line for line in mapping.splitlines() if line.startswith("  evaluation_template:"))
    return line.split(":", 1)[1]


def test_judge_filter_counts_only_that_judges_scores(state: State) -> None:
    code, out, err = new(state, "gpt", "--from-top", "3", "--by", f"novelty-judge:{GPT}")
    assert code == 0, err
    assert [r["essay_gen_id"] for r in items(state, "gpt")] == [state.essays[x].gen_id for x in GPT_ONLY[:3]]
    assert f"novelty-judge (judge {GPT})" in out


def test_fewer_ranked_than_asked_writes_them_and_warns(state: State) -> None:
    code, _, err = new(state, "all", "--from-top", "50", "--by", f"novelty-judge:{GPT}")
    assert code == 0
    assert len(items(state, "all")) == 4
    assert "warning: only 4 essay(s)" in err and "not 50" in err
    config = (spec_dir(state, "all") / "config.yaml").read_text()
    assert "# 50 were asked for; only 4 essays had a scored evaluation." in config


def test_only_the_source_cohorts_members_count(state: State) -> None:
    """A cohort whose membership leaves out A's evaluations and B's essay ranks C, D, E only."""
    membership = state.data / "cohorts" / state.cohort.cohort_id / "membership.csv"
    lines = membership.read_text().splitlines(keepends=True)
    a, b = state.essays["A"].gen_id, state.essays["B"].gen_id
    kept = [
        line
        for line in lines[1:]
        if not (line.startswith("evaluation,") and line.split(",")[3] == a)
        and not line.startswith(f"essay,{b},")
    ]
    small = state.data / "cohorts" / "small" / "membership.csv"
    small.parent.mkdir(parents=True)
    small.write_text(lines[0] + "".join(kept))
    code, _, err = new(state, "from-small", "--from-top", "5", "--by", "novelty-judge", "--cohort", "small")
    assert code == 0, err
    assert [r["essay_gen_id"] for r in items(state, "from-small")] == [
        state.essays[x].gen_id for x in ("C", "D", "E")
    ]


# ---- what is written -----------------------------------------------------------------------------


def test_writes_the_csv_and_yaml_the_compiler_reads(state: State) -> None:
    """items/top_essays.csv holds each chosen essay's coordinates in rank order; config.yaml says how
    they were chosen and binds them in one tuple; compiled, the spec gives those N rows exactly."""
    code, out, err = new(state, "top3", "--from-top", "3", "--by", "novelty-judge")
    assert code == 0, err
    folder = spec_dir(state, "top3")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "config.yaml",
        "items",
        "items/top_essays.csv",
    ]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert (folder / "items" / "top_essays.csv").read_text().splitlines()[0] == HEADER
    expected = [state.coordinates(x) for x in ALL_JUDGES[:3]]
    assert items(state, "top3") == expected
    text = (folder / "config.yaml").read_text()
    lines = text.splitlines()
    source = state.cohort.cohort_id
    assert lines[0].startswith(
        f"# Re-judge the top 3 essays of cohort {source} by novelty-judge (all judges), chosen "
    )
    assert lines[0].endswith("Z by daydreamctl cohort new.")
    assert (
        lines[1]
        == f"# command: daydreamctl cohort new top3 --from-top 3 --by novelty-judge --cohort {source}"
    )
    a = state.essays["A"].gen_id
    assert any(
        line.startswith("#    1  ") and a in line and "9.00" in line and line.endswith(" 3") for line in lines
    )
    assert yaml.safe_load(text) == {
        "axes": {},
        "rules": {
            "tuples": {
                "top_essays": {"axes": HEADER.split(","), "items": "@file:items/top_essays.csv"},
            }
        },
    }
    assert compiled_rows(state, "top3") == expected
    assert str(folder / "config.yaml") in out and "check it: daydreamctl cohort compile" in out


def test_evaluation_templates_and_judges_become_axes(state: State) -> None:
    """--evaluation-template and --judge (repeatable) are axes crossed with the essays."""
    code, _, err = new(
        state,
        "rejudge",
        "--from-top",
        "2",
        "--by",
        "novelty-judge",
        "--evaluation-template",
        "rigor-judge",
        "--evaluation-template",
        "novelty-judge",
        "--judge",
        "deepseek_r1",
    )
    assert code == 0, err
    spec = yaml.safe_load((spec_dir(state, "rejudge") / "config.yaml").read_text())
    assert spec["axes"] == {
        "evaluation_template": ["rigor-judge", "novelty-judge"],
        "evaluation_llm": ["deepseek_r1"],
    }
    rows = compiled_rows(state, "rejudge")
    assert len(rows) == 2 * 2 * 1
    assert {(r["essay_gen_id"], r["evaluation_template"], r["evaluation_llm"]) for r in rows} == {
        (state.essays[x].gen_id, t, "deepseek_r1")
        for x in ("A", "B")
        for t in ("rigor-judge", "novelty-judge")
    }


def test_the_written_spec_passes_cohort_compile_against_the_experiment(state: State) -> None:
    """End to end: `daydreamctl cohort compile` checks its ids against 1_raw and combo_mappings.csv."""
    assert new(state, "checked", "--from-top", "5", "--by", "novelty-judge", "--judge", SONNET)[0] == 0
    result = CliRunner().invoke(
        cli, ["--config", str(state.config), "cohort", "compile", str(spec_dir(state, "checked"))]
    )
    assert result.exit_code == 0, result.stderr
    assert "ok: 5 row(s)" in result.stderr
    assert result.stdout.count("\n") == 1 + 5


def test_refuses_to_touch_an_existing_spec(state: State) -> None:
    assert new(state, "twice", "--from-top", "1", "--by", "novelty-judge")[0] == 0
    before = (spec_dir(state, "twice") / "config.yaml").read_bytes()
    code, _, err = new(state, "twice", "--from-top", "2", "--by", "rigor-judge")
    assert code == 1
    assert f"{spec_dir(state, 'twice')} already exists; choose another name or remove it" in err
    assert (spec_dir(state, "twice") / "config.yaml").read_bytes() == before
    hand_made = spec_dir(state, "mine")
    hand_made.mkdir(parents=True)
    (hand_made / "notes.txt").write_text("mine\n")
    code, _, err = new(state, "mine", "--from-top", "1", "--by", "novelty-judge")
    assert code == 1 and "already exists" in err
    assert [p.name for p in hand_made.iterdir()] == ["notes.txt"]


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bad/name", "--from-top", "1", "--by", "novelty-judge"], "'bad/name' is not a valid cohort id"),
        (["ok", "--from-top", "0", "--by", "novelty-judge"], "--from-top 0"),
        (["ok", "--from-top", "1", "--by", "novelty-judge", "--cohort", "nope"], "unknown cohort 'nope'"),
        (
            ["ok", "--from-top", "1", "--by", "style-judge"],
            "evaluation template 'style-judge' was never used",
        ),
        (["ok", "--from-top", "1", "--by", "novelty-judge:deepseek_r1"], "judge 'deepseek_r1' never scored"),
        (
            ["ok", "--from-top", "1", "--by", "novelty-judge", "--evaluation-template", "style-judge"],
            "--evaluation-template 'style-judge' is not an evaluation template in",
        ),
        (
            ["ok", "--from-top", "1", "--by", "novelty-judge", "--judge", "gpt_5"],
            "--judge 'gpt_5' is not a model in",
        ),
    ],
)
def test_errors_name_the_offending_value_and_write_nothing(
    state: State, args: list[str], expected: str
) -> None:
    code, out, err = new(state, *args)
    assert code == 1
    assert expected in err
    assert out == ""
    assert sorted(p.name for p in (state.data / "cohorts").iterdir()) == [state.cohort.cohort_id]


def test_the_new_cohort_may_not_be_its_source(state: State) -> None:
    code, _, err = new(state, state.cohort.cohort_id, "--from-top", "1", "--by", "novelty-judge")
    assert code == 1 and "is the source cohort" in err
    assert not spec_dir(state, state.cohort.cohort_id).exists()


def test_unknown_ids_name_their_file(state: State) -> None:
    _, _, err = new(state, "ok", "--from-top", "1", "--by", "novelty-judge", "--judge", "gpt_5")
    assert "1_raw/llm_models.csv" in err
    _, _, err = new(state, "ok", "--from-top", "1", "--by", "novelty-judge", "--evaluation-template", "x")
    assert "1_raw/evaluation_templates.csv" in err


def test_no_current_cohort_asks_for_cohort(state: State) -> None:
    db = sqlite3.connect(state.db)
    with db:
        db.execute("DELETE FROM facts WHERE key = 'cohort.current'")
    db.close()
    code, _, err = new(state, "ok", "--from-top", "1", "--by", "novelty-judge")
    assert code == 1 and "pass --cohort" in err
    code, _, err = new(
        state, "ok", "--from-top", "1", "--by", "novelty-judge", "--cohort", state.cohort.cohort_id
    )
    assert code == 0, err


def test_nothing_scored_is_an_error(state: State) -> None:
    db = sqlite3.connect(state.db)
    with db:
        db.execute("UPDATE generations SET score = NULL")
    db.close()
    code, _, err = new(state, "ok", "--from-top", "1", "--by", "novelty-judge")
    assert code == 1 and "no essay of cohort" in err and "novelty-judge" in err
    assert not spec_dir(state, "ok").exists()


# ---- --json --------------------------------------------------------------------------------------


def test_json_output(state: State) -> None:
    code, out, err = new(state, "js", "--from-top", "2", "--by", f"novelty-judge:{GPT}", "--json")
    assert code == 0, err
    result = json.loads(out)
    folder = spec_dir(state, "js")
    assert result | {"essays": None} == {
        "cohort": "js",
        "source_cohort": state.cohort.cohort_id,
        "by": {"evaluation_template": "novelty-judge", "judge": GPT},
        "requested": 2,
        "ranked": 4,
        "chosen": 2,
        "spec_dir": str(folder),
        "config": str(folder / "config.yaml"),
        "items": str(folder / "items" / "top_essays.csv"),
        "evaluation_templates": [],
        "judges": [],
        "essays": None,
        "warnings": [],
    }
    for essay in result["essays"]:  # replicates are numbers in JSON
        assert isinstance(essay["draft_replicate"], int) and isinstance(essay["essay_replicate"], int)
        essay["draft_replicate"], essay["essay_replicate"] = (
            str(essay["draft_replicate"]),
            str(essay["essay_replicate"]),
        )
    assert result["essays"] == [
        {"rank": 1, "mean_score": 9.0, "evaluations": 1, **state.coordinates("C")},
        {"rank": 2, "mean_score": 8.5, "evaluations": 2, **state.coordinates("B")},
    ]


def test_the_cohort_groups_json_flag_works_too(state: State) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(state.config),
            "cohort",
            "--json",
            "new",
            "g",
            "--from-top",
            "1",
            "--by",
            "rigor-judge",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["essays"][0]["essay_gen_id"] == state.essays["F"].gen_id
