"""The compiled rows: columns in ``field_order``, streamed from the design, optionally shuffled (pure).

A row is the cross product's combination of one level per axis (the last axis varying fastest),
each synthetic level expanded into its columns. Rows are produced one at a time from per-axis
tables of already expanded values, so a million rows cost a second or two and almost no memory;
only a shuffle holds anything per row (one integer: the row's index).

Columns: those named in ``output.field_order`` first, in that order, then the others in their
natural order: the axes that no rule replaced, in axis order, then the columns of each pair, then
of each tuple, then the axes a tie restored.

Shuffle (``output.seed`` or ``--seed``): the order of ``random.Random(seed).shuffle`` over the list
of rows, as the original compiler did, so a seed gives the same row order there and here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, product

from daydreamd.core.spec.parsing import Value
from daydreamd.core.spec.rules import Design, value_at


@dataclass(frozen=True, slots=True)
class Rows:
    """How to produce the rows of a design: its columns and, per axis, the values each level adds."""

    columns: tuple[str, ...]
    tables: tuple[tuple[tuple[Value, ...], ...], ...]
    """Per axis, per level: the values of that axis's columns (in the axes' column order)."""
    positions: tuple[int, ...]
    """For each output column, its index in the concatenation of one row's per-axis values."""

    @property
    def count(self) -> int:
        total = 1
        for table in self.tables:
            total *= len(table)
        return total

    def __iter__(self) -> Iterator[tuple[Value, ...]]:
        return self.iterate()

    def iterate(self, seed: int | None = None) -> Iterator[tuple[Value, ...]]:
        """The rows in order, or shuffled by ``seed``."""
        positions = self.positions
        flat = chain.from_iterable
        combos = product(*self.tables) if seed is None else self._shuffled(seed)
        if positions == tuple(range(len(positions))):
            for combo in combos:
                yield tuple(flat(combo))
        else:
            for combo in combos:
                values = tuple(flat(combo))
                yield tuple([values[p] for p in positions])

    def unordered(self) -> tuple[tuple[str, ...], Iterator[tuple[Value, ...]]]:
        """The rows in order but their values not in ``field_order``: each axis's columns in axis
        order, with those columns' names. For a consumer that picks values by name anyway, it saves
        reordering every row."""
        names = [""] * len(self.positions)
        for column, position in zip(self.columns, self.positions, strict=True):
            names[position] = column
        flat = chain.from_iterable
        return tuple(names), (tuple(flat(combo)) for combo in product(*self.tables))

    def _shuffled(self, seed: int) -> Iterator[tuple[tuple[Value, ...], ...]]:
        order = list(range(self.count))
        random.Random(seed).shuffle(order)
        tables = self.tables
        sizes = [len(t) for t in tables]
        last = len(tables) - 1
        for index in order:
            parts: list[tuple[Value, ...]] = [()] * len(tables)
            for axis in range(last, -1, -1):
                index, rest = divmod(index, sizes[axis])
                parts[axis] = tables[axis][rest]
            yield tuple(parts)


def plan_rows(design: Design, field_order: tuple[str, ...] | None) -> Rows:
    """The columns (``field_order`` first) and the per-axis value tables of ``design``."""
    natural = [name for name, _ in design.columns]
    first = [name for name in field_order or () if name in natural]
    columns = tuple(dict.fromkeys([*first, *natural]))
    accessors = dict(design.columns)
    concatenated: list[str] = []
    tables: list[tuple[tuple[Value, ...], ...]] = []
    for axis, levels in enumerate(design.levels):
        mine = [(name, path) for name, (a, path) in design.columns if a == axis]
        concatenated.extend(name for name, _ in mine)
        tables.append(tuple(tuple(value_at(level, path) for _, path in mine) for level in levels))
    index = {name: i for i, name in enumerate(concatenated)}
    assert set(index) == set(accessors)
    return Rows(columns, tuple(tables), tuple(index[name] for name in columns))
