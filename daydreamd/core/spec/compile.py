"""A spec document compiled into rows: parse, apply the rules, check the columns (pure).

:func:`compile_spec` is the whole step the CLI's ``cohort compile`` (and later the daemon) runs:
it lists every problem it can (the spec's structure, its includes, then the first rule that
cannot apply, then every value a catalog does not know) and gives the rows only when there is no
error. The rows are produced lazily by the returned :class:`Compiled`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from daydreamd.core.problems import Problem, has_errors
from daydreamd.core.spec.catalog import Catalog, check_columns
from daydreamd.core.spec.document import SpecDocument
from daydreamd.core.spec.parsing import Spec, Value, parse_spec
from daydreamd.core.spec.rows import Rows, plan_rows
from daydreamd.core.spec.rules import Design, apply_rules


@dataclass(frozen=True, slots=True)
class Compiled:
    """A spec that compiled: its columns, how many rows, and the rows on demand."""

    spec: Spec
    design: Design
    plan: Rows

    @property
    def columns(self) -> tuple[str, ...]:
        return self.plan.columns

    @property
    def count(self) -> int:
        return self.plan.count

    def rows(self, *, seed: int | None = None) -> Iterator[tuple[Value, ...]]:
        """The rows in order; shuffled by ``seed``, else by the spec's ``output.seed`` if it has one."""
        return self.plan.iterate(seed if seed is not None else self.spec.seed)

    def dicts(self, *, seed: int | None = None) -> Iterator[dict[str, Value]]:
        """The rows as ``{column: value}`` (convenient for tests; slower than :meth:`rows`)."""
        columns = self.columns
        for row in self.rows(seed=seed):
            yield dict(zip(columns, row, strict=True))


def compile_spec(
    doc: SpecDocument, catalog: Catalog | None = None
) -> tuple[Compiled | None, tuple[Problem, ...]]:
    """Compile ``doc``; None with the problems when there is an error (warnings come either way).

    Without a ``catalog`` the ids are not checked (replicate indices still are).
    """
    spec, problems = parse_spec(doc)
    if spec is None:
        return None, problems
    design, failed = apply_rules(spec)
    if design is None:
        assert failed is not None
        return None, (*problems, failed)
    problems = (*problems, *check_columns(spec, design, catalog))
    if has_errors(problems):
        return None, problems
    return Compiled(spec, design, plan_rows(design, spec.field_order)), problems
