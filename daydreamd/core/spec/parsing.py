"""A parsed spec mapping checked into a :class:`Spec`: axes, rules in order, output options (pure).

The structure is the original project's (``docs/spec_dsl.md``), read unchanged::

    axes:                     # axis -> inline list, '@file:levels.csv', or null (a tuple gives it)
      draft_template: [creative-v2, gwern_original]
      essay_template: '@file:items/essay_templates.csv'
    rules:                    # sections run in the order they are written; each entry in its order
      subsets: {axis: [levels to keep]}
      ties:    {name: [axis, axis, ...]}            # or {name: {axes: [...]}}
      pairs:   {name: {left: A, right: B, allowed: [[a, b], ...] | '@file:...', balance: left|right|both}}
      tuples:  {name: {axes: [A, B, ...], items: [[a, b, ...], ...] | '@file:...'}}
    output:
      field_order: [axis, ...]  # these columns first, the rest after in their natural order
      seed: 17                  # optional: shuffle the rows deterministically

An axis named in a tuple rule takes its levels from the tuple's items (a *tuple-derived* axis);
it may not also list levels under ``axes`` (it may be declared there as ``null``, for clarity).

Every problem names the spec file, the line, the key and the offending value, and parsing goes
on past a problem so one run lists them all. Scalar levels are text: YAML's ``1`` and ``'1'`` are
the same level (``'1'``); booleans, floats and nulls are refused, since a level is an id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from daydreamd.core.problems import Problem, error, warning
from daydreamd.core.spec.document import INCLUDE_PREFIX, KeyPath, Origin, SpecDocument, key_text
from daydreamd.core.spec.includes import load_include

Value = str | tuple["Value", ...]
"""A level: an id (text), or a tuple of levels (a pair's or a tuple rule's entry)."""

Balance = Literal["left", "right", "both"]
RULE_SECTIONS = ("subsets", "ties", "pairs", "tuples")
TOP_LEVEL_KEYS = ("axes", "rules", "output")
OUTPUT_KEYS = ("field_order", "seed")


@dataclass(frozen=True, slots=True)
class Axis:
    """An axis as declared (or derived from tuples): its levels in order, each with where it was written."""

    name: str
    levels: tuple[tuple[Value, Origin], ...]
    origin: Origin
    derived: bool = False


@dataclass(frozen=True, slots=True)
class Subset:
    """Keep only ``keep`` of ``axis``'s levels (in the axis's order)."""

    axis: str
    keep: tuple[Value, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class Tie:
    """Make ``axes`` move together on the levels they share, under the name ``name``."""

    name: str
    axes: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class Pair:
    """Replace ``left`` and ``right`` by the allowed (left, right) combinations, as the axis ``name``."""

    name: str
    left: str
    right: str
    allowed: tuple[tuple[tuple[Value, Value], Origin], ...]
    balance: Balance | None
    origin: Origin


@dataclass(frozen=True, slots=True)
class TupleRule:
    """Replace ``axes`` by the listed combinations ``items``, as the axis ``name``."""

    name: str
    axes: tuple[str, ...]
    items: tuple[tuple[tuple[Value, ...], Origin], ...]
    origin: Origin


Rule = Subset | Tie | Pair | TupleRule


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A spec that parsed without errors."""

    path: str
    axes: tuple[Axis, ...]
    rules: tuple[Rule, ...]
    field_order: tuple[str, ...] | None = None
    seed: int | None = None
    origins: Mapping[tuple[str, str], Origin] = field(default_factory=dict)
    """(column, value) -> where that value was first written for that column (for later errors)."""


