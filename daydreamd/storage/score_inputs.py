"""What both score readers share (:mod:`~daydreamd.storage.score_db`, :mod:`~daydreamd.storage.score_files`).

Concept ids per combo (``combo_mappings.csv``, then the cohort manifests), ``score_max`` per
evaluation template (the current ``1_raw/evaluation_templates.csv``, default 10), cohort
membership (each cohort's ``membership.csv``, streamed line by line, never loaded whole), and an
evaluation's score from its ``parsed.txt`` when no score was recorded. Files are reached through
:mod:`~daydreamd.storage.cohort_files`, :class:`~daydreamd.storage.gens.GensStore` and
:mod:`~daydreamd.storage.layout`.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from daydreamd.core.errors import DaydreamError
from daydreamd.core.scores import ScoreRow
from daydreamd.core.stages import Stage
from daydreamd.storage import readers
from daydreamd.storage.cohort_files import all_memberships, combo_concepts, manifest_combos, read_membership
from daydreamd.storage.gens import PARSED, GensStore
from daydreamd.storage.layout import DataLayout

MISSING_SCORE = "missing_score"
"""The error kind of a ``done`` evaluation whose score cannot be found."""
PARSE_ERROR = "parse_error"
"""The error kind of a ``done`` evaluation whose ``parsed.txt`` holds no number."""


class ResultsError(DaydreamError):
    """Results cannot be computed as asked (no run state, unknown cohort, ...); the message says why."""


@dataclass(slots=True)
class Loaded:
    """Score rows read from one source, with what the reader wants the user to know."""

    rows: list[ScoreRow]
    source: str
    """``sqlite`` or ``files``."""
    warnings: list[str] = field(default_factory=list)


def load_score_max(raw_dir: Path) -> dict[str, float]:
    """The top of each evaluation template's scale: its ``score_max`` column, else what its text says.

    The loader decides each template's scale (:mod:`daydreamd.core.scales`) and reports bad
    columns and unclear texts itself (``daydreamctl validate``), so there are no warnings here.
    """
    from daydreamd.core.loader import load_experiment
    from daydreamd.core.snapshot import read_raw_dir

    raw = read_raw_dir(raw_dir)
    if raw.missing:
        return {}
    experiment, _ = load_experiment(raw)
    return {
        template.template_id: template.verdict.scale.maximum
        for template in experiment.templates
        if template.stage is Stage.EVALUATION and template.verdict is not None
    }


def cohort_members(data_dir: Path, cohort_id: str) -> set[str]:
    """The evaluation gen_ids of one cohort (ResultsError when it has no ``membership.csv``)."""
    path = DataLayout(data_dir).membership(cohort_id)
    if not path.is_file():
        raise ResultsError(
            f"cohort {cohort_id} has no {path}; write it with `daydreamctl cohort --write` "
            "(the service writes it on every rebuild), or use --all"
        )
    return {gen_id for _, gen_id in read_membership(path)}


def open_state(db_path: Path) -> sqlite3.Connection:
    """The run state, read-only; ResultsError when there is none."""
    if not db_path.is_file():
        raise ResultsError(
            f"no run state at {db_path} (paths.state_db); run the service first, "
            "or read the gens store with --from-files"
        )
    return readers.connect_readonly(db_path)


@dataclass(slots=True)
class RowContext:
    """What both readers need to turn a finished evaluation into a row."""

    data_dir: Path
    gens: GensStore
    score_max: dict[str, float]
    combos: dict[str, tuple[str, ...]]
    cohort_id: str | None
    members: set[str] | None
    """Evaluation gen_ids in scope (None: every evaluation)."""
    cohorts_of: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, data_dir: Path, cohort_id: str | None) -> RowContext:
        """Read the shared inputs for one cohort (or every cohort: None)."""
        score_max = load_score_max(DataLayout(data_dir).raw_dir)
        members = cohort_members(data_dir, cohort_id) if cohort_id is not None else None
        cohorts_of = all_memberships(data_dir) if cohort_id is None else {}
        return cls(
            data_dir, GensStore(data_dir), score_max, combo_concepts(data_dir), cohort_id, members, cohorts_of
        )

    def cohorts(self, gen_id: str, fallback: str = "") -> tuple[str, ...]:
        """The cohorts an evaluation belongs to (``fallback`` when no membership lists it)."""
        if self.cohort_id is not None:
            return (self.cohort_id,)
        found = self.cohorts_of.get(gen_id)
        if found is None and fallback:
            return (fallback,)
        return found or ()

    def fill_concepts(self, rows: list[ScoreRow]) -> list[ScoreRow]:
        """Rows whose combo was not in the mappings get their concepts from the manifests."""
        missing = {r.combo_id for r in rows if r.combo_id and r.combo_id not in self.combos}
        if not missing:
            return rows
        self.combos.update(manifest_combos(self.data_dir, missing))
        return [
            r._replace(concept_ids=self.combos.get(r.combo_id, ())) if r.combo_id in missing else r
            for r in rows
        ]

    def read_score(self, gen_id: str) -> tuple[float | None, str]:
        """An evaluation's score from its ``parsed.txt`` (last non-empty line), or (None, why)."""
        text = self.gens.try_read_text(Stage.EVALUATION, gen_id, PARSED)
        if text is None:
            return None, MISSING_SCORE
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return None, MISSING_SCORE
        try:
            value = float(lines[-1])
        except ValueError:
            return None, PARSE_ERROR
        return (value, "") if math.isfinite(value) else (None, PARSE_ERROR)


def one_line_breaks(message: str) -> str:
    """Line breaks as ``\\n`` only: a bare ``\\r`` would end a CSV row for most readers."""
    return message.replace("\r\n", "\n").replace("\r", "\n") if "\r" in message else message


def stage_order(progress: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Progress with the stages in flow order (draft, essay, evaluation; others after, by name)."""
    order = {str(s): i for i, s in enumerate(Stage)}
    return dict(sorted(progress.items(), key=lambda item: (order.get(item[0], 99), item[0])))
