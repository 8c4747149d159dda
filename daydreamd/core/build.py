"""One step from the experiment directory to a cohort: snapshot -> load + validate -> cohort.

The CLI's offline verbs and the daemon's rebuilds share this, so both see exactly the same
problems and produce exactly the same cohort from the same files.
"""

from __future__ import annotations

from dataclasses import dataclass

from daydreamd.core.cohort import Cohort, build_cohort
from daydreamd.core.config import Settings
from daydreamd.core.experiment import Experiment
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Problem, has_errors
from daydreamd.core.snapshot import RawFiles, read_raw_dir


@dataclass(frozen=True, slots=True)
class Build:
    """The outcome of one build: the cohort is None when the experiment has errors."""

    raw: RawFiles
    experiment: Experiment
    problems: tuple[Problem, ...]
    cohort: Cohort | None

    @property
    def ok(self) -> bool:
        """True when a cohort was built (warnings allowed)."""
        return self.cohort is not None


def build_from_raw(raw: RawFiles, settings: Settings) -> Build:
    """Load, validate and, when there are no errors, build the cohort (pure)."""
    experiment, problems = load_experiment(raw)
    if has_errors(problems):
        return Build(raw, experiment, problems, None)
    cohort, link_problems = build_cohort(experiment, settings)
    problems = problems + link_problems
    return Build(raw, experiment, problems, None if link_problems else cohort)


def read_and_build(settings: Settings) -> Build:
    """Snapshot ``<data_dir>/1_raw`` and build from it."""
    return build_from_raw(read_raw_dir(settings.raw_dir), settings)
