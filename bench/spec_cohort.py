"""How fast does a million-row cohort spec become a named cohort in the run state, and in how much memory?

Writes, in a temporary data directory, a spec folder (``cohorts/<name>/spec/config.yaml`` with CSV
includes: a subset, a tuple, a balanced pair and ``field_order``) whose compiled rows number
exactly 1,000,000, against an in-memory experiment that holds every id the spec names: 23 active
concepts (k=2: 253 combos, 250 of them named), 10 draft templates, 4 llm essay templates and one
copy-mode essay template, 5 evaluation templates, 4 generation models and 2 judges. Only one
template per stage and one model per kind are active, so the default cohort is small (253 paths):
what is measured is the named cohort.

The rows are evaluations: 250 combos x 10 draft templates x 4 draft models x 2 draft replicates
(20,000 drafts) x 5 (essay template, essay model) tuples (100,000 essays; the copy essay keeps
its draft's model) x 10 (evaluation template, judge) pairs = 1,000,000 evaluations, each row a
distinct path. Then, in a fresh child process per run so each peak is its own, the sequence the
service runs (``daydreamd/daemon/named.py``):

* ``compile_s``: read the spec and its includes, the experiment's catalog, parse, apply the rules,
  check every column (``read_spec`` + ``catalog_from_experiment`` + ``compile_spec``);
* ``build_s``: every row turned into generations (``build_spec_cohort``), with ``generations``
  per stage (asserted: 20,000 drafts, 100,000 essays, 1,000,000 evaluations);
* ``write_s``: ``manifest.json``, ``membership.csv`` and the combo mappings (``write_cohort``);
* ``sync_s``: the first ``Store.sync_named`` into a fresh SQLite file (every row new);
* ``resync_s``: a second ``sync_named`` of the same generations (nothing changes: what a restart
  or an unchanged spec whose key was lost costs);
* ``peak_rss_build_mib`` / ``peak_rss_mib``: the child's peak resident memory
  (``resource.getrusage``, the interpreter, imports and the experiment included) by the end of
  the build, and over the whole run.

Target (the issue): compiling a spec with 1M rows takes < 10 s and < 1 GB, shown as
``compile_plus_build_s`` against ``peak_rss_build_mib``. Run from the project root::

    .venv/bin/python bench/spec_cohort.py --runs 3

It prints one JSON object: each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daydreamd.core.build import Build, build_from_raw
from daydreamd.core.config import Settings
from daydreamd.core.problems import Level
from daydreamd.core.snapshot import RawFiles
from daydreamd.core.spec.catalog import catalog_from_experiment
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.membership import SpecInputs, build_spec_cohort
from daydreamd.core.stages import Stage
from daydreamd.storage.cohort_files import write_cohort
from daydreamd.storage.spec_files import read_spec
from daydreamd.storage.store import Store
from tests.core.experiment_files import (
    DRAFT_TEXT,
    ESSAY_TEXT,
    EVALUATION_HEADER,
    EVALUATION_TEXT,
    concepts_csv,
    experiment_files,
    models_csv,
    replication_csv,
    templates_csv,
)

NAME = "bench-million"
CONCEPTS = 23  # k=2: 253 combos in the default cohort
COMBOS, DRAFTS, DRAFT_MODELS, REPLICATES, JUDGE_TEMPLATES, JUDGES = 250, 10, 4, 2, 5, 2
LLM_ESSAYS, COPY_ESSAYS = 4, 1
ESSAYS = LLM_ESSAYS + COPY_ESSAYS
JUDGE_PAIRS = JUDGE_TEMPLATES * JUDGES
EXPECTED_ROWS = COMBOS * DRAFTS * DRAFT_MODELS * REPLICATES * ESSAYS * JUDGE_PAIRS  # 1,000,000
EXPECTED = {  # every row is its own path: nothing collapses below the drafts and essays it shares
    "draft": COMBOS * DRAFTS * DRAFT_MODELS * REPLICATES,  # 20,000
    "essay": COMBOS * DRAFTS * DRAFT_MODELS * REPLICATES * ESSAYS,  # 100,000
    "evaluation": EXPECTED_ROWS,  # 1,000,000
}

SPEC = """\
axes:
  combo_id: '@file:items/combos.csv'
  draft_template: '@file:items/drafts.csv'
  draft_llm: '@file:items/draft_llms.csv'
  draft_replicate: [1, 2, 3]
  evaluation_template: '@file:items/judges.csv'
  evaluation_llm: [judge-a, judge-b]
