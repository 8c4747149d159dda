"""How long does it take to go from ``data/1_raw`` to a cohort on disk, at scale?

What is measured
    The offline path the CLI and the daemon take on every rebuild, timed in three parts:

    * ``read_load_validate``: ``read_raw_dir`` (snapshot + fingerprint) and ``load_experiment``
      (CSV parsing, id checks, template checks);
    * ``build``: ``build_cohort`` (combos, gen ids, manifest, link checks);
    * ``write``: ``write_cohort`` (``combo_mappings.csv``, ``manifest.json``, ``membership.csv``).

    ``wall`` is the sum of the three. Interpreter start-up and imports are not included (they are
    reported separately as ``import_s``).

How
    A synthetic experiment is generated on disk in a temporary directory (concepts with
    paragraph descriptions, draft/essay/evaluation template CSVs and Jinja template files, an
    ``llm_models.csv``). Each measurement runs in a fresh Python subprocess, so the peak RSS
    (``ru_maxrss`` of that child) belongs to exactly one run, and every run writes into an empty
    output directory so ``combo_mappings.csv`` is written in full each time. Temporary
    directories are removed afterwards.

Sizes
    Both sizes use 40 active concepts, 4 draft templates x 3 generation models, 2 essay
    templates, 2 evaluation templates x 2 judge models (1 replicate per stage):

    * ``small``: k=2 -> 780 combos -> 9,360 drafts, 18,720 essays, 74,880 evaluations = 102,960 rows
    * ``large``: k=3 -> 9,880 combos -> 118,560 drafts, 237,120 essays, 948,480 evaluations
      = 1,304,160 rows

Targets
    small: under 1 s wall. large: under 10 s wall and under 1 GiB peak RSS.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/cohort_scale.py --size all --runs 3

It prints one JSON object per size (a JSON list) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.experiment import Shape
from bench.experiment import write_experiment as write_bench_experiment

N_CONCEPTS = 40
DRAFT_TEMPLATES = 4
GENERATION_MODELS = 3
ESSAY_TEMPLATES = 2
EVALUATION_TEMPLATES = 2
JUDGE_MODELS = 2


MIB = 1024 * 1024


@dataclass(frozen=True)
class Size:
    """One benchmark size: the experiment shape and the targets it is held to."""

    name: str
    k: int
    max_wall_s: float
    max_rss_mb: float | None

    @property
    def combos(self) -> int:
        return math.comb(N_CONCEPTS, self.k)

    def expected_rows(self) -> dict[str, int]:
        drafts = self.combos * DRAFT_TEMPLATES * GENERATION_MODELS
        essays = drafts * ESSAY_TEMPLATES
        evaluations = essays * EVALUATION_TEMPLATES * JUDGE_MODELS
        return {"draft": drafts, "essay": essays, "evaluation": evaluations}


SIZES: dict[str, Size] = {
    "small": Size("small", k=2, max_wall_s=1.0, max_rss_mb=None),
    "large": Size("large", k=3, max_wall_s=10.0, max_rss_mb=1024.0),
}


def write_experiment(raw_dir: Path) -> None:
    """The benchmark's experiment: 40 concepts, 4 draft templates x 3 models, 2 essay, 2 x 2 judges."""
    write_bench_experiment(
        raw_dir,
        Shape(
            N_CONCEPTS,
            DRAFT_TEMPLATES,
            ESSAY_TEMPLATES,
            EVALUATION_TEMPLATES,
            GENERATION_MODELS,
            JUDGE_MODELS,
        ),
    )


# --------------------------------------------------------------------------- one measurement (child)


