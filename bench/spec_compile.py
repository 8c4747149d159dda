"""How fast does a cohort spec with a million rows compile, and in how much memory?

Writes a spec folder in a temporary directory (``config.yaml`` with CSV includes, every rule
kind: a subset, a tie, a balanced pair, a tuple, replicate axes and ``field_order``) whose rows
number exactly 1,000,000, then, in a fresh child process per run so each peak is its own:

* ``compile_s``: read the spec and its includes, parse, apply the rules, check every column
  against a catalog (``read_spec`` + ``compile_spec``);
* ``rows_s``: produce every row (the stream the CLI and, later, the daemon consume);
* ``csv_s``: the same rows written as CSV to ``/dev/null`` (what ``cohort compile`` does);
* ``peak_rss_mib``: the child's peak resident memory (``resource.getrusage``), the interpreter
  and imports included.

Targets: compile + rows < 10 s and < 1 GB. Run from the project root::

    .venv/bin/python bench/spec_compile.py --runs 3

It prints one JSON object: each run and the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daydreamd.core.spec.catalog import Catalog
from daydreamd.core.spec.compile import compile_spec
from daydreamd.storage.spec_files import read_spec

COMBOS, DRAFTS, DRAFT_MODELS, REPLICATES, ESSAYS, JUDGE_PAIRS = 250, 10, 4, 2, 5, 10
EXPECTED_ROWS = COMBOS * DRAFTS * DRAFT_MODELS * REPLICATES * ESSAYS * JUDGE_PAIRS  # 1,000,000

SPEC = """\
axes:
  combo_id: '@file:items/combos.csv'
  draft_template: '@file:items/drafts.csv'
  shadow_template: '@file:items/drafts.csv'
  draft_llm: '@file:items/draft_llms.csv'
  draft_replicate: [1, 2, 3]
  evaluation_template: '@file:items/judges.csv'
  evaluation_llm: [judge-a, judge-b]
rules:
  subsets:
    draft_replicate: [1, 2]
  ties:
    same_draft: [draft_template, shadow_template]
  tuples:
    essays:
      axes: [essay_template, essay_llm]
      items: '@file:items/essays.csv'
  pairs:
    judging:
      left: evaluation_template
      right: evaluation_llm
      allowed: '@file:items/judging.csv'
      balance: both
output:
  field_order: [combo_id, draft_template, draft_llm, draft_replicate, essay_template, essay_llm]
"""


def write_spec(folder: Path) -> Path:
    items = folder / "items"
    items.mkdir(parents=True)
    (folder / "config.yaml").write_text(SPEC)

    def column(name: str, header: str, values: list[str]) -> None:
        (items / name).write_text("\n".join([header, *values]) + "\n")

    column("combos.csv", "combo_id", [f"combo_v1_{i:012x}" for i in range(COMBOS)])
    column("drafts.csv", "draft_template", [f"draft-{i}" for i in range(DRAFTS)])
    column("draft_llms.csv", "draft_llm", [f"gen-{i}" for i in range(DRAFT_MODELS)])
    column("judges.csv", "evaluation_template", [f"judge-{i}" for i in range(JUDGE_PAIRS // 2)])
    column(
        "essays.csv", "essay_template,essay_llm", [f"essay-{i},gen-{i % DRAFT_MODELS}" for i in range(ESSAYS)]
    )
    pairs = [f"judge-{i},judge-{side}" for i in range(JUDGE_PAIRS // 2) for side in "ab"]
    column("judging.csv", "evaluation_template,evaluation_llm", pairs)
    return folder / "config.yaml"


def catalog() -> Catalog:
    return Catalog(
        draft_templates=frozenset(f"draft-{i}" for i in range(DRAFTS)),
        essay_templates=frozenset(f"essay-{i}" for i in range(ESSAYS)),
        evaluation_templates=frozenset(f"judge-{i}" for i in range(JUDGE_PAIRS)),
        generation_models=frozenset(f"gen-{i}" for i in range(DRAFT_MODELS)),
        evaluation_models=frozenset({"judge-a", "judge-b"}),
        combos=frozenset(f"combo_v1_{i:012x}" for i in range(COMBOS)),
    )


def child(spec: Path) -> dict[str, float | int]:
    """One run: compile, stream every row, write them as CSV to /dev/null."""
    started = time.perf_counter()
    compiled, problems = compile_spec(read_spec(spec), catalog())
    assert compiled is not None, [str(p) for p in problems]
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = sum(1 for _ in compiled.rows())
    rows_s = time.perf_counter() - started
    started = time.perf_counter()
    with Path(os.devnull).open("w", newline="") as sink:
        writer = csv.writer(sink, lineterminator="\n")
        writer.writerow(compiled.columns)
        writer.writerows(compiled.rows())
    csv_s = time.perf_counter() - started
    assert rows == EXPECTED_ROWS == compiled.count, rows
    return {
        "rows": rows,
        "compile_s": round(compile_s, 4),
        "rows_s": round(rows_s, 3),
        "seconds": round(compile_s + rows_s, 3),
        "csv_s": round(csv_s, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp) / "spec")
        runs = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(spec)], capture_output=True, text=True, check=True
            ).stdout
            runs.append(json.loads(out))
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "rows"}
    print(json.dumps({"rows": EXPECTED_ROWS, "runs": runs, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
