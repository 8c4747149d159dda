"""A cohort on disk: manifest, membership and the append-only combo mappings, written and read.

``data/cohorts/<cohort_id>/manifest.json`` and ``membership.csv`` are written atomically and
deterministically (rebuilding from unchanged inputs gives byte-identical files).
``data/combo_mappings.csv`` records each combo once, forever: it is only ever extended, and a
combo id that maps to different concepts than recorded is refused, never overwritten.

The readers serve results and the report: they stream ``membership.csv`` (a million rows are
never loaded whole) and take a missing or unreadable manifest for an absent one. Paths come
from :mod:`daydreamd.storage.layout`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from daydreamd.core.cohort import MEMBERSHIP_COLUMNS, Cohort, Combo
from daydreamd.core.errors import CohortError
from daydreamd.core.ids import cohort_id_problem
from daydreamd.storage.atomic import write_atomic, write_atomic_with
from daydreamd.storage.layout import DataLayout

COMBO_MAPPING_COLUMNS = ("combo_id", "version", "concept_id", "description_level", "k_max", "created_at")


@dataclass(frozen=True, slots=True)
class WrittenCohort:
    """Where a cohort was written and how many combos were new to the mappings file."""

    directory: Path
    manifest: Path
    membership: Path
    new_combos: int


def write_cohort(data_dir: Path, cohort: Cohort, *, now: datetime | None = None) -> WrittenCohort:
    """Write the cohort's files and record its combos; raise CohortError on a combo id collision
    or on a cohort id that is not one safe folder name (checked before anything is written)."""
    if problem := cohort_id_problem(cohort.cohort_id):
        raise CohortError(f"{problem}; nothing was written")
    layout = DataLayout(data_dir)
    new_combos = record_combos(layout.combo_mappings, cohort.combos, now=now)
    directory = layout.cohort_dir(cohort.cohort_id)
    manifest = layout.manifest(cohort.cohort_id)
    membership = layout.membership(cohort.cohort_id)
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


# -- reading (results, the report) ------------------------------------------------------------------


def read_manifest(data_dir: Path, cohort_id: str) -> dict[str, Any] | None:
    """A cohort's ``manifest.json``, or None when it is missing, unreadable or not a JSON object."""
    try:
        value = json.loads(DataLayout(data_dir).manifest(cohort_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_membership(path: Path, stage: str | None = "evaluation") -> Iterator[tuple[str, str]]:
    """(stage, gen_id) of each row of a ``membership.csv`` (only ``stage``'s rows unless None), streamed.

    Files in the standard layout (``stage,gen_id,...``: what daydreamd writes) are split by
    hand, which is 3x faster than ``csv.reader`` over a million rows; others go through ``csv``.
    """
    with path.open(encoding="utf-8", newline="") as f:
        first = f.readline()
        header = next(csv.reader([first]), [])
        if "gen_id" not in header or "stage" not in header:
            return
        if header[:2] == ["stage", "gen_id"]:
            prefix = f"{stage}," if stage is not None else ""
            for line in f:
                if line.startswith(prefix) and '"' not in line:
                    parts = line.split(",", 2)
                    if len(parts) > 1:
                        yield parts[0], parts[1].rstrip("\r\n")
                elif '"' in line:
                    row = next(csv.reader([line]), [])
                    if len(row) > 1 and (stage is None or row[0] == stage):
                        yield row[0], row[1]
            return
        gi, si = header.index("gen_id"), header.index("stage")
        width = max(gi, si)
        for row in csv.reader(f):
            if len(row) > width and (stage is None or row[si] == stage):
                yield row[si], row[gi]


def all_memberships(data_dir: Path) -> dict[str, tuple[str, ...]]:
    """Evaluation gen_id -> every cohort whose ``membership.csv`` lists it (files streamed one by one)."""
    layout = DataLayout(data_dir)
    cohorts_of: dict[str, tuple[str, ...]] = {}
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    for cohort_id in layout.cohort_ids():
        path = layout.membership(cohort_id)
        if not path.is_file():
            continue
        cohort = sys.intern(cohort_id)
        for _, gen_id in read_membership(path):
            before = cohorts_of.get(gen_id, ())
            if cohort in before:
                continue
            value = (*before, cohort)
            cohorts_of[gen_id] = shared.setdefault(value, value)
    return cohorts_of


def combo_concepts(data_dir: Path) -> dict[str, tuple[str, ...]]:
    """combo_id -> concept ids in combo order, from ``combo_mappings.csv`` (streamed; {} without it)."""
    concepts: dict[str, list[str]] = {}
    try:
        f = DataLayout(data_dir).combo_mappings.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        return {}
    with f:
        for row in csv.DictReader(f):
            combo, concept = row.get("combo_id") or "", row.get("concept_id") or ""
            members = concepts.setdefault(combo, [])
            if concept and concept not in members:
                members.append(concept)
    return {combo: tuple(members) for combo, members in concepts.items()}


def manifest_combos(data_dir: Path, wanted: set[str]) -> dict[str, tuple[str, ...]]:
    """Concept ids of ``wanted`` combos from the cohort manifests (for combos not in the mappings)."""
    found: dict[str, tuple[str, ...]] = {}
    for cohort_id in DataLayout(data_dir).cohort_ids():
        if not wanted - found.keys():
            break
        manifest = read_manifest(data_dir, cohort_id)
        for combo in manifest.get("combos", ()) if manifest is not None else ():
            if isinstance(combo, dict) and combo.get("combo_id") in wanted:
                found[combo["combo_id"]] = tuple(str(c) for c in combo.get("concept_ids", ()))
    return found


def template_versions(data_dir: Path) -> dict[str, dict[tuple[str, str], str]]:
    """Per cohort with a manifest: (stage, template id) -> the SHA-256 of the template's text then."""
    found: dict[str, dict[tuple[str, str], str]] = {}
    for cohort_id in DataLayout(data_dir).cohort_ids():
        manifest = read_manifest(data_dir, cohort_id)
        templates = manifest.get("templates") if manifest is not None else None
        if not isinstance(templates, dict):
            continue
        versions = found[cohort_id] = {}
        for stage, entries in templates.items():
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                    versions[(str(stage), str(entry.get("template_id")))] = entry["sha256"]
    return found
