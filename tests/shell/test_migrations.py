"""The run state's schema history on real SQLite files: fresh install, no-op reopen, upgrade, failed upgrade.

Migrations are selected by replacing ``daydreamd.storage.migrations.MIGRATIONS`` (which ``migrate`` reads
at call time); every database is a real file under ``tmp_path``. The exact-schema tests pin the
registry to the two shipped migrations (m001_initial, m002_scores); the live registry may append
more, so it is checked to keep those two unchanged and to extend, never alter, their schema.
Old-schema databases are filled with plain SQL, not with ``Store`` methods written for the newest schema.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiosqlite
import pytest

from daydreamd.core.build import build_from_raw
from daydreamd.core.cohort import Cohort
from daydreamd.core.config import Settings
from daydreamd.core.snapshot import read_raw_dir
from daydreamd.storage import migrations
from daydreamd.storage.migrations import M001_INITIAL, M002_SCORES, migrate
from daydreamd.storage.parse_state import MARK_CHILDREN
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.store import AttemptRow, Completion, Store

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RAW = REPO_ROOT / "data" / "1_raw"
LIVE = migrations.MIGRATIONS
SHIPPED = (("m001_initial", M001_INITIAL), ("m002_scores", M002_SCORES))
FIRST_ONLY = SHIPPED[:1]

# (name, declared type, not null, default, primary key) per column, in table order.
GENERATIONS_M001 = [
    ("gen_id", "TEXT", 0, None, 1),
    ("stage", "TEXT", 1, None, 0),
    ("stage_rank", "INTEGER", 1, None, 0),
    ("parent_gen_id", "TEXT", 1, None, 0),
    ("combo_id", "TEXT", 1, None, 0),
    ("template_id", "TEXT", 1, None, 0),
    ("llm_model_id", "TEXT", 1, None, 0),
    ("replicate", "INTEGER", 1, None, 0),
    ("mode", "TEXT", 1, None, 0),
    ("state", "TEXT", 1, None, 0),
    ("retired", "INTEGER", 1, "0", 0),
    ("attempts", "INTEGER", 1, "0", 0),
    ("error_kind", "TEXT", 0, None, 0),
    ("error_message", "TEXT", 0, None, 0),
    ("approval_id", "INTEGER", 0, None, 0),
    ("lease_token", "INTEGER", 1, "0", 0),
    ("lease_expires", "REAL", 0, None, 0),
    ("created_at", "TEXT", 1, None, 0),
    ("updated_at", "TEXT", 1, None, 0),
    ("started_at", "TEXT", 0, None, 0),
    ("finished_at", "TEXT", 0, None, 0),
]
EXPECTED_TABLES: dict[str, list[tuple[str, str, int, str | None, int]]] = {
    "_daydream_migrations": [("name", "TEXT", 0, None, 1), ("applied_at", "TEXT", 0, None, 0)],
    "generations": [*GENERATIONS_M001, ("score", "REAL", 0, None, 0)],
    "attempts": [
        ("id", "INTEGER", 0, None, 1),
        ("gen_id", "TEXT", 1, None, 0),
        ("llm_model_id", "TEXT", 1, None, 0),
        ("attempt", "INTEGER", 1, None, 0),
        ("started_at", "REAL", 1, None, 0),
        ("finished_at", "REAL", 1, None, 0),
        ("outcome", "TEXT", 1, None, 0),
        ("status", "INTEGER", 0, None, 0),
        ("message", "TEXT", 0, None, 0),
        ("prompt_tokens", "INTEGER", 0, None, 0),
        ("completion_tokens", "INTEGER", 0, None, 0),
        ("total_tokens", "INTEGER", 0, None, 0),
        ("reasoning_tokens", "INTEGER", 0, None, 0),
        ("cost", "REAL", 0, None, 0),
    ],
    "approvals": [
        ("id", "INTEGER", 0, None, 1),
        ("created_at", "TEXT", 1, None, 0),
        ("requested_by", "TEXT", 1, None, 0),
        ("action", "TEXT", 1, None, 0),
        ("cohort_id", "TEXT", 0, None, 0),
        ("stage", "TEXT", 1, None, 0),
        ("template_id", "TEXT", 0, None, 0),
        ("llm_model_id", "TEXT", 0, None, 0),
        ("limit_n", "INTEGER", 0, None, 0),
        ("matched", "INTEGER", 1, None, 0),
    ],
    "cohorts": [
        ("cohort_id", "TEXT", 0, None, 1),
        ("first_seen", "TEXT", 1, None, 0),
        ("last_applied", "TEXT", 1, None, 0),
        ("fingerprint", "TEXT", 1, None, 0),
        ("counts", "TEXT", 1, None, 0),
    ],
    "facts": [("key", "TEXT", 0, None, 1), ("value", "TEXT", 1, None, 0)],
    "model_limits": [
        ("llm_model_id", "TEXT", 0, None, 1),
        ("concurrency", "REAL", 1, None, 0),
        ("updated_at", "TEXT", 1, None, 0),
    ],
}
# Explicit (named) indexes: name -> (table, indexed columns, partial).
EXPECTED_INDEXES: dict[str, tuple[str, list[str], bool]] = {
    "generations_ready": ("generations", ["state", "retired", "stage_rank", "llm_model_id"], False),
    "generations_parent": ("generations", ["parent_gen_id"], False),
    "generations_counts": ("generations", ["stage", "state", "retired"], False),
    "generations_scores": ("generations", ["stage", "state"], True),
    "attempts_gen": ("attempts", ["gen_id"], False),
}
DROPPED_BY_M011 = {"generations_ready", "generations_counts"}
REPLACED_BY_M012 = {  # the full parent index, now partial: only finished rows (see the test below)
    "generations_parent": ("generations_parent_finished", ("generations", ["parent_gen_id"], True)),
}


@asynccontextmanager
async def raw_connection(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """An autocommit aiosqlite connection, as ``migrate`` requires (what ``Store.open`` makes)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        await db.close()