class _Parser:
    def __init__(self, doc: SpecDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.origins: dict[tuple[str, str], Origin] = {}

    def fail(self, key: KeyPath, message: str) -> None:
        self.problems.append(self.doc.error(key, message))

    def note(self, column: str, value: Value, origin: Origin) -> None:
        if isinstance(value, str):
            self.origins.setdefault((column, value), origin)

    # --- values -------------------------------------------------------------------------------

    def value(self, raw: object, key: KeyPath) -> Value | None:
        """A level: text, an integer (as text), or a list of levels (as a tuple)."""
        if isinstance(raw, bool) or raw is None or isinstance(raw, float | Mapping):
            what = "a mapping" if isinstance(raw, Mapping) else f"{type(raw).__name__} {raw!r}"
            self.fail(key, f"a level must be an id (text or an integer), not {what}")
            return None
        if isinstance(raw, str):
            if raw.startswith(INCLUDE_PREFIX):
                self.fail(
                    key, f"{raw!r}: an include cannot stand for a single level; use it for the whole list"
                )
                return None
            return raw
        if isinstance(raw, int):
            return str(raw)
        if isinstance(raw, list | tuple):
            parts = [self.value(item, (*key, i)) for i, item in enumerate(raw)]
            if any(p is None for p in parts):
                return None
            return tuple(p for p in parts if p is not None)
        self.fail(key, f"a level must be an id (text or an integer), not {type(raw).__name__} {raw!r}")
        return None

    def entries(self, raw: object, key: KeyPath, what: str) -> list[tuple[object, Origin]] | None:
        """A list written inline or included with ``@file:``, each entry with where it was written."""
        if isinstance(raw, str) and raw.startswith(INCLUDE_PREFIX):
            included, problems = load_include(self.doc, raw, key)
            self.problems.extend(problems)
            if included is None:
                return None
            return list(included.entries)
        if isinstance(raw, list):
            return [(item, self.doc.origin((*key, i))) for i, item in enumerate(raw)]
        self.fail(key, f"{what} must be a list or an '@file:...' include, not {_describe(raw)}")
        return None

    def names(self, raw: object, key: KeyPath, what: str) -> tuple[str, ...] | None:
        if not isinstance(raw, list) or not raw or not all(isinstance(n, str) and n for n in raw):
            self.fail(key, f"{what} must be a non-empty list of axis names, not {_describe(raw)}")
            return None
        return tuple(raw)

    def known_keys(self, payload: Mapping[object, object], allowed: tuple[str, ...], key: KeyPath) -> None:
        for name in payload:
            if name not in allowed:
                hint = ""
                if name == "expand":
                    hint = " (tuple.expand is no longer supported: tuples always expand into their axes)"
                elif name == "to":
                    hint = " (a tie's name is its key: write ties: {NAME: [axis, ...]})"
                self.fail(
                    (*key, str(name)), f"unknown key {name!r}; expected one of {', '.join(allowed)}{hint}"
                )

    # --- sections -----------------------------------------------------------------------------

    def axes(self, raw: object) -> list[Axis]:
        """The declared axes (one declared ``null`` is a placeholder, derived from tuples later)."""
        if not isinstance(raw, Mapping):
            self.fail(("axes",), f"axes must be a mapping of axis name to levels, not {_describe(raw)}")
            return []
        axes: list[Axis] = []
        for name, payload in raw.items():
            key: KeyPath = ("axes", str(name))
            if not isinstance(name, str) or not name:
                self.fail(key, f"an axis name must be non-empty text, not {name!r}")
                continue
            if payload is None:
                axes.append(Axis(name, (), self.doc.origin(key), derived=True))
                continue
            if isinstance(payload, str) and not payload.startswith(INCLUDE_PREFIX):
                self.fail(key, f"levels must be a list or an '@file:...' include, not the text {payload!r}")
                continue
            entries = self.entries(payload, key, f"axis {name!r}")
            if entries is None:
                continue
            levels: list[tuple[Value, Origin]] = []
            for index, (item, origin) in enumerate(entries):
                if isinstance(item, tuple):
                    self.fail(
                        key,
                        f"the include gives rows of several columns {item!r} (line {origin.line}); an axis "
                        "takes one column: bind several axes with a tuple rule",
                    )
                    break
                value = self.value(item, (*key, index))
                if value is None:
                    continue
                if isinstance(value, tuple):
                    self.fail((*key, index), f"a level must be an id, not the list {list(value)!r}")
                    continue
                levels.append((value, origin))
                self.note(name, value, origin)
            if not entries:
                self.problems.append(
                    warning(
                        self.doc.path,
                        f"{key_text(key)}: axis {name!r} has no levels, so the spec compiles to no rows",
                        line=self.doc.line(key),
                    )
                )
            axes.append(Axis(name, tuple(levels), self.doc.origin(key)))
        return axes

    def rules(self, raw: object) -> list[Rule]:
        if raw is None:
            return []
        if not isinstance(raw, Mapping):
            self.fail(
                ("rules",),
                f"rules must be a mapping with sections {', '.join(RULE_SECTIONS)}, not {_describe(raw)}",
            )
            return []
        rules: list[Rule] = []
        for section, payload in raw.items():
            key: KeyPath = ("rules", str(section))
            if section not in RULE_SECTIONS:
                self.fail(
                    key, f"unknown rule section {section!r}; expected one of {', '.join(RULE_SECTIONS)}"
                )
                continue
            if payload is None:
                continue
            if not isinstance(payload, Mapping):
                self.fail(
                    key, f"rules.{section} must be a mapping of rule name to rule, not {_describe(payload)}"
                )
                continue
            for name, body in payload.items():
                rule_key: KeyPath = (*key, str(name))
                if not isinstance(name, str) or not name:
                    self.fail(rule_key, f"a rule's name must be non-empty text, not {name!r}")
                    continue
                rule = {
                    "subsets": self.subset,
                    "ties": self.tie,
                    "pairs": self.pair,
                    "tuples": self.tuple_rule,
                }[section](name, body, rule_key)
                if rule is not None:
                    rules.append(rule)
        return rules

    def subset(self, axis: str, body: object, key: KeyPath) -> Subset | None:
        entries = self.entries(body, key, f"the subset of {axis!r}")
        if entries is None:
            return None
        keep = [self.value(item, (*key, i)) for i, (item, _) in enumerate(entries)]
        if any(v is None for v in keep):
            return None
        return Subset(axis, tuple(v for v in keep if v is not None), self.doc.origin(key))

    def tie(self, name: str, body: object, key: KeyPath) -> Tie | None:
        if isinstance(body, Mapping):
            self.known_keys(body, ("axes",), key)
            axes = self.names(body.get("axes"), (*key, "axes"), f"tie {name!r}'s axes")
        else:
            axes = self.names(body, key, f"tie {name!r}")
        return None if axes is None else Tie(name, axes, self.doc.origin(key))

    def pair(self, name: str, body: object, key: KeyPath) -> Pair | None:
        if not isinstance(body, Mapping):
            self.fail(
                key, f"pair {name!r} must be a mapping with left, right, allowed, not {_describe(body)}"
            )
            return None
        self.known_keys(body, ("left", "right", "allowed", "balance"), key)
        left, right, balance = body.get("left"), body.get("right"), body.get("balance")
        ok = True
        for side, value in (("left", left), ("right", right)):
            if not isinstance(value, str) or not value:
                self.fail((*key, side), f"pair {name!r} needs {side}: an axis name, not {_describe(value)}")
                ok = False
        if left == right and isinstance(left, str):
            self.fail(
                (*key, "right"), f"pair {name!r}: left and right must be different axes, both are {left!r}"
            )
            ok = False
        if balance is not None and balance not in ("left", "right", "both"):
            self.fail((*key, "balance"), f"balance must be left, right or both, not {balance!r}")
            ok = False
        allowed_key: KeyPath = (*key, "allowed")
        if "allowed" not in body:
            self.fail(key, f"pair {name!r} needs allowed: the list of [left, right] combinations")
            return None
        entries = self.entries(body["allowed"], allowed_key, f"pair {name!r}'s allowed")
        if entries is None or not ok:
            return None
        if not entries:
            self.fail(allowed_key, f"pair {name!r} allows nothing: list at least one [left, right]")
            return None
        allowed: list[tuple[tuple[Value, Value], Origin]] = []
        for index, (item, origin) in enumerate(entries):
            if not isinstance(item, list | tuple) or len(item) != 2:
                self.fail_at(
                    origin, (*allowed_key, index), f"a pair entry must be [left, right], not {item!r}"
                )
                continue
            value = self.value(item, (*allowed_key, index))
            if not isinstance(value, tuple):
                continue
            lv, rv = value
            assert isinstance(left, str) and isinstance(right, str)
            self.note(left, lv, origin)
            self.note(right, rv, origin)
            allowed.append(((lv, rv), origin))
        if len(allowed) != len(entries):
            return None
        assert isinstance(left, str) and isinstance(right, str)
        return Pair(name, left, right, tuple(allowed), balance, self.doc.origin(key))

    def tuple_rule(self, name: str, body: object, key: KeyPath) -> TupleRule | None:
        if not isinstance(body, Mapping):
            self.fail(key, f"tuple {name!r} must be a mapping with axes and items, not {_describe(body)}")
            return None
        self.known_keys(body, ("axes", "items"), key)
        axes = self.names(body.get("axes"), (*key, "axes"), f"tuple {name!r}'s axes")
        items_key: KeyPath = (*key, "items")
        if "items" not in body:
            self.fail(key, f"tuple {name!r} needs items: the list of combinations of its axes")
            return None
        entries = self.entries(body["items"], items_key, f"tuple {name!r}'s items")
        if entries is None or axes is None:
            return None
        if not entries:
            self.fail(items_key, f"tuple {name!r} has no items: list at least one combination")
            return None
        if len(set(axes)) != len(axes):
            self.fail((*key, "axes"), f"tuple {name!r} names an axis twice: {list(axes)!r}")
            return None
        items: list[tuple[tuple[Value, ...], Origin]] = []
        for index, (item, origin) in enumerate(entries):
            if not isinstance(item, list | tuple) or len(item) != len(axes):
                self.fail_at(
                    origin,
                    (*items_key, index),
                    f"item {item!r} must have {len(axes)} value(s), one per axis {', '.join(axes)}",
                )
                continue
            value = self.value(item, (*items_key, index))
            if not isinstance(value, tuple):
                continue
            for axis, part in zip(axes, value, strict=True):
                self.note(axis, part, origin)
            items.append((value, origin))
        if len(items) != len(entries):
            return None
        return TupleRule(name, axes, tuple(items), self.doc.origin(key))

    def fail_at(self, origin: Origin, key: KeyPath, message: str) -> None:
        """An error on an entry: at its CSV line when it came from an include, else at ``key``."""
        if origin.path != self.doc.path:
            self.problems.append(
                error(origin.path, f"{message} (included by {origin.key})", line=origin.line)
            )
        else:
            self.fail(key, message)

    def output(self, raw: object, axis_names: set[str]) -> tuple[tuple[str, ...] | None, int | None]:
        if raw is None:
            return None, None
        if not isinstance(raw, Mapping):
            self.fail(("output",), f"output must be a mapping, not {_describe(raw)}")
            return None, None
        self.known_keys(raw, OUTPUT_KEYS, ("output",))
        order: tuple[str, ...] | None = None
        if raw.get("field_order") == []:
            order = ()
        elif "field_order" in raw:
            names = self.names(raw["field_order"], ("output", "field_order"), "output.field_order")
            if names is not None:
                unknown = [n for n in names if n not in axis_names]
                for n in unknown:
                    index = names.index(n)
                    self.fail(
                        ("output", "field_order", index),
                        f"{n!r} is not an axis of this spec (axes: {', '.join(sorted(axis_names))})",
                    )
                order = names if not unknown else None
        seed = raw.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            self.fail(("output", "seed"), f"seed must be an integer, not {seed!r}")
            seed = None
        return order, seed


def _describe(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, Mapping):
        return "a mapping"
    if isinstance(raw, list):
        return f"the list {raw!r}"
    return f"{type(raw).__name__} {raw!r}"


def parse_spec(doc: SpecDocument) -> tuple[Spec | None, tuple[Problem, ...]]:
    """Check ``doc``'s mapping into a :class:`Spec`; None when it has errors (listed, all of them)."""
    if doc.problems or doc.data is None:
        return None, doc.problems
    parser = _Parser(doc)
    data = doc.data
    if not isinstance(data, Mapping):
        parser.fail((), f"a spec must be a mapping with axes, rules and output, not {_describe(data)}")
        return None, tuple(parser.problems)
    for name in data:
        if name not in TOP_LEVEL_KEYS:
            hint = (
                " (declare replicate axes as axes, e.g. draft_replicate: [1, 2])"
                if name == "replicates"
                else ""
            )
            parser.fail(
                (str(name),), f"unknown key {name!r}; expected one of {', '.join(TOP_LEVEL_KEYS)}{hint}"
            )
    axes = parser.axes(data.get("axes", {}))
    rules = parser.rules(data.get("rules"))
    axes = _derive_tuple_axes(parser, axes, rules)
    order, seed = parser.output(data.get("output"), {a.name for a in axes})
    problems = tuple(parser.problems)
    if any(p.level == "error" for p in problems):
        return None, problems
    spec = Spec(
        path=doc.path,
        axes=tuple(axes),
        rules=tuple(rules),
        field_order=order,
        seed=seed,
        origins=parser.origins,
    )
    return spec, problems


def _derive_tuple_axes(parser: _Parser, axes: list[Axis], rules: list[Rule]) -> list[Axis]:
    """Give each axis a tuple rule binds the levels of that tuple's items (appended in first-seen order).

    An axis a tuple binds may not list its own levels (it may be declared ``null``); an axis declared
    ``null`` must be bound by some tuple.
    """
    by_name = {a.name: a for a in axes}
    derived: dict[str, list[tuple[Value, Origin]]] = {}
    for rule in rules:
        if not isinstance(rule, TupleRule):
            continue
        for index, name in enumerate(rule.axes):
            declared = by_name.get(name)
            if declared is not None and not declared.derived:
                parser.fail(
                    ("rules", "tuples", rule.name, "axes", index),
                    f"axis {name!r} gets its levels from tuple {rule.name!r}, so axes.{name} may not list "
                    "levels too (remove it, or set it to null)",
                )
                continue
            levels = derived.setdefault(name, [])
            seen = {v for v, _ in levels}
            for item, origin in rule.items:
                if item[index] not in seen:
                    seen.add(item[index])
                    levels.append((item[index], origin))
    out: list[Axis] = []
    for axis in axes:
        if axis.derived:
            if axis.name not in derived:
                parser.fail(
                    ("axes", axis.name),
                    f"axis {axis.name!r} is null, but no tuple rule gives its levels; list them, or bind it "
                    "in rules.tuples",
                )
                continue
            out.append(Axis(axis.name, tuple(derived.pop(axis.name)), axis.origin, derived=True))
        else:
            out.append(axis)
    for rule in rules:
        if isinstance(rule, TupleRule):
            for name in rule.axes:
                if name in derived:
                    out.append(Axis(name, tuple(derived.pop(name)), rule.origin, derived=True))
    return out
