"""How long do the result tables take, from SQLite for a million evaluations and from files?

What is measured
    ``daydreamctl results`` without the CLI around it, in four timed parts:

    * ``read``: the score rows (``read_rows_from_db`` or ``read_rows_from_files``), including the
      cohort's ``membership.csv`` (streamed), ``combo_mappings.csv`` and ``score_max``;
    * ``index``: ``Scores(rows)`` (sorting and the per-essay / per-group index);
    * ``tables``: ``build_tables`` (all six tables, plus the cross-experiment pivot with ``--all``);
    * ``write``: ``write_tables`` (every CSV, atomically).

    ``wall`` is their sum (``cpu`` the process time of the same span: on a shared, busy machine
    wall time is inflated, so the 1-minute load average is reported too); imports are reported
    apart (``import_s``). Each measurement runs in a
    fresh Python subprocess, so its peak RSS (``ru_maxrss``) belongs to that run alone.

The synthetic run state
    ``sqlite``: 6,250 combos (k=2) x 4 draft templates x 5 generation models = 125,000 drafts,
    x 2 essay templates = 250,000 essays, x 2 evaluation templates (one on 0..9) x 2 judges =
    1,000,000 finished evaluations (about 3 % failed, in two kinds), in a run state made by the
    real migrations, with the cohort's ``membership.csv`` (1,375,000 rows) and
    ``combo_mappings.csv``. ``files``: the same shape at 625 combos: 100,000 evaluations as
    ``data/gens/<stage>/<gen_id>/metadata.json`` + ``parsed.txt``, with a run state for the same
    generations so the two sources' tables can be compared byte for byte.

Targets
    sqlite: under 20 s wall and under 2 GiB peak RSS. files: reported (no target).

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/results_scale.py --runs 3

It prints a JSON list (one object per source) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024 * 1024
COHORT = "cohort_bench"
DRAFT_TEMPLATES = 4
GENERATION_MODELS = 5
ESSAY_TEMPLATES = 2
EVALUATION_TEMPLATES = (("novelty", 10), ("rigor", 9))
JUDGES = ("judge_a", "judge_b")
CONCEPTS = 200


@dataclass(frozen=True)
class Size:
    """One benchmark: the source read, how many combos, and the targets."""

    name: str
    combos: int
    max_wall_s: float | None
    max_rss_mb: float | None

    @property
    def evaluations(self) -> int:
        return self.combos * DRAFT_TEMPLATES * GENERATION_MODELS * ESSAY_TEMPLATES * 4


SIZES = {
    "sqlite": Size("sqlite", 6_250, 20.0, 2048.0),
    "files": Size("files", 625, None, None),
}


# --------------------------------------------------------------------------- the synthetic run


def _score(i: int) -> tuple[float | None, str | None]:
    """A deterministic score in 0..10 (a few fractional), or a failure kind for about 3 %."""
    if i % 41 == 0:
        return None, "parse_error"
    if i % 67 == 0:
        return None, "empty"
    h = (i * 2654435761) & 0xFFFFFFFF
    score = h % 11
    return (score + 0.5 if h % 17 == 0 and score < 10 else float(score)), None


def generations(combos: int) -> Any:
    """(stage, gen_id, parent, combo, template, model, replicate, state, score, kind, score_max) rows."""
    v = 0
    d = e = 0
    for c in range(combos):
        combo = f"combo_v1_{c:012x}"
        for t in range(DRAFT_TEMPLATES):
            for m in range(GENERATION_MODELS):
                draft = f"d_{d:016x}"
                d += 1
                model = f"gen_model_{m}"
                yield ("draft", draft, "", combo, f"draft_t{t}", model, 1, "done", None, None)
                for s in range(ESSAY_TEMPLATES):
                    essay = f"e_{e:016x}"
                    e += 1
                    yield ("essay", essay, draft, combo, f"essay_t{s}", model, 1, "done", None, None)
                    for template, score_max in EVALUATION_TEMPLATES:
                        for judge in JUDGES:
                            score, kind = _score(v)
                            if score is not None and score > score_max:
                                score = float(score_max)
                            state = "done" if score is not None else "failed"
                            gid = f"v_{v:016x}"
                            v += 1
                            yield ("evaluation", gid, essay, combo, template, judge, 1, state, score, kind)


def _concepts(c: int) -> tuple[str, str]:
    """The two concepts of combo ``c`` (distinct pairs of 200 concepts)."""
    a = c % CONCEPTS
    b = (a + 1 + c // CONCEPTS) % CONCEPTS
    return f"concept_{a:03d}", f"concept_{b:03d}"


def write_run(root: Path, combos: int, *, files: bool) -> tuple[Path, Path]:
    """Write the run state, membership, combo mappings, 1_raw scales (and gens files); returns (data, db)."""
    from daydreamd.storage.store import Store

    data = root / "data"
    db_path = root / "state" / "dd.sqlite"
    raw = data / "1_raw"
    (raw / "templates" / "evaluation").mkdir(parents=True)
    rows = ["template_id,template_name,description,parser,generator,active,score_max"]
    for template, score_max in EVALUATION_TEMPLATES:
        rows.append(f"{template},{template},bench,in_last_line,llm,True,{score_max}")
        (raw / "templates" / "evaluation" / f"{template}.txt").write_text("{{ response }}\n")
    (raw / "evaluation_templates.csv").write_text("\n".join(rows) + "\n")

    async def migrate() -> None:
        async with Store.open(db_path):
            pass

    asyncio.run(migrate())
    with (data / "combo_mappings.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("combo_id", "version", "concept_id", "description_level", "k_max", "created_at"))
        for c in range(combos):
            for concept in _concepts(c):
                writer.writerow((f"combo_v1_{c:012x}", "v1", concept, "paragraph", 2, "2025-01-01T00:00:00Z"))
    membership = data / "cohorts" / COHORT / "membership.csv"
    membership.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    rank = {"draft": 0, "essay": 1, "evaluation": 2}
    batch: list[tuple[Any, ...]] = []
    insert = (
        "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
        "llm_model_id, replicate, mode, state, error_kind, error_message, created_at, updated_at, score) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'llm', ?, ?, ?, 'now', 'now', ?)"
    )
    with membership.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            (
                "stage",
                "gen_id",
                "cohort_id",
                "parent_gen_id",
                "combo_id",
                "template_id",
                "llm_model_id",
                "replicate",
            )
        )
        for stage, gid, parent, combo, template, model, rep, state, score, kind in generations(combos):
            writer.writerow((stage, gid, COHORT, parent, combo, template, model, rep))
            message = f"bench failure {kind}" if kind else None
            batch.append(
                (gid, stage, rank[stage], parent, combo, template, model, rep, state, kind, message, score)
            )
            if files:
                _write_gen(data, stage, gid, parent, combo, template, model, state, score, kind, message)
            if len(batch) >= 50_000:
                db.executemany(insert, batch)
                batch.clear()
        db.executemany(insert, batch)
    db.execute(
        "INSERT INTO cohorts (cohort_id, first_seen, last_applied, fingerprint, counts) "
        "VALUES (?, 'now', 'now', 'bench', '{}')",
        (COHORT,),
    )
    db.commit()
    db.close()
    return data, db_path


def _write_gen(
    data: Path,
    stage: str,
    gid: str,
    parent: str,
    combo: str,
    template: str,
    model: str,
    state: str,
    score: float | None,
    kind: str | None,
    message: str | None,
) -> None:
    """A generation's metadata.json (the runner's schema, realistic size) and parsed.txt."""
    directory = data / "gens" / stage / gid
    directory.mkdir(parents=True)
    metadata = {
        "schema": 1,
        "stage": stage,
        "gen_id": gid,
        "parent_gen_id": parent,
        "combo_id": combo,
        "template_id": template,
        "template_sha256": "0" * 64,
        "llm_model_id": model,
        "model": f"vendor/{model}",
        "parameters": {"max_tokens": 8192, "temperature": 0.7},
        "parser": "in_last_line" if stage == "evaluation" else "identity",
        "mode": "llm",
        "replicate": 1,
        "status": state,
        "error": {"kind": kind, "message": message} if kind else None,
        "started_at": "2025-01-01T00:00:00.000Z",
        "finished_at": "2025-01-01T00:00:01.000Z",
        "durations_ms": {"render": 0.3, "llm": 900.1, "parse": 0.1, "total": 901.0},
        "attempts": 1,
        "reused_reply": False,
        "prompt_sha256": "1" * 64,
        "input_sha256": "2" * 64,
        "reply": {
            "finish_reason": "stop",
            "native_finish_reason": "stop",
            "truncated": False,
            "usage": {"prompt_tokens": 900, "completion_tokens": 300, "total_tokens": 1200},
            "provider": "bench",
            "generation_id": "gen-0",
            "served_model": f"vendor/{model}",
        },
        "files": {"prompt": f"gens/{stage}/{gid}/prompt.txt", "raw": f"gens/{stage}/{gid}/raw.txt"},
        "daydreamd_version": "0.1.0",
    }
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    if state == "done":
        parsed = repr(score) if stage == "evaluation" else f"text of {gid}\n"
        (directory / "parsed.txt").write_text(parsed)


# --------------------------------------------------------------------------- one measurement (child)


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def measure_once(source: str, data: Path, db: Path, out: Path, scope: str) -> dict[str, Any]:
    """Read, index, build and write once in this process; timings, counts and memory."""
    t_import = time.perf_counter()
    from daydreamd.core.collector import paused_gc
    from daydreamd.core.results import build_tables
    from daydreamd.core.scores import Scores
    from daydreamd.storage.score_db import read_rows_from_db
    from daydreamd.storage.score_files import read_rows_from_files
    from daydreamd.storage.scores import write_tables

    import_s = time.perf_counter() - t_import
    cohort = None if scope == "all" else COHORT
    load = _load()
    load = round(load, 2) if load is not None else None
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with paused_gc():  # as `daydreamctl results` does
        if source == "sqlite":
            loaded = read_rows_from_db(db, data, cohort_id=cohort)
        else:
            loaded = read_rows_from_files(data, cohort_id=cohort)
        t1 = time.perf_counter()
        scores = Scores(loaded.rows)
        del loaded
        t2 = time.perf_counter()
        tables = build_tables(scores, cross_experiment=cohort is None)
        t3 = time.perf_counter()
        paths = write_tables(out, tables)
        t4 = time.perf_counter()
    return {
        "wall_s": t4 - t0,
        "cpu_s": time.process_time() - cpu0,
        "load_average": load,
        "read_s": t1 - t0,
        "index_s": t2 - t1,
        "tables_s": t3 - t2,
        "write_s": t4 - t3,
        "import_s": import_s,
        "evaluations": len(scores),
        "scored": scores.scored,
        "failed": scores.failed,
        "essays": len(scores.essays),
        "table_rows": {t.path: len(t.rows) for t in tables},
        "csv_mb": round(sum(p.stat().st_size for p in paths) / MIB, 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


# --------------------------------------------------------------------------- driver (parent)


def run_child(source: str, data: Path, db: Path, out: Path, scope: str) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        source,
        str(data),
        str(db),
        str(out),
        scope,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.csv"))}


def bench(size: Size, work: Path, runs: int, scope: str) -> dict[str, Any]:
    """Build the synthetic run for ``size`` and measure it ``runs`` times."""
    root = work / size.name
    t = time.perf_counter()
    print(f"[{size.name}] writing {size.evaluations:,} evaluations ...", file=sys.stderr)
    data, db = write_run(root, size.combos, files=size.name == "files")
    setup_s = time.perf_counter() - t
    print(f"[{size.name}] written in {setup_s:.0f} s", file=sys.stderr)
    results = []
    for i in range(runs):
        out = root / f"out-{i}"
        result = run_child(size.name, data, db, out, scope)
        print(
            f"[{size.name}] run {i + 1}/{runs}: {result['wall_s']:.2f} s (cpu {result['cpu_s']:.2f} s), "
            f"peak {result['peak_rss_mb']:.0f} MiB, load {result['load_average']}",
            file=sys.stderr,
        )
        results.append(result)
    identical = None
    if size.name == "files":  # the same run from SQLite must give the same bytes
        run_child("sqlite", data, db, root / "out-sqlite", scope)
        identical = _tree(root / "out-0") == _tree(root / "out-sqlite")

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 3)

    wall = median("wall_s")
    peak = round(max(r["peak_rss_mb"] for r in results), 1)
    targets: dict[str, Any] = {}
    if size.max_wall_s is not None:
        targets |= {"max_wall_s": size.max_wall_s, "wall_met": wall < size.max_wall_s}
    if size.max_rss_mb is not None:
        targets |= {"max_peak_rss_mb": size.max_rss_mb, "rss_met": peak < size.max_rss_mb}
    first = results[0]
    summary: dict[str, Any] = {
        "source": size.name,
        "scope": scope,
        "evaluations": first["evaluations"],
        "scored": first["scored"],
        "failed": first["failed"],
        "essays": first["essays"],
        "runs": runs,
        "wall_s_median": wall,
        "wall_s_runs": [round(r["wall_s"], 3) for r in results],
        "cpu_s_median": median("cpu_s"),
        "load_average_runs": [r["load_average"] for r in results],
        "breakdown_s_median": {k: median(f"{k}_s") for k in ("read", "index", "tables", "write")},
        "evaluations_per_s": round(first["evaluations"] / wall) if wall else None,
        "peak_rss_mb": peak,
        "import_s_median": median("import_s"),
        "table_rows": first["table_rows"],
        "csv_mb": first["csv_mb"],
        "setup_s": round(setup_s, 1),
        "targets": targets,
    }
    if identical is not None:
        summary["identical_to_sqlite"] = identical
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="results_scale.py",
        description=(
            "Benchmark the result tables: 1,000,000 finished evaluations from SQLite and 100,000 from "
            "files (gens store). Each run is a fresh subprocess; prints a JSON list, one object per source."
        ),
        epilog="Example: .venv/bin/python bench/results_scale.py --runs 3",
    )
    parser.add_argument(
        "--source", choices=(*SIZES, "all"), default="all", help="which source (default: all)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, metavar="N", help="measurements per source (default: 3)"
    )
    parser.add_argument(
        "--scope",
        choices=("cohort", "all"),
        default="cohort",
        help="one cohort (as `results`, default) or every evaluation (as `results --all`)",
    )
    parser.add_argument(
        "--child", nargs=5, metavar=("SOURCE", "DATA", "DB", "OUT", "SCOPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        source, data, db, out, scope = args.child
        print(json.dumps(measure_once(source, Path(data), Path(db), Path(out), scope)))
        return 0
    sizes = list(SIZES.values()) if args.source == "all" else [SIZES[args.source]]
    work = Path(tempfile.mkdtemp(prefix="daydreamd-results-bench-"))
    try:
        results = [bench(size, work, args.runs, args.scope) for size in sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