def table_columns(path: Path, table: str) -> list[tuple[str, str, int, str | None, int]]:
    """(name, type, notnull, default, pk) of each column of ``table``, read with plain sqlite3."""
    with closing(sqlite3.connect(path)) as conn:
        return [tuple(row[1:]) for row in conn.execute(f"PRAGMA table_info({table})")]


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def named_indexes(path: Path) -> dict[str, tuple[str, list[str], bool]]:
    """Every index created by a statement (autoindexes excluded): name -> (table, columns, partial)."""
    with closing(sqlite3.connect(path)) as conn:
        out = {}
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall():
            columns = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
            partial = {row[1]: bool(row[4]) for row in conn.execute(f"PRAGMA index_list({table})")}[name]
            out[name] = (table, columns, partial)
        return out


def applied_names(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM _daydream_migrations ORDER BY rowid")]


def migration_records(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT name, applied_at FROM _daydream_migrations ORDER BY rowid").fetchall()


def example_cohort() -> Cohort:
    """The shipped example's cohort (9 drafts, 18 essays, 36 evaluations)."""
    build = build_from_raw(read_raw_dir(EXAMPLE_RAW), Settings())
    assert build.cohort is not None, [str(p) for p in build.problems]
    return build.cohort


M001_TABLES = {t: EXPECTED_TABLES[t] for t in EXPECTED_TABLES if t != "_daydream_migrations"}
M001_TABLES["generations"] = GENERATIONS_M001


async def make_m001_database(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database migrated to m001 only, holding rows in every table (written with plain SQL)."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", FIRST_ONLY)
        async with raw_connection(path) as db:
            assert await migrate(db) == ["m001_initial"]
    cohort = example_cohort()
    now = "2024-01-01T00:00:00.000Z"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
            "llm_model_id, replicate, mode, state, approval_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    g.gen_id,
                    g.stage.value,
                    ("draft", "essay", "evaluation").index(g.stage.value),
                    g.parent_gen_id,
                    g.combo_id,
                    g.template_id,
                    g.llm_model_id,
                    g.replicate,
                    "llm",
                    "queued" if g.stage.value == "draft" else "pending",
                    1 if g.stage.value == "draft" else None,
                    now,
                    now,
                )
                for g in cohort.generations
            ],
        )
        conn.execute(
            "INSERT INTO approvals (created_at, requested_by, action, cohort_id, stage, matched) "
            "VALUES (?, 'old', 'approve', ?, 'draft', 9)",
            (now, cohort.cohort_id),
        )
        conn.execute(
            "INSERT INTO attempts (gen_id, llm_model_id, attempt, started_at, finished_at, outcome) "
            "VALUES (?, 'gemini_25_flash', 1, 1.0, 2.0, 'timeout')",
            (cohort.generations[0].gen_id,),
        )
        conn.execute("INSERT INTO cohorts VALUES (?, ?, ?, 'fp-1', '{}')", (cohort.cohort_id, now, now))
        conn.execute("INSERT INTO facts VALUES ('fingerprint.applied', 'fp-1')")
        conn.execute("INSERT INTO model_limits VALUES ('gemini_25_flash', 2.5, ?)", (now,))
        conn.execute("COMMIT")
    assert applied_names(path) == ["m001_initial"]
    assert table_columns(path, "generations") == GENERATIONS_M001


