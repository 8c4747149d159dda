"""The rule pipeline: subsets, ties, pairs and tuples applied to the axes, in order (pure).

The semantics and ordering are the original project's (``docs/spec_dsl.md`` section 3 and its
compiler):

1. every axis's levels are de-duplicated (first occurrence wins); the axes keep their order
   (declared axes in the order written, then tuple-derived axes in the order tuples name them);
2. the rules run in the order they are written (section by section, each rule in its section's
   order; the usual ``subsets``, ``ties``, ``pairs``, ``tuples`` is a convention, and a pair may
   name a tuple written before it, as ``right: essay_bundle``):

   * **subset** ``axis: [keep...]``: the axis keeps the listed levels, in the axis's order; none
     left is an error;
   * **tie** ``name: [a, b, ...]``: the axes become one axis ``name`` whose levels are those of
     ``a`` that every other axis also has (in ``a``'s order), placed where the first of them was;
     later rules may still name ``a`` or ``b`` (they mean the tied axis);
   * **pair** ``name: {left, right, allowed, balance}``: the two axes become one axis ``name``
     whose levels are the allowed (left, right) entries (de-duplicated, in the order listed; a
     value outside its axis's current levels is an error), placed where the first of them was;
     ``balance: left`` requires every left value to appear in the same number of entries
     (``right``, ``both`` likewise);
   * **tuple** ``name: {axes, items}``: the axes become one axis ``name`` whose levels are the
     items (same checks), placed where the first of them was;

3. the rows are the cross product of the resulting axes, the last axis varying fastest; each
   synthetic axis expands back into its columns (pairs first, then tuples, then ties), see
   :mod:`daydreamd.core.spec.rows`.

Two departures from that compiler, both where it contradicts its own documentation: a tie's
synthetic column (its name, when that is not one of the tied axes) is dropped after expansion
("the synthetic axes are removed after expansion"), and a tied axis that a later pair or tuple
replaced is still restored from it (that compiler lost it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daydreamd.core.problems import Problem, error
from daydreamd.core.spec.document import Origin
from daydreamd.core.spec.parsing import Pair, Spec, Subset, Tie, TupleRule, Value

Accessor = tuple[int, tuple[int, ...]]
"""Where a column's value is in a row of levels: the axis's index, then the index path inside its level."""


@dataclass(frozen=True, slots=True)
class Design:
    """The axes after the rules, and how every output column is read from their levels."""

    axes: tuple[str, ...]
    levels: tuple[tuple[Value, ...], ...]
    columns: tuple[tuple[str, Accessor], ...]
    """Every column in its natural order (before ``field_order``), with where its value comes from."""

    @property
    def count(self) -> int:
        """How many rows the design has (the product of the axes' level counts)."""
        total = 1
        for levels in self.levels:
            total *= len(levels)
        return total

    def column_values(self, column: str) -> dict[Value, None]:
        """The distinct values ``column`` takes in the rows, in first-seen order."""
        accessor = dict(self.columns)[column]
        axis, path = accessor
        return {value_at(level, path): None for level in self.levels[axis]}


def value_at(level: Value, path: tuple[int, ...]) -> Value:
    """The part of ``level`` at ``path`` (a pair's right side, a tuple's third value...)."""
    for index in path:
        assert isinstance(level, tuple)
        level = level[index]
    return level


class RuleError(Exception):
    """A rule that cannot apply; carries the problem (the pipeline stops there: later rules depend on it)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _fail(origin: Origin, message: str) -> RuleError:
    return RuleError(error(origin.path, f"{origin.key}: {message}", line=origin.line))


def _listing(values: Sequence[Value], limit: int = 8) -> str:
    shown = ", ".join(_show(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _show(value: Value) -> str:
    return value if isinstance(value, str) else "[" + ", ".join(_show(v) for v in value) + "]"


class _State:
    def __init__(self, spec: Spec) -> None:
        self.order: list[str] = [axis.name for axis in spec.axes]
        self.levels: dict[str, list[Value]] = {
            axis.name: list(dict.fromkeys(v for v, _ in axis.levels)) for axis in spec.axes
        }
        self.tie_back: dict[str, str] = {}
        self.tie_groups: dict[str, list[str]] = {}
        self.pairs: dict[str, tuple[str, str]] = {}
        self.tuples: dict[str, tuple[str, ...]] = {}

    def resolve(self, name: str) -> str:
        return self.tie_back.get(name, name)

    def require(self, name: str, origin: Origin, what: str) -> str:
        resolved = self.resolve(name)
        if resolved not in self.levels:
            gone = ""
            if name in self.pairs or name in self.tuples or resolved != name:
                gone = f" ('{name}' was replaced by an earlier rule)"
            raise _fail(
                origin,
                f"{what} names axis '{name}', which is not an axis here{gone}; axes now: "
                f"{', '.join(self.order) or '(none)'}",
            )
        return resolved

    def subset(self, rule: Subset) -> None:
        if rule.axis not in self.levels:
            raise _fail(
                rule.origin, f"no axis '{rule.axis}' to take a subset of; axes now: {', '.join(self.order)}"
            )
        keep = set(rule.keep)
        kept = [v for v in self.levels[rule.axis] if v in keep]
        if not kept:
            raise _fail(
                rule.origin,
                f"keeps none of axis '{rule.axis}''s levels ({_listing(self.levels[rule.axis])}): "
                f"the subset lists {_listing(list(rule.keep))}",
            )
        self.levels[rule.axis] = kept

    def tie(self, rule: Tie) -> None:
        for name in rule.axes:
            if name not in self.levels:
                raise _fail(
                    rule.origin,
                    f"tie '{rule.name}' names axis '{name}', which is not an axis here; "
                    f"axes now: {', '.join(self.order)}",
                )
        others = [set(self.levels[name]) for name in rule.axes[1:]]
        shared = [v for v in self.levels[rule.axes[0]] if all(v in s for s in others)]
        if not shared:
            raise _fail(rule.origin, f"tie '{rule.name}': axes {', '.join(rule.axes)} share no level")
        self.levels[rule.name] = shared
        if rule.name not in self.order:
            self.order.insert(min(self.order.index(n) for n in rule.axes), rule.name)
        self.tie_back.setdefault(rule.name, rule.name)
        group = self.tie_groups.setdefault(rule.name, [])
        for name in rule.axes:
            self.tie_back[name] = rule.name
            if name not in group:
                group.append(name)
            if name != rule.name:
                self.levels.pop(name, None)
                if name in self.order:
                    self.order.remove(name)

    def pair(self, rule: Pair) -> None:
        left = self.require(rule.left, rule.origin, f"pair '{rule.name}'")
        right = self.require(rule.right, rule.origin, f"pair '{rule.name}'")
        domains = (set(self.levels[left]), set(self.levels[right]))
        entries: dict[tuple[Value, Value], None] = {}
        for (lv, rv), origin in rule.allowed:
            for side, value, domain, axis in (
                ("left", lv, domains[0], left),
                ("right", rv, domains[1], right),
            ):
                if value not in domain:
                    raise _fail(
                        origin,
                        f"pair '{rule.name}': {side} value {_show(value)!r} is not a level of '{axis}' "
                        f"({_listing(self.levels[axis])})",
                    )
            entries[(lv, rv)] = None
        pairs = list(entries)
        if rule.balance is not None:
            for side in ("left", "right"):
                if rule.balance in (side, "both"):
                    _check_balance(rule, pairs, side)
        insert_at = min(self.order.index(left), self.order.index(right))
        for name in {left, right}:
            self.levels.pop(name, None)
            self.order.remove(name)
        self.levels[rule.name] = list(pairs)
        self.order.insert(insert_at, rule.name)
        self.pairs[rule.name] = (rule.left, rule.right)

    def tuple_rule(self, rule: TupleRule) -> None:
        resolved = [self.require(name, rule.origin, f"tuple '{rule.name}'") for name in rule.axes]
        domains = [set(self.levels[name]) for name in resolved]
        items: dict[tuple[Value, ...], None] = {}
        for item, origin in rule.items:
            for axis, value, domain in zip(rule.axes, item, domains, strict=True):
                if value not in domain:
                    raise _fail(
                        origin,
                        f"tuple '{rule.name}': value {_show(value)!r} is not a level of '{axis}' "
                        f"({_listing(self.levels[self.resolve(axis)])})",
                    )
            items[item] = None
        insert_at = min(self.order.index(name) for name in resolved)
        self.levels[rule.name] = list(items)
        self.order.insert(insert_at, rule.name)
        for name in resolved:
            self.levels.pop(name, None)
            if name in self.order:
                self.order.remove(name)
        self.tuples[rule.name] = rule.axes

    def columns(self) -> list[tuple[str, Accessor]]:
        """The columns each row expands into, in the natural order (pairs, then tuples, then ties)."""
        row: dict[str, Accessor] = {name: (i, ()) for i, name in enumerate(self.order)}
        expanded = [name for name in self.pairs if name in row]
        for name in expanded:
            axis, path = row[name]
            left, right = self.pairs[name]
            row[left] = (axis, (*path, 0))
            row[right] = (axis, (*path, 1))
        for name in expanded:
            row.pop(name, None)
        expanded = [name for name in self.tuples if name in row]
        for name in expanded:
            axis, path = row[name]
            for j, sub in enumerate(self.tuples[name]):
                row[sub] = (axis, (*path, j))
        for name in expanded:
            row.pop(name, None)
        changed = True
        while changed:  # a tie of tied axes restores in more than one step
            changed = False
            for original, canonical in self.tie_back.items():
                if original == canonical or original in row:
                    continue
                source = next((n for n in (canonical, *self.tie_groups[canonical]) if n in row), None)
                if source is not None:
                    row[original] = row[source]
                    changed = True
        for canonical, members in self.tie_groups.items():
            if canonical not in members:
                row.pop(canonical, None)  # synthetic: its members carry its values
        return list(row.items())


def _check_balance(rule: Pair, pairs: list[tuple[Value, Value]], side: str) -> None:
    index = 0 if side == "left" else 1
    counts: dict[Value, int] = {}
    for pair in pairs:
        counts[pair[index]] = counts.get(pair[index], 0) + 1
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{_show(v)}={n}" for v, n in counts.items())
        raise _fail(
            rule.origin,
            f"pair '{rule.name}' is not balanced on the {side} (balance: {rule.balance}): each {side} value "
            f"must appear in as many allowed entries as the others; counts {listing}",
        )


def apply_rules(spec: Spec) -> tuple[Design | None, Problem | None]:
    """The design the spec's rules give, or None and the first rule that cannot apply."""
    state = _State(spec)
    try:
        for rule in spec.rules:
            if isinstance(rule, Subset):
                state.subset(rule)
            elif isinstance(rule, Tie):
                state.tie(rule)
            elif isinstance(rule, Pair):
                state.pair(rule)
            else:
                state.tuple_rule(rule)
    except RuleError as exc:
        return None, exc.problem
    design = Design(
        axes=tuple(state.order),
        levels=tuple(tuple(state.levels[name]) for name in state.order),
        columns=tuple(state.columns()),
    )
    return design, None
