"""Every path under the data directory, in one place.

::

    <data_dir>/
      1_raw/                                the experiment (read by ``core.snapshot``)
      combo_mappings.csv                    every combo ever built, only ever extended
      cohorts/<cohort_id>/manifest.json     what the cohort is made of
      cohorts/<cohort_id>/membership.csv    its generations, one row each
      cohorts/<cohort_id>/reports/          its result tables and ``report.html``
      cross_experiment/                     the result tables of every cohort (``results --all``)
      gens/<stage>/<gen_id>/                one generation's files: prompt.txt, raw.txt (raw.<n>.txt
                                            once archived), parsed.txt, metadata.json
      batches/<batch id>/                   a batch's input.jsonl (as uploaded), output.jsonl and
                                            errors.jsonl (as downloaded)

Every path built here stays under its folder: each name given to a builder (a stage, a gen_id, a
cohort id, a file name) must be one plain folder or file name, else :class:`UnsafePathError`
is raised, whatever the caller checked before (cohort ids from the config, the environment or a
``--cohort`` argument are checked where they are read, see ``core.ids.cohort_id_problem``).

The run state (SQLite) is not part of this tree: it lives at ``paths.state_db``, which the config
resolves against the config file's folder (by default ``state/daydreamd.sqlite`` next to it).

Storage modules (``gens``, ``cohort_files``, the score readers, the result writers) ask a
:class:`DataLayout` for their paths instead of joining names by hand. The pure core writes paths
relative to the data directory into result tables (``gens/essay/<gen_id>/parsed.txt``); they are
the same as :func:`relative_gen_file` gives.
"""

from __future__ import annotations

from pathlib import Path

from daydreamd.core.errors import DaydreamError
from daydreamd.core.snapshot import RAW_DIR_NAME
from daydreamd.core.stages import Stage

GENS_DIR = "gens"
BATCHES_DIR = "batches"
COHORTS_DIR = "cohorts"
COMBO_MAPPINGS = "combo_mappings.csv"
CROSS_EXPERIMENT_DIR = "cross_experiment"
MANIFEST = "manifest.json"
MEMBERSHIP = "membership.csv"
REPORTS_DIR = "reports"
REPORT_HTML = "report.html"

PROMPT = "prompt.txt"
"""A generation's prompt, exactly as sent."""
RAW = "raw.txt"
"""The model's reply, exactly as received."""
PARSED = "parsed.txt"
"""What children and results read; present only when the generation succeeded."""
METADATA = "metadata.json"
"""Ids, parameters, status, usage: see ``core.metadata``."""


class UnsafePathError(DaydreamError, ValueError):
    """A name given to a path builder would leave its folder (``..``, a separator, empty, NUL)."""


def _name(value: str, what: str, folder: Path) -> str:
    """``value`` when it is one plain name inside ``folder``; raise :class:`UnsafePathError` otherwise."""
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise UnsafePathError(
            f"{what} {value!r} is not a plain name, so a path built from it could leave {folder}; "
            "nothing was read or written"
        )
    return value


def relative_gen_file(stage: Stage | str, gen_id: str, name: str) -> str:
    """``gens/<stage>/<gen_id>/<name>``: a generation's file relative to the data directory."""
    return f"{GENS_DIR}/{stage}/{gen_id}/{name}"


class DataLayout:
    """The paths of one data directory (nothing is created or checked here)."""

    __slots__ = ("batches", "cohorts", "data_dir", "gens")

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.gens = data_dir / GENS_DIR
        """``gens/``: every generation's folder, by stage."""
        self.cohorts = data_dir / COHORTS_DIR
        """``cohorts/``: one folder per cohort."""
        self.batches = data_dir / BATCHES_DIR
        """``batches/``: one folder per batch, named by its id in the run state."""

    # -- the experiment and the combos ----------------------------------------------------------

    @property
    def raw_dir(self) -> Path:
        """``1_raw/``: the experiment's inputs."""
        return self.data_dir / RAW_DIR_NAME

    @property
    def combo_mappings(self) -> Path:
        """``combo_mappings.csv``: combo id -> concepts, append-only."""
        return self.data_dir / COMBO_MAPPINGS

    # -- generations ---------------------------------------------------------------------------

    def stage_dir(self, stage: Stage | str) -> Path:
        """``gens/<stage>``."""
        return self.gens / _name(str(stage), "stage", self.gens)

    def gen_dir(self, stage: Stage | str, gen_id: str) -> Path:
        """``gens/<stage>/<gen_id>``."""
        return self.stage_dir(stage) / _name(gen_id, "gen_id", self.gens)

    def gen_file(self, stage: Stage | str, gen_id: str, name: str) -> Path:
        """``gens/<stage>/<gen_id>/<name>``."""
        return self.gen_dir(stage, gen_id) / _name(name, "file name", self.gens)

    def batch_file(self, batch_id: int, name: str) -> Path:
        """``batches/<batch id>/<name>``."""
        return self.batches / str(int(batch_id)) / _name(name, "file name", self.batches)

    # -- cohorts -------------------------------------------------------------------------------

    def cohort_dir(self, cohort_id: str) -> Path:
        """``cohorts/<cohort_id>``."""
        return self.cohorts / _name(cohort_id, "cohort id", self.cohorts)

    def manifest(self, cohort_id: str) -> Path:
        """``cohorts/<cohort_id>/manifest.json``."""
        return self.cohort_dir(cohort_id) / MANIFEST

    def membership(self, cohort_id: str) -> Path:
        """``cohorts/<cohort_id>/membership.csv``."""
        return self.cohort_dir(cohort_id) / MEMBERSHIP

    def cohort_ids(self) -> list[str]:
        """The cohorts that have a folder, sorted (hidden folders, e.g. temp files, skipped)."""
        if not self.cohorts.is_dir():
            return []
        return sorted(p.name for p in self.cohorts.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- results -------------------------------------------------------------------------------

    def reports_dir(self, cohort_id: str | None) -> Path:
        """``cohorts/<cohort_id>/reports`` or, for every cohort (None), ``cross_experiment``."""
        if cohort_id is None:
            return self.data_dir / CROSS_EXPERIMENT_DIR
        return self.cohort_dir(cohort_id) / REPORTS_DIR

    def report_html(self, cohort_id: str) -> Path:
        """``cohorts/<cohort_id>/reports/report.html``: the default place of a cohort's report."""
        return self.reports_dir(cohort_id) / REPORT_HTML