def m001_snapshot(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every m001 table, m001 columns only, in rowid order."""
    with closing(sqlite3.connect(path)) as conn:
        return {
            table: conn.execute(
                f"SELECT {', '.join(c[0] for c in columns)} FROM {table} ORDER BY rowid"
            ).fetchall()
            for table, columns in M001_TABLES.items()
        }


def test_shipped_migrations_are_unchanged_and_first() -> None:
    """The live registry starts with m001_initial and m002_scores as shipped; names unique and numbered."""
    assert LIVE[:2] == SHIPPED
    names = [name for name, _ in LIVE]
    assert len(set(names)) == len(names)
    numbers = [int(re.fullmatch(r"m(\d{3})_\w+", name).group(1)) for name in names]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(names) + 1))


async def test_blank_database_gets_the_exact_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blank file migrated by m001+m002 has exactly the expected tables, columns and indexes."""
    monkeypatch.setattr(migrations, "MIGRATIONS", SHIPPED)
    path = tmp_path / "state" / "run.sqlite"
    async with Store.open(path):
        pass
    assert tables(path) == set(EXPECTED_TABLES)
    for table, columns in EXPECTED_TABLES.items():
        assert table_columns(path, table) == columns, table
    assert named_indexes(path) == EXPECTED_INDEXES
    assert applied_names(path) == ["m001_initial", "m002_scores"]
    stamps = [stamp for _, stamp in migration_records(path)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps), stamps


async def test_live_registry_extends_the_shipped_schema(tmp_path: Path) -> None:
    """With every registered migration a blank file records them all and keeps m001+m002's schema first,
    less the indexes m011 dropped (no statement needed them, every write paid for them) and the one m012
    made partial."""
    path = tmp_path / "run.sqlite"
    async with Store.open(path):
        pass
    assert applied_names(path) == [name for name, _ in LIVE]
    assert tables(path) >= set(EXPECTED_TABLES)
    for table, columns in EXPECTED_TABLES.items():
        assert table_columns(path, table)[: len(columns)] == columns, table
    indexes = named_indexes(path)
    gone = DROPPED_BY_M011 | set(REPLACED_BY_M012)
    kept = {name: index for name, index in EXPECTED_INDEXES.items() if name not in gone}
    assert {name: indexes.get(name) for name in kept} == kept
    assert not gone & set(indexes)
    assert {new: indexes.get(new) for new, _ in REPLACED_BY_M012.values()} == dict(REPLACED_BY_M012.values())


@pytest.mark.parametrize(
    ("sql", "params", "index"),
    [
        (MARK_CHILDREN, ("e_1",), "generations_parent_finished"),
        ("SELECT gen_id FROM generations WHERE approval_id IN (?, ?)", (1, 2), "generations_approved"),
        ("SELECT gen_id FROM generations WHERE approval_id = ?", (1,), "generations_approved"),
    ],
)
async def test_partial_indexes_of_m012_serve_their_statements(
    tmp_path: Path, sql: str, params: tuple[object, ...], index: str
) -> None:
    """m012 made the parent and approval indexes partial: the statements that look rows up by those
    columns still search their index, never scan the table."""
    path = tmp_path / "run.sqlite"
    async with Store.open(path):
        pass
    with closing(sqlite3.connect(path)) as conn:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert f"USING INDEX {index} " in plan, plan


async def test_migrate_reports_what_it_applied_and_reopen_applies_nothing(tmp_path: Path) -> None:
    """migrate returns every name on a blank file, then [] on every reopen, without touching the records."""
    path = tmp_path / "run.sqlite"
    async with raw_connection(path) as db:
        assert await migrate(db) == [name for name, _ in LIVE]
        assert not db.in_transaction
        assert await migrate(db) == []
    before = migration_records(path)
    async with Store.open(path):
        pass
    async with raw_connection(path) as db:
        assert await migrate(db) == []
    assert migration_records(path) == before
    assert [name for name, _ in before] == [name for name, _ in LIVE]


async def test_upgrade_from_m001_adds_score_and_keeps_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that only had m001 gains exactly the score column and index, with every row intact."""
    path = tmp_path / "run.sqlite"
    await make_m001_database(path, monkeypatch)
    assert "generations_scores" not in named_indexes(path)
    before = m001_snapshot(path)
    assert len(before["generations"]) == 63

    monkeypatch.setattr(migrations, "MIGRATIONS", SHIPPED)
    async with raw_connection(path) as db:
        assert await migrate(db) == ["m002_scores"]

    assert applied_names(path) == ["m001_initial", "m002_scores"]
    assert table_columns(path, "generations") == EXPECTED_TABLES["generations"]
    assert named_indexes(path) == EXPECTED_INDEXES
    assert m001_snapshot(path) == before
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM generations WHERE score IS NOT NULL").fetchone() == (0,)


async def test_upgrade_from_m001_with_the_live_registry_leaves_a_working_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An m001 database upgraded by every later migration keeps its rows and works with today's Store."""
    path = tmp_path / "run.sqlite"
    await make_m001_database(path, monkeypatch)
    before = m001_snapshot(path)
    async with raw_connection(path) as db:
        assert await migrate(db) == [name for name, _ in LIVE[1:]]
    assert m001_snapshot(path) == before
    async with Store.open(path) as store:
        assert await store.get_fact("fingerprint.applied") == "fp-1"
        assert await RestartMemory(store).load_limits() == {"gemini_25_flash": 2.5}
        rows = await store.generations(stage=None, state=None, limit=1000)
        assert len(rows) == 63
        assert all(row["score"] is None for row in rows)
        assert [row["state"] for row in rows].count("queued") == 9
        [claim] = await ReadyWork(store).claim(("llm", None), limit=1, lease_s=60)
        assert claim.token == 1
        done = Completion(
            gen_id=claim.generation.gen_id,
            token=claim.token,
            llm_model_id=claim.generation.llm_model_id,
            ok=True,
            attempts=(AttemptRow(attempt=2, started_at=3.0, finished_at=4.0, outcome="ok"),),
            score=7.5,
        )
        assert await store.complete([done]) == 1
        row = await store.generation(claim.generation.gen_id)
        assert row is not None
        assert (row["state"], row["score"]) == ("done", 7.5)
        assert [a["outcome"] for a in row["attempt_log"]] == ["timeout", "ok"]


async def test_failed_migration_keeps_the_previous_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third migration failing midway leaves m001+m002 applied, nothing of the third, and no record."""
    broken = (
        "CREATE TABLE m003_probe (x INTEGER);\n"
        "ALTER TABLE generations ADD COLUMN m003_col TEXT;\n"
        "CREATE INDEX m003_index ON generations (mode);\n"
        "INSERT INTO facts (key, value) VALUES ('m003', 'half-done');\n"
        "INSERT INTO no_such_table VALUES (1);\n"
        "CREATE TABLE m003_after (y INTEGER);\n"
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", (*SHIPPED, ("m003_broken", broken)))
    path = tmp_path / "run.sqlite"
    async with raw_connection(path) as db:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            await migrate(db)
        assert not db.in_transaction

    assert applied_names(path) == ["m001_initial", "m002_scores"]
    assert tables(path) == set(EXPECTED_TABLES)
    assert table_columns(path, "generations") == EXPECTED_TABLES["generations"]
    assert named_indexes(path) == EXPECTED_INDEXES
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM facts").fetchone() == (0,)

    # Once the broken migration is gone the file opens normally and needs nothing more.
    monkeypatch.setattr(migrations, "MIGRATIONS", SHIPPED)
    async with raw_connection(path) as db:
        assert await migrate(db) == []


async def test_failed_upgrade_leaves_database_at_m001_with_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An m002 failing after its ALTER rolls back entirely: no score column, not recorded, rows kept."""
    path = tmp_path / "run.sqlite"
    await make_m001_database(path, monkeypatch)
    before = m001_snapshot(path)
    broken_m002 = M002_SCORES + "\nUPDATE generations SET state = 'done';\nSELECT no_such_function();\n"
    monkeypatch.setattr(migrations, "MIGRATIONS", (FIRST_ONLY[0], ("m002_scores", broken_m002)))

    with pytest.raises(sqlite3.OperationalError, match="no_such_function"):
        async with Store.open(path):
            pass  # pragma: no cover - open must fail

    assert applied_names(path) == ["m001_initial"]
    assert table_columns(path, "generations") == GENERATIONS_M001
    assert "generations_scores" not in named_indexes(path)
    assert m001_snapshot(path) == before

    # The real m002 then applies cleanly over the same file.
    monkeypatch.setattr(migrations, "MIGRATIONS", SHIPPED)
    async with raw_connection(path) as db:
        assert await migrate(db) == ["m002_scores"]
    assert table_columns(path, "generations") == EXPECTED_TABLES["generations"]
    assert m001_snapshot(path) == before


async def test_store_opens_in_wal_mode_with_its_pragmas(tmp_path: Path) -> None:
    """Store.open turns on WAL (persisted in the file) and sets busy_timeout and foreign_keys."""
    path = tmp_path / "run.sqlite"
    async with Store.open(path) as store:
        async with store.db.execute("PRAGMA journal_mode") as cursor:
            assert (await cursor.fetchone())[0] == "wal"
        async with store.db.execute("PRAGMA busy_timeout") as cursor:
            assert (await cursor.fetchone())[0] == 10000
        async with store.db.execute("PRAGMA foreign_keys") as cursor:
            assert (await cursor.fetchone())[0] == 1
        assert store.db.isolation_level is None
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
