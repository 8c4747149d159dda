"""Paths under the data directory (``storage.layout``), the gens store's lenient readers, and the
read-only run-state connection (``storage.readers``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daydreamd.core.scores import essay_path, evaluation_path
from daydreamd.core.stages import Stage
from daydreamd.storage import readers
from daydreamd.storage.gens import GensStore
from daydreamd.storage.layout import DataLayout, relative_gen_file


def test_every_path_is_where_the_readme_says(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    relative = {
        "raw": layout.raw_dir,
        "mappings": layout.combo_mappings,
        "gen": layout.gen_file(Stage.ESSAY, "e_1", "parsed.txt"),
        "manifest": layout.manifest("cohort_a"),
        "membership": layout.membership("cohort_a"),
        "reports": layout.reports_dir("cohort_a"),
        "report": layout.report_html("cohort_a"),
        "cross": layout.reports_dir(None),
    }
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in relative.items()} == {
        "raw": "1_raw",
        "mappings": "combo_mappings.csv",
        "gen": "gens/essay/e_1/parsed.txt",
        "manifest": "cohorts/cohort_a/manifest.json",
        "membership": "cohorts/cohort_a/membership.csv",
        "reports": "cohorts/cohort_a/reports",
        "report": "cohorts/cohort_a/reports/report.html",
        "cross": "cross_experiment",
    }


def test_relative_paths_in_tables_match_the_layout(tmp_path: Path) -> None:
    """The pure core writes these paths into result tables; they must name the real files."""
    assert essay_path("e_1") == relative_gen_file("essay", "e_1", "parsed.txt")
    assert evaluation_path("v_1") == relative_gen_file("evaluation", "v_1", "raw.txt")
    gens = GensStore(tmp_path)
    assert (
        tmp_path / gens.relative_file(Stage.DRAFT, "d_1", "raw.txt")
        == gens.directory("draft", "d_1") / "raw.txt"
    )


def test_cohort_ids_skip_files_and_hidden_folders(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    assert layout.cohort_ids() == []
    for name in ("cohort_b", "cohort_a", ".tmp"):
        (layout.cohorts / name).mkdir(parents=True)
    (layout.cohorts / "notes.txt").write_text("x")
    assert layout.cohort_ids() == ["cohort_a", "cohort_b"]


def test_lenient_readers_take_unreadable_files_for_absent_ones(tmp_path: Path) -> None:
    gens = GensStore(tmp_path)
    assert gens.gen_ids("evaluation") == []
    gens.write("evaluation", "v_2", "metadata.json", "[1, 2]\n")  # JSON, not an object
    gens.write("evaluation", "v_1", "metadata.json", '{"status": "done"}\n')
    gens.directory("evaluation", ".hidden").mkdir()
    gens.directory("evaluation", "v_3").mkdir()
    (gens.directory("evaluation", "v_3") / "metadata.json").write_bytes(b"\xff\xfe not utf-8")
    (gens.directory("evaluation", "v_3") / "parsed.txt").mkdir()  # a folder, not a file
    assert gens.gen_ids("evaluation") == ["v_1", "v_2", "v_3"]
    assert gens.try_read_metadata("evaluation", "v_1") == {"status": "done"}
    assert gens.try_read_metadata("evaluation", "v_2") is None
    assert gens.try_read_metadata("evaluation", "v_3") is None
    assert gens.try_read_metadata("evaluation", "v_9") is None
    assert gens.try_read_text("evaluation", "v_3", "parsed.txt") is None
    assert gens.try_read_text("evaluation", "v_3", "metadata.json", errors="replace") is not None
    assert gens.exists("evaluation", "v_1", "metadata.json") and not gens.exists(
        "evaluation", "v_1", "raw.txt"
    )


def test_the_run_state_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cohorts (cohort_id TEXT, last_applied TEXT)")
        db.executemany(
            "INSERT INTO cohorts VALUES (?, ?)", [("c_old", "2024-01-01"), ("c_new", "2025-01-01")]
        )
    db = readers.connect_readonly(path)
    try:
        assert readers.generation_columns(db) == set()  # no generations table
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("INSERT INTO cohorts VALUES ('c_x', '2026-01-01')")
    finally:
        db.close()
    assert readers.latest_applied_cohort(path) == "c_new"
    assert readers.latest_applied_cohort(tmp_path / "missing.sqlite") is None


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A kill -9 mid-write leaves ``.<name>.<pid>.<thread>.tmp``; the next start removes it, and
    never this process's own temp files or anything that is not a temp file."""
    import os

    from daydreamd.storage.atomic import remove_stale_temps

    (tmp_path / ".raw.txt.1.2.tmp").write_text("half")
    mine = tmp_path / f".prompt.txt.{os.getpid()}.7.tmp"
    mine.write_text("in progress")
    (tmp_path / "raw.txt").write_text("whole")
    (tmp_path / ".hidden").write_text("not a temp file")
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "raw.txt", ".hidden"])
    assert remove_stale_temps(tmp_path / "gone") == 0


# ---- containment: every path built stays under its folder ------------------------------------------

ESCAPES = ["../../../x", "..", ".", "", "/abs", "a/b", "a\0b"]


@pytest.mark.parametrize("bad", ESCAPES)
def test_path_builders_refuse_names_that_would_leave_their_folder(tmp_path: Path, bad: str) -> None:
    """Defense in depth: whatever a caller checked, a built path never leaves data/."""
    from daydreamd.storage.layout import UnsafePathError

    layout = DataLayout(tmp_path / "data")
    builders = [
        lambda: layout.cohort_dir(bad),
        lambda: layout.manifest(bad),
        lambda: layout.membership(bad),
        lambda: layout.reports_dir(bad),
        lambda: layout.report_html(bad),
        lambda: layout.stage_dir(bad),
        lambda: layout.gen_dir("draft", bad),
        lambda: layout.gen_file("draft", "d_1", bad),
        lambda: GensStore(tmp_path / "data").write("draft", bad, "prompt.txt", "x"),
    ]
    for build in builders:
        with pytest.raises(UnsafePathError, match="not a plain name"):
            build()
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_write_cohort_refuses_a_cohort_id_that_is_not_a_folder_name(tmp_path: Path) -> None:
    """A cohort whose id did not come through the config's check still writes nothing outside data/."""
    from dataclasses import replace

    from daydreamd.core.build import build_from_raw
    from daydreamd.core.config import Settings
    from daydreamd.core.errors import CohortError
    from daydreamd.core.snapshot import read_raw_dir
    from daydreamd.storage.cohort_files import write_cohort

    settings = Settings()
    settings = replace(settings, experiment=replace(settings.experiment, cohort="../../../escaped"))
    build = build_from_raw(read_raw_dir(Path(__file__).parents[2] / "data" / "1_raw"), settings)
    assert build.cohort is not None and build.cohort.cohort_id == "../../../escaped"
    data = tmp_path / "a" / "b" / "data"
    with pytest.raises(CohortError, match="not a valid cohort id"):
        write_cohort(data, build.cohort)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
