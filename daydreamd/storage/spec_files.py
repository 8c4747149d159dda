"""Reading a cohort spec from disk: the spec file, parsed by its extension, and its ``@file:`` includes.

This is the edge of :mod:`daydreamd.core.spec`: it turns files into a
:class:`~daydreamd.core.spec.document.SpecDocument` (plain data, the lines of its keys, the bytes
of its includes) and the pure core does the rest.

* ``.yaml`` / ``.yml`` (the original project's ``config.yaml``, read unchanged) with PyYAML's
  safe loader only (the C one when available): no Python objects, no tags; ``.toml`` with
  :mod:`tomllib`; ``.json`` with :mod:`json`. The lines of YAML keys and list items are kept so
  problems point at them.
* The spec's folder is read as ``1_raw`` is (:func:`daydreamd.core.snapshot.read_raw_dir`): only
  regular files inside it. An include that names a path out of the folder is never read (the core
  refuses it by name); one that is a link leading out of the folder, a FIFO, a device or a socket
  is refused without being opened, and the reason reaches the problem. So a spec belongs in a
  folder of its own (``data/cohorts/<name>/spec/``), as in the original project.
* A YAML file whose aliases expand to more than :data:`MAX_VALUES` values (a "billion laughs"
  document) or that nests too deeply is refused rather than walked.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.problems import Problem, error
from daydreamd.core.snapshot import read_raw_dir
from daydreamd.core.spec.document import KeyPath, SpecDocument, include_refs, include_target
from daydreamd.storage.layout import COHORTS_DIR, DataLayout

SPEC_DIR = "spec"
"""A named cohort's spec folder inside its cohort folder: experiment input, versioned with ``1_raw``."""

SPEC_NAMES = ("config.yaml", "config.yml", "config.toml", "config.json")
"""The file a spec folder's spec is read from, the first that exists."""
SPEC_TYPES = (".yaml", ".yml", ".toml", ".json")
MAX_DEPTH = 32
"""The deepest nesting of lists and mappings a spec may have (the deepest real one is about 6)."""
MAX_VALUES = 5_000_000
"""The most values (scalars, lists, mappings) a spec may hold once YAML aliases are expanded."""

_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def spec_file(path: Path) -> Path:
    """The spec file ``path`` names: itself, or for a folder the first of :data:`SPEC_NAMES` in it."""
    if path.is_dir():
        for name in SPEC_NAMES:
            if (path / name).is_file():
                return path / name
        return path / SPEC_NAMES[0]
    return path


def read_spec(path: Path, *, shown: str | None = None) -> SpecDocument:
    """The spec at ``path`` (a file, or a folder holding ``config.yaml``) with its includes read.

    The spec's folder is read as ``1_raw`` is (:func:`daydreamd.core.snapshot.read_raw_dir`: only
    regular files, links only within the folder, size limits), so a spec and its includes get the
    same containment as the experiment. ``shown`` is how the spec file appears in problems
    (default: ``path`` as given).
    """
    path = spec_file(path)
    label = shown if shown is not None else str(path)
    suffix = path.suffix.lower()
    if suffix not in SPEC_TYPES:
        return _failed(label, f"a spec file must be .yaml, .yml, .toml or .json, not {path.name!r}")
    folder = read_raw_dir(path.parent)
    refused = dict(folder.refused) | dict(folder.unreadable)
    raw = folder.files.get(path.name)
    if raw is None:
        reason = refused.get(path.name) or ("no such spec file" if not folder.missing else "no such folder")
        return _failed(label, reason, folder=folder.fingerprint)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return _failed(label, "not valid UTF-8", line=line, folder=folder.fingerprint)
    fingerprint = f"{path.name}:{folder.fingerprint}"
    parsed = _parse(text, suffix, label)
    if isinstance(parsed, Problem):
        return SpecDocument(path=label, problems=(parsed,), fingerprint=fingerprint)
    data, lines = parsed
    files: dict[str, bytes] = {}
    not_read: dict[str, str] = {}
    for ref in include_refs(data):
        target = include_target(ref)
        if target is None:
            continue  # out of the folder: the core reports it, nothing is read
        if target in folder.files:
            files[target] = folder.files[target]
            continue
        why_not = next(
            (why for where, why in refused.items() if target == where or target.startswith(where + "/")), None
        )
        if why_not is not None:
            not_read[target] = why_not
    return SpecDocument(
        path=label,
        data=data,
        lines=lines,
        files=files,
        refused=not_read,
        fingerprint=fingerprint,
    )


def _failed(label: str, message: str, *, line: int | None = None, folder: str = "") -> SpecDocument:
    """A spec that could not be read; its fingerprint still changes with the folder's contents."""
    problem = error(label, message, line=line)
    return SpecDocument(path=label, problems=(problem,), fingerprint=f"{folder}:{problem}")


@dataclass(frozen=True, slots=True)
class CohortSpec:
    """A named cohort's spec as found on disk: ``data/cohorts/<name>/spec/``."""

    name: str
    document: SpecDocument


