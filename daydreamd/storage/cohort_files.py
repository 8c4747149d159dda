"""Writing a cohort to disk: manifest, membership and the append-only combo mappings.

``data/cohorts/<cohort_id>/manifest.json`` and ``membership.csv`` are written atomically and
deterministically (rebuilding from unchanged inputs gives byte-identical files).
``data/combo_mappings.csv`` records each combo once, forever: it is only ever extended, and a
combo id that maps to different concepts than recorded is refused, never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from daydreamd.core.cohort import MEMBERSHIP_COLUMNS, Cohort, Combo
from daydreamd.core.errors import CohortError
from daydreamd.storage.atomic import write_atomic, write_atomic_with

COMBO_MAPPING_COLUMNS = ("combo_id", "version", "concept_id", "description_level", "k_max", "created_at")


@dataclass(frozen=True, slots=True)
class WrittenCohort:
    """Where a cohort was written and how many combos were new to the mappings file."""

    directory: Path
    manifest: Path
    membership: Path
    new_combos: int


def cohort_dir(data_dir: Path, cohort_id: str) -> Path:
    """``data/cohorts/<cohort_id>``."""
    return data_dir / "cohorts" / cohort_id


def write_cohort(data_dir: Path, cohort: Cohort, *, now: datetime | None = None) -> WrittenCohort:
    """Write the cohort's files and record its combos; raise CohortError on a combo id collision."""
    new_combos = record_combos(data_dir / "combo_mappings.csv", cohort.combos, now=now)
    directory = cohort_dir(data_dir, cohort.cohort_id)
    manifest = directory / "manifest.json"
    membership = directory / "membership.csv"
    write_atomic(manifest, json.dumps(cohort.manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    write_atomic_with(membership, lambda f: write_membership(f, cohort))
    return WrittenCohort(directory, manifest, membership, new_combos)


def write_membership(out: IO[bytes], cohort: Cohort) -> None:
    """Stream ``membership.csv`` (LF line endings) in cohort order."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MEMBERSHIP_COLUMNS)
    cid = cohort.cohort_id
    writer.writerows(
        (
            g.stage.value,
            g.gen_id,
            cid,
            g.parent_gen_id,
            g.combo_id,
            g.template_id,
            g.llm_model_id,
            g.replicate,
        )
        for g in cohort.generations
    )
    text.flush()
    text.detach()


def read_combo_mappings(path: Path) -> dict[str, tuple[frozenset[str], str]]:
    """Recorded combos: combo_id -> (concept ids, description level)."""
    if not path.exists():
        return {}
    concepts: dict[str, set[str]] = {}
    levels: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            concepts.setdefault(row["combo_id"], set()).add(row["concept_id"])
            levels[row["combo_id"]] = row["description_level"]
    return {cid: (frozenset(members), levels[cid]) for cid, members in concepts.items()}


def record_combos(path: Path, combos: Sequence[Combo], *, now: datetime | None = None) -> int:
    """Append combos not yet recorded (atomically: the whole file is rewritten via rename).

    Returns how many were new. Raises CohortError if a known combo id names other concepts.
    """
    known = read_combo_mappings(path)
    new = []
    for combo in combos:
        recorded = known.get(combo.combo_id)
        if recorded is None:
            new.append(combo)
            known[combo.combo_id] = (frozenset(combo.concept_ids), combo.description_level)
        elif recorded != (frozenset(combo.concept_ids), combo.description_level):
            raise CohortError(
                f"{path}: combo id collision: {combo.combo_id} is recorded for {sorted(recorded[0])} "
                f"({recorded[1]}) but now means {sorted(combo.concept_ids)} ({combo.description_level}); "
                "nothing was written"
            )
    if new:
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        existing = path.read_bytes() if path.exists() else b""
        write_atomic(path, existing + _mapping_rows(new, stamp, header=not existing))
    return len(new)


def _mapping_rows(combos: Iterable[Combo], stamp: str, *, header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COMBO_MAPPING_COLUMNS)
    for combo in combos:
        k = len(combo.concept_ids)
        for concept_id in combo.concept_ids:
            writer.writerow((combo.combo_id, "v1", concept_id, combo.description_level, k, stamp))
    return buffer.getvalue().encode("utf-8")
