"""One step from the experiment directory to a cohort: snapshot -> load + validate -> cohort.

The CLI's offline verbs and the daemon's rebuilds share this, so both see exactly the same
problems and produce exactly the same cohort from the same files.
"""

from __future__ import annotations

from dataclasses import dataclass

from daydreamd.core.cohort import Cohort, build_cohort
from daydreamd.core.config import Settings
from daydreamd.core.experiment import Experiment
from daydreamd.core.jobs import Jobs
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Problem, has_errors
from daydreamd.core.snapshot import RawFiles, read_raw_dir
from daydreamd.core.templates import PromptRenderer
from daydreamd.core.trials import trial_problems


@dataclass(frozen=True, slots=True)
class Build:
    """The outcome of one build: the cohort is None when the experiment has errors."""

    raw: RawFiles
    experiment: Experiment
    problems: tuple[Problem, ...]
    cohort: Cohort | None
    jobs: Jobs | None = None
    """The cohort's generations turned into jobs (None with the cohort): made once, used by the
    trial renders and by whoever runs or renders the cohort."""

    @property
    def ok(self) -> bool:
        """True when a cohort was built (warnings allowed)."""
        return self.cohort is not None


def build_from_raw(raw: RawFiles, settings: Settings, renderer: PromptRenderer | None = None) -> Build:
    """Load, validate and, when there are no errors, build the cohort.

    With a ``renderer``, each template in use is also rendered once on sample inputs (see
    :mod:`daydreamd.core.trials`); a template past a render limit then blocks the build. Pure
    but for what the renderer does.
    """
    experiment, problems = load_experiment(raw)
    if has_errors(problems):
        return Build(raw, experiment, problems, None)
    cohort, link_problems = build_cohort(experiment, settings)
    problems = problems + link_problems
    if link_problems:
        return Build(raw, experiment, problems, None)
    jobs = Jobs(experiment, settings)
    if renderer is not None:
        problems = problems + tuple(trial_problems(cohort.generations, jobs, renderer, raw.label))
    if has_errors(problems):
        return Build(raw, experiment, problems, None)
    return Build(raw, experiment, problems, cohort, jobs)


def read_and_build(settings: Settings, renderer: PromptRenderer | None = None) -> Build:
    """Snapshot ``<data_dir>/1_raw`` and build from it (with trial renders when given a renderer)."""
    return build_from_raw(read_raw_dir(settings.raw_dir), settings, renderer)