def _current_rss_mb() -> float:
    """Resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure_once(raw_dir: Path, out_dir: Path, k: int) -> dict[str, Any]:
    """Run the pipeline once in this process and return timings, rows and memory."""
    t_import = time.perf_counter()
    from dataclasses import replace

    from daydreamd.core.cohort import build_cohort
    from daydreamd.core.config import Settings
    from daydreamd.core.loader import load_experiment
    from daydreamd.core.problems import has_errors
    from daydreamd.core.snapshot import read_raw_dir
    from daydreamd.storage.cohort_files import write_cohort

    import_s = time.perf_counter() - t_import
    settings = Settings()
    settings = replace(
        settings,
        paths=replace(settings.paths, data_dir=out_dir),
        experiment=replace(settings.experiment, k_max=k),
    )
    rss = {"baseline": _current_rss_mb()}

    t0 = time.perf_counter()
    raw = read_raw_dir(raw_dir)
    t1 = time.perf_counter()
    experiment, problems = load_experiment(raw)
    t2 = time.perf_counter()
    if has_errors(problems):
        raise SystemExit("synthetic experiment has errors:\n" + "\n".join(map(str, problems)))
    rss["after_load"] = _current_rss_mb()
    cohort, link_problems = build_cohort(experiment, settings)
    t3 = time.perf_counter()
    if link_problems:
        raise SystemExit("cohort has link problems:\n" + "\n".join(map(str, link_problems[:10])))
    rss["after_build"] = _current_rss_mb()
    written = write_cohort(out_dir, cohort)
    t4 = time.perf_counter()
    rss["after_write"] = _current_rss_mb()

    return {
        "wall_s": t4 - t0,
        "read_s": t1 - t0,
        "load_validate_s": t2 - t1,
        "build_s": t3 - t2,
        "write_s": t4 - t3,
        "import_s": import_s,
        "rows": len(cohort.generations),
        "rows_per_stage": cohort.counts(),
        "combos": len(cohort.combos),
        "new_combos": written.new_combos,
        "membership_mb": written.membership.stat().st_size / MIB,
        "warnings": len(problems),
        "rss_mb": rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


# --------------------------------------------------------------------------- driver (parent)


def run_child(raw_dir: Path, out_dir: Path, k: int) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its output directory is removed afterwards."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(raw_dir), str(out_dir), str(k)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"measurement failed (exit {done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def bench_size(size: Size, raw_dir: Path, work: Path, runs: int) -> dict[str, Any]:
    """Measure ``size`` ``runs`` times and summarise."""
    results = []
    for i in range(runs):
        result = run_child(raw_dir, work / f"out-{size.name}-{i}", size.k)
        print(
            f"[{size.name}] run {i + 1}/{runs}: {result['wall_s']:.3f} s, "
            f"{result['rows']:,} rows, peak {result['peak_rss_mb']:.0f} MiB",
            file=sys.stderr,
        )
        results.append(result)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 4)

    expected = size.expected_rows()
    first = results[0]
    wall = median("wall_s")
    peak = round(max(r["peak_rss_mb"] for r in results), 1)
    targets: dict[str, Any] = {
        "rows": sum(expected.values()),
        "max_wall_s": size.max_wall_s,
        "wall_met": wall < size.max_wall_s,
    }
    if size.max_rss_mb is not None:
        targets |= {"max_peak_rss_mb": size.max_rss_mb, "rss_met": peak < size.max_rss_mb}
    targets["met"] = all(v for k, v in targets.items() if k.endswith("_met"))
    return {
        "size": size.name,
        "concepts": N_CONCEPTS,
        "k": size.k,
        "combos": first["combos"],
        "rows": first["rows"],
        "rows_per_stage": first["rows_per_stage"],
        "rows_as_expected": first["rows_per_stage"] == expected,
        "runs": runs,
        "wall_s_median": wall,
        "wall_s_runs": [round(r["wall_s"], 4) for r in results],
        "breakdown_s_median": {
            "read_load_validate": round(
                statistics.median(r["read_s"] + r["load_validate_s"] for r in results), 4
            ),
            "build": median("build_s"),
            "write": median("write_s"),
        },
        "read_load_validate_detail_s_median": {
            "read": median("read_s"),
            "load_validate": median("load_validate_s"),
        },
        "rows_per_s": round(first["rows"] / wall) if wall else None,
        "peak_rss_mb": peak,
        "rss_mb_median": {
            phase: round(statistics.median(r["rss_mb"][phase] for r in results), 1)
            for phase in first["rss_mb"]
        },
        "membership_csv_mb": round(first["membership_mb"], 1),
        "import_s_median": median("import_s"),
        "targets": targets,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cohort_scale.py",
        description=(
            "Benchmark read_raw_dir + load/validate + build_cohort + write_cohort on a synthetic "
            "experiment (40 concepts, 4 draft templates x 3 models, 2 essay templates, 2 evaluation "
            "templates x 2 judges). Each run is a fresh subprocess; prints a JSON list, one object per size."
        ),
        epilog=(
            "sizes: small = k=2, 102,960 rows (target < 1 s); large = k=3, 1,304,160 rows "
            "(target < 10 s and < 1 GiB peak RSS). "
            "Example: .venv/bin/python bench/cohort_scale.py --size all --runs 3"
        ),
    )
    parser.add_argument(
        "--size",
        choices=(*SIZES, "all"),
        default="all",
        help="which size to measure (default: all)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        metavar="N",
        help="measurements per size, each in a fresh subprocess; the median is reported (default: 3)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "write the synthetic experiment to DIR/1_raw (which must not exist yet) and keep it, "
            "e.g. for profiling (default: a temporary directory, removed afterwards)"
        ),
    )
    parser.add_argument("--child", nargs=3, metavar=("RAW", "OUT", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        raw, out, k = args.child
        print(json.dumps(measure_once(Path(raw), Path(out), int(k))))
        return 0

    sizes = list(SIZES.values()) if args.size == "all" else [SIZES[args.size]]
    with tempfile.TemporaryDirectory(prefix="daydreamd-bench-") as tmp:
        work = Path(tmp)
        if args.keep is not None:
            raw_dir = args.keep / "1_raw"
            if raw_dir.exists():
                print(f"{raw_dir} exists; refusing to overwrite it", file=sys.stderr)
                return 2
        else:
            raw_dir = work / "1_raw"
        write_experiment(raw_dir)
        results = [bench_size(size, raw_dir, work, args.runs) for size in sizes]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