rules:
  subsets:
    draft_replicate: [1, 2]
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


def raw_files() -> dict[str, bytes]:
    """The experiment: every id the spec names, one template per stage and one model per kind active."""

    def row(template_id: str, generator: str, active: bool, *extra: str) -> str:
        parser = "in_last_line" if extra else ""
        return ",".join((template_id, template_id, "", parser, generator, str(active), *extra))

    concepts = [f"concept-{i:02d}" for i in range(CONCEPTS)]
    drafts = [f"draft-{i}" for i in range(DRAFTS)]
    essays = [f"essay-{i}" for i in range(LLM_ESSAYS)]
    copies = [f"essay-copy-{i}" for i in range(COPY_ESSAYS)]
    judges = [f"judge-{i}" for i in range(JUDGE_TEMPLATES)]
    gens = [f"gen-{i},vendor/gen-{i},vendor,Gen {i},{i == 0},false" for i in range(DRAFT_MODELS)]
    evals = [f"judge-{s},vendor/judge-{s},vendor,Judge {s},false,{s == 'a'}" for s in "ab"[:JUDGES]]
    files: dict[str, str | bytes | None] = {
        "concepts_metadata.csv": concepts_csv(*(f"{c},{c.title()},True" for c in concepts)),
        "draft_templates.csv": templates_csv(*(row(t, "llm", t == drafts[0]) for t in drafts)),
        "essay_templates.csv": templates_csv(
            *(row(t, "llm", t == essays[0]) for t in essays), *(row(t, "copy", False) for t in copies)
        ),
        "evaluation_templates.csv": templates_csv(
            *(row(t, "llm", t == judges[0], "10") for t in judges), header=EVALUATION_HEADER
        ),
        "llm_models.csv": models_csv(*gens, *evals),
        "replication_config.csv": replication_csv("draft,1", "essay,1", "evaluation,1"),
        # the base experiment's files this one replaces
        "templates/draft/sketch.txt": None,
        "templates/essay/essay.txt": None,
        "templates/evaluation/judge.txt": None,
    }
    for stage, ids, text in (
        ("draft", drafts, DRAFT_TEXT),
        ("essay", essays, ESSAY_TEXT),
        ("evaluation", judges, EVALUATION_TEXT),
    ):
        for template_id in ids:
            files[f"templates/{stage}/{template_id}.txt"] = text
    for concept in concepts:
        files[f"concepts/descriptions-sentence/{concept}.txt"] = f"{concept} in one sentence."
        files[f"concepts/descriptions-paragraph/{concept}.txt"] = f"{concept} in a paragraph."
    return experiment_files(files)


def load_build() -> Build:
    build = build_from_raw(RawFiles.of(raw_files()), Settings())
    assert build.cohort is not None, [str(p) for p in build.problems if p.level is Level.ERROR]
    return build


def write_spec(data_dir: Path, combo_ids: list[str]) -> Path:
    folder = data_dir / "cohorts" / NAME / "spec"
    items = folder / "items"
    items.mkdir(parents=True)
    (folder / "config.yaml").write_text(SPEC)

    def column(name: str, header: str, values: list[str]) -> None:
        (items / name).write_text("\n".join([header, *values]) + "\n")

    column("combos.csv", "combo_id", combo_ids[:COMBOS])
    column("drafts.csv", "draft_template", [f"draft-{i}" for i in range(DRAFTS)])
    column("draft_llms.csv", "draft_llm", [f"gen-{i}" for i in range(DRAFT_MODELS)])
    column("judges.csv", "evaluation_template", [f"judge-{i}" for i in range(JUDGE_TEMPLATES)])
    essays = [f"essay-{i},gen-{(i + 1) % DRAFT_MODELS}" for i in range(LLM_ESSAYS)]  # another model's essays
    essays += [f"essay-copy-{i},gen-0" for i in range(COPY_ESSAYS)]  # essay_llm ignored: the draft's model
    column("essays.csv", "essay_template,essay_llm", essays)
    pairs = [f"judge-{i},judge-{side}" for i in range(JUDGE_TEMPLATES) for side in "ab"[:JUDGES]]
    column("judging.csv", "evaluation_template,evaluation_llm", pairs)
    return folder


def peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(spec: Path) -> dict[str, Any]:
    """One run: compile, build, write and sync (twice) the spec's cohort, as the service does."""
    build = load_build()
    assert build.cohort is not None
    settings = Settings()

    started = time.perf_counter()
    doc = read_spec(spec)
    catalog = catalog_from_experiment(build.experiment, raw_label=build.raw.label)
    compiled, problems = compile_spec(doc, catalog)
    assert compiled is not None, [str(p) for p in problems]
    assert not [p for p in problems if p.level is Level.ERROR], [str(p) for p in problems]
    compile_s = time.perf_counter() - started
    assert compiled.count == EXPECTED_ROWS, compiled.count

    started = time.perf_counter()
    inputs = SpecInputs(experiment=build.experiment, settings=settings, default=build.cohort)
    cohort, more = build_spec_cohort(NAME, compiled, inputs, fingerprint=doc.fingerprint)
    build_s = time.perf_counter() - started
    assert cohort is not None, [str(p) for p in more]
    peak_build = peak_mib()
    counts = Counter(str(g.stage) for g in cohort.generations)
    assert dict(counts) == EXPECTED, dict(counts)
    copies = [
        g for g in cohort.generations if g.stage is Stage.ESSAY and g.template_id.startswith("essay-copy")
    ]
    drafts = {g.gen_id: g for g in cohort.generations if g.stage is Stage.DRAFT}
    assert copies and all(g.llm_model_id == drafts[g.parent_gen_id].llm_model_id for g in copies)
    del copies, drafts

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_cohort(Path(tmp) / "data", cohort)
        write_s = time.perf_counter() - started
        modes = {(t.stage, t.template_id): str(t.generator) for t in build.experiment.templates}

        async def sync() -> tuple[float, float, Any, Any]:
            async with Store.open(Path(tmp) / "state" / "daydreamd.sqlite3") as store:
                timings = []
                results = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    results.append(
                        await store.sync_named(
                            NAME, cohort.generations, modes, key="bench", counts=cohort.counts()
                        )
                    )
                    timings.append(time.perf_counter() - t0)
                return timings[0], timings[1], results[0], results[1]

        sync_s, resync_s, first, second = anyio.run(sync)
    total = len(cohort.generations)
    assert first.added == total and first.retired == 0, first
    assert second.added == second.retired == second.revived == 0, second
    return {
        "rows": compiled.count,
        "generations": dict(counts),
        "compile_s": round(compile_s, 3),
        "build_s": round(build_s, 3),
        "compile_plus_build_s": round(compile_s + build_s, 3),
        "write_s": round(write_s, 3),
        "sync_s": round(sync_s, 3),
        "resync_s": round(resync_s, 3),
        "sync_added": first.added,
        "peak_rss_build_mib": peak_build,
        "peak_rss_mib": peak_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    build = load_build()
    assert build.cohort is not None
    combo_ids = [c.combo_id for c in build.cohort.combos]
    assert len(combo_ids) >= COMBOS, len(combo_ids)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp) / "data", combo_ids)
        runs = []
        for _ in range(args.runs):
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(spec)], capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"the run failed:\n{done.stderr}")
            runs.append(json.loads(done.stdout))
    skip = {"rows", "generations", "sync_added"}
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key not in skip}
    print(
        json.dumps(
            {"rows": EXPECTED_ROWS, "generations": EXPECTED, "runs": runs, "median": medians}, indent=2
        )
    )


if __name__ == "__main__":
    main()
