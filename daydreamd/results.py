"""The results as a Python API, for notebooks and scripts: what ``daydreamctl results`` computes.

::

    from daydreamd.results import load

    results = load("config.toml")                    # the current cohort, from the run state
    results.rows[0].score                            # typed rows (ScoreRow), one per finished evaluation
    results.table("breakdowns").records()            # any table as dicts, by its name
    frame = results.frame("breakdowns")              # ... or as a pandas DataFrame (needs pandas)

``load`` reads exactly what ``daydreamctl results`` reads (the run state, read-only, so it works
while the service runs; or ``data/gens/**`` with ``from_files=True``) and computes the same tables,
lazily and once each. Nothing is written. Table names are the CSV files' names without folder or
suffix: ``aggregated_scores``, ``generation_scores``, ``final_results``, ``breakdowns``,
``breakdowns_by_judge``, ``perfect_score_paths``, ``judge_agreement``, ``variance_analysis``,
``agreement_pairs``, ``costs`` (from the run state only), and ``evaluation_scores_by_template_model`` (with
``all_cohorts=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from daydreamd.core.config import Settings, load_settings
from daydreamd.core.results import TopEssay, build_tables, top_essays
from daydreamd.core.scores import ScoreRow, Scores
from daydreamd.core.table import Table
from daydreamd.storage.score_inputs import ResultsError
from daydreamd.storage.scores import load_scores, resolve_cohort

__all__ = ["Results", "ResultsError", "load"]


def load(
    config: str | os.PathLike[str] | None = None,
    *,
    cohort: str | None = None,
    all_cohorts: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    from_files: bool = False,
) -> Results:
    """The results of a cohort (by default the current one), or of every cohort (``all_cohorts``).

    Args:
        config: the service's ``config.toml`` (default: ``./config.toml`` when there is one, else the
            defaults, whose data folder is ``./data``).
        cohort: a cohort id or a named cohort's name (default: the one the service applied last).
        all_cohorts: every evaluation of every cohort, as ``daydreamctl results --all``.
        data_dir: another data folder than the config's.
        from_files: rebuild the scores from ``data/gens/**`` instead of the run state.

    Raises:
        ResultsError: no run state, an unknown or malformed cohort id, no current cohort.
        daydreamd.core.errors.ConfigError: the config file is wrong (naming the key).
    """
    if cohort and all_cohorts:
        raise ResultsError("give either cohort or all_cohorts, not both")
    path = Path(config) if config is not None else Path("config.toml")
    settings = load_settings(
        path if config is not None or path.is_file() else None,
        os.environ,
        data_dir=Path(data_dir) if data_dir is not None else None,
    )
    scope = None if all_cohorts else resolve_cohort(settings, cohort, use_state=data_dir is None)
    scores, loaded = load_scores(
        data_dir=settings.paths.data_dir,
        db_path=settings.paths.state_db,
        cohort_id=scope,
        from_files=from_files,
    )
    return Results(
        settings=settings,
        scores=scores,
        cohort_id=scope,
        source=loaded.source,
        warnings=tuple(loaded.warnings),
        from_files=from_files,
    )


@dataclass(frozen=True, eq=False)
class Results:
    """One cohort's (or every cohort's) scores and the tables made from them."""

    settings: Settings
    scores: Scores
    cohort_id: str | None
    """None for every cohort (``all_cohorts``)."""
    source: str
    """Where the rows came from (the run state's path, or the gens folder)."""
    warnings: tuple[str, ...] = ()
    from_files: bool = False
    _frames: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> tuple[ScoreRow, ...]:
        """One typed row per finished evaluation (a failed one has ``score`` None and its error kind)."""
        return tuple(self.scores.rows)

    @cached_property
    def tables(self) -> Mapping[str, Table]:
        """Every table by name (see the module docstring), computed on first use."""
        made = list(build_tables(self.scores, cross_experiment=self.cohort_id is None))
        if not self.from_files:
            made.append(self._costs())
        return {_name(table): table for table in made}

    def table(self, name: str) -> Table:
        """One table by name, e.g. ``"breakdowns"``; a KeyError lists the names there are."""
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r}; there are: {', '.join(self.tables)}") from None

    def frame(self, name: str = "aggregated_scores") -> Any:
        """One table as a pandas DataFrame (numbers as numbers, empty cells as missing).

        Raises:
            ModuleNotFoundError: pandas is not installed (``pip install 'daydreamd[analysis]'``).
        """
        if name not in self._frames:
            try:
                import pandas
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError(
                    "frames need pandas: pip install 'daydreamd[analysis]' (or pandas)", name="pandas"
                ) from exc
            table = self.table(name)
            frame = pandas.DataFrame.from_records(list(table.rows), columns=list(table.columns))
            self._frames[name] = frame.apply(_numbers_where_numeric).replace("", None)
        return self._frames[name]

    def top(self, n: int = 10, *, by: str | None = None, judge: str | None = None) -> list[TopEssay]:
        """The best essays: by the sum of their column means, or by one rubric's mean (``by``, an
        evaluation template; of one ``judge`` too)."""
        return top_essays(self.scores, n, by=(by, judge) if by else None)

    def _costs(self) -> Table:
        from daydreamd.core.costs import costs_table
        from daydreamd.storage.costs import read_call_groups

        paths = self.settings.paths
        return costs_table(read_call_groups(paths.state_db, paths.data_dir, self.cohort_id))


def _name(table: Table) -> str:
    return table.path.rsplit("/", 1)[-1].removesuffix(".csv")


def _numbers_where_numeric(column: Any) -> Any:
    """A column of number texts as numbers; any other column as it is."""
    import pandas

    converted = pandas.to_numeric(column.replace("", None), errors="coerce")
    filled = column.replace("", None).notna()
    return converted if converted[filled].notna().all() else column