@dataclass(frozen=True, slots=True)
class CohortSpecs:
    """What ``data/cohorts`` holds: the specs read, problems, and what must not be taken as removed."""

    specs: tuple[CohortSpec, ...]
    problems: tuple[Problem, ...] = ()
    held: frozenset[str] = frozenset()
    """Cohorts whose spec folder is there but could not be read (a link, no permission): they keep
    their membership, as a broken spec does."""
    listed: bool = True
    """False when ``data/cohorts`` itself could not be listed: then no cohort may be taken as removed."""


def read_cohort_specs(data_dir: Path) -> CohortSpecs:
    """Every ``data/cohorts/<name>/spec/`` with its spec read, and problems with folders that cannot be one.

    A cohort folder or its ``spec`` folder that is a link is refused (the experiment folder may not
    reach outside itself), and so is a name that is not a cohort id; a folder without ``spec/``
    is an output folder (the default cohort's, or a removed spec's), not a named cohort.
    """
    layout = DataLayout(data_dir)
    specs: list[CohortSpec] = []
    problems: list[Problem] = []
    held: set[str] = set()
    try:
        entries = sorted(os.scandir(layout.cohorts), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return CohortSpecs(())
    except OSError as exc:
        message = f"cannot list the cohorts folder: {exc.strerror}; every named cohort is kept as it is"
        return CohortSpecs((), (error(f"{COHORTS_DIR}/", message),), listed=False)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        shown = f"{COHORTS_DIR}/{entry.name}/{SPEC_DIR}"
        try:
            spec_stat = os.lstat(Path(entry.path) / SPEC_DIR)
        except FileNotFoundError:
            continue  # no spec folder: an output folder
        except OSError as exc:
            held.add(entry.name)
            problems.append(error(shown, f"cannot be read: {exc.strerror}; the cohort is kept as it was"))
            continue
        if entry.is_symlink() or stat.S_ISLNK(spec_stat.st_mode):
            held.add(entry.name)
            message = (
                "is (or is inside) a link; a spec must be a real folder under cohorts/ (the cohort is kept)"
            )
            problems.append(error(shown, message))
            continue
        if not stat.S_ISDIR(spec_stat.st_mode):
            continue
        if why := cohort_id_problem(entry.name):
            problems.append(error(shown, f"{why}; rename the folder {entry.name!r}"))
            continue
        document = read_spec(Path(entry.path) / SPEC_DIR, shown=_shown(entry, shown))
        specs.append(CohortSpec(entry.name, document))
    return CohortSpecs(tuple(specs), tuple(problems), frozenset(held))


def _shown(entry: os.DirEntry[str], folder: str) -> str:
    return f"{folder}/{spec_file(Path(entry.path) / SPEC_DIR).name}"


def _parse(text: str, suffix: str, label: str) -> tuple[object, dict[KeyPath, int]] | Problem:
    parsed = _parse_any(text, suffix, label)
    if not isinstance(parsed, Problem) and _depth(parsed[0]) > MAX_DEPTH:
        return error(label, f"refused: it nests more than {MAX_DEPTH} levels deep (a spec needs about 6)")
    return parsed


def _depth(data: object) -> int:
    """How deeply lists and mappings nest in ``data`` (iteratively: a deep document must not
    exhaust the stack of whoever walks it)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[object] = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple):
            children = list(value)
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_any(text: str, suffix: str, label: str) -> tuple[object, dict[KeyPath, int]] | Problem:
    try:
        if suffix == ".json":
            return json.loads(text), {}
        if suffix == ".toml":
            return tomllib.loads(text), {}
        loader = _SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return {}, {}
            if _node_count(node) > MAX_VALUES:
                return error(label, f"refused: its aliases expand to more than {MAX_VALUES:,} values")
            lines: dict[KeyPath, int] = {}
            for key, line in _node_lines(node, ()):
                lines.setdefault(key, line)
            return loader.construct_document(node), lines
        finally:
            loader.dispose()
    except json.JSONDecodeError as exc:
        return error(label, f"invalid JSON: {exc.msg}", line=exc.lineno)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        return error(label, f"invalid TOML: {exc}", line=int(found.group(1)) if found else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        return error(label, f"invalid YAML: {message}", line=mark.line + 1 if mark else None)
    except yaml.YAMLError as exc:
        return error(label, f"invalid YAML: {exc}")
    except RecursionError:
        return error(label, "refused: it nests too deeply")


def _node_count(root: yaml.Node) -> int:
    """How many nodes ``root`` stands for with every alias expanded (memoised: linear in its size).

    An alias to a node it is inside (a cycle) counts as too many."""
    too_many = MAX_VALUES + 1
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes.get(id(child), too_many) for child in children), too_many)
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            return too_many  # a cycle
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _node_lines(node: yaml.Node, key: KeyPath) -> Iterator[tuple[KeyPath, int]]:
    """The 1-based line of each key and list item, by its key path (each node visited once)."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, KeyPath]] = [(node, key)]
    while stack:
        current, path = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                child: KeyPath = (*path, str(key_node.value))
                yield child, key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                yield (*path, index), item.start_mark.line + 1
                stack.append((item, (*path, index)))
