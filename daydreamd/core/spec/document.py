"""What the edge hands the spec compiler: the parsed spec mapping and the bytes it includes (pure).

The edge (``storage/spec_files``) reads the spec file, parses it (YAML, TOML or JSON by its
extension) into plain data, records the line of every key and list item it can (YAML), finds the
``@file:`` references with :func:`include_refs`, checks each with :func:`include_target` and reads
the ones that stay inside the spec's folder. The core never touches the file system.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from daydreamd.core.problems import Problem, error

INCLUDE_PREFIX = "@file:"
"""A string value starting with this names a file next to the spec: ``'@file:items/levels.csv'``."""

KeyPath = tuple[str | int, ...]
"""Where a value sits in the spec mapping: ``("rules", "pairs", "p", "allowed", 2)``."""


def key_text(key: KeyPath) -> str:
    """A key path as users write it: ``rules.pairs.p.allowed[2]``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a level was written: the file shown to users, its line when known, and the key."""

    path: str
    line: int | None
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecDocument:
    """One spec file as the edge read it.

    ``data`` is the parsed top level (None when the file could not be read or parsed; then
    ``problems`` says why). ``files`` holds each included file's bytes by the normalised path
    :func:`include_target` gave, relative to the spec's folder; ``refused`` gives, for an include
    that was not read, why (outside the folder, a link out of it, not a regular file, missing).
    """

    path: str
    """The spec file as shown in problems, e.g. ``cohorts/rejudge/spec/config.yaml``."""
    data: object = None
    lines: Mapping[KeyPath, int] = field(default_factory=dict)
    """1-based line of each key (and list item) the parser could locate."""
    files: Mapping[str, bytes] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    fingerprint: str = ""
    """The spec folder's contents, hashed (the edge sets it): equal fingerprints mean an unchanged spec."""

    def line(self, key: KeyPath) -> int | None:
        """The line of ``key``, else of the nearest enclosing key that has one."""
        for end in range(len(key), 0, -1):
            found = self.lines.get(key[:end])
            if found is not None:
                return found
        return None

    def origin(self, key: KeyPath) -> Origin:
        """Where ``key`` was written in the spec file."""
        return Origin(self.path, self.line(key), key_text(key))

    def error(self, key: KeyPath, message: str) -> Problem:
        """An error at ``key``: ``<spec>:<line>: error: <key>: <message>``."""
        return error(self.path, f"{key_text(key)}: {message}", line=self.line(key))

    def display(self, target: str) -> str:
        """An included file as shown in problems: its path next to the spec file's."""
        return posixpath.join(posixpath.dirname(self.path), target)


def include_target(ref: str) -> str | None:
    """The normalised relative path an ``@file:`` value names, or None when it leaves the folder.

    ``'@file:items/a.csv'`` -> ``items/a.csv``; ``'@file:./items//a.csv'`` -> ``items/a.csv``.
    An absolute path, an empty one, or one that climbs out of the spec's folder (``../x.csv``,
    ``items/../../x.csv``) gives None: such an include is refused without being read. Links are
    the edge's to check (it reads only regular files whose real path is inside the folder).
    """
    rel = ref.removeprefix(INCLUDE_PREFIX).strip()
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return None
    normal = posixpath.normpath(rel)
    if normal in (".", "..") or normal.startswith("../"):
        return None
    return normal


def include_refs(data: object) -> Iterator[str]:
    """Every ``@file:`` string anywhere in the parsed spec, in document order (the edge reads these)."""
    if isinstance(data, str):
        if data.startswith(INCLUDE_PREFIX):
            yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from include_refs(value)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from include_refs(item)
