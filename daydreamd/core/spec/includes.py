"""``@file:`` includes: a CSV or text file next to the spec that lists levels or rule entries (pure).

As in the original project:

* a CSV needs a header row; with **one** column it gives a list of values (empty cells and blank
  lines skipped), with **several** a list of tuples in the header's column order, one per row,
  where an empty cell is an error (a spec must be deterministic);
* a ``.txt`` file gives its non-empty lines, stripped.

Cells are stripped. Every value keeps its file and line, so a later error (a value outside an
axis, a template missing from ``1_raw``) points at the CSV line that holds it.
"""

from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass

from daydreamd.core.problems import Problem, error
from daydreamd.core.spec.document import KeyPath, Origin, SpecDocument, include_target, key_text

INCLUDE_TYPES = (".csv", ".txt")
"""The file types an ``@file:`` include may have."""


@dataclass(frozen=True, slots=True)
class Included:
    """What an include holds: strings (one column, or a text file) or tuples (several columns)."""

    entries: tuple[tuple[str | tuple[str, ...], Origin], ...]
    header: tuple[str, ...]
    """The CSV's column names (empty for a text file)."""


def load_include(doc: SpecDocument, ref: str, key: KeyPath) -> tuple[Included | None, list[Problem]]:
    """The entries of the include ``ref`` written at ``key``, or None with the problems."""
    target = include_target(ref)
    where = key_text(key)
    if target is None:
        return None, [
            doc.error(
                key,
                f"include {ref!r} is refused: an include must name a file inside the spec's folder "
                "(a relative path that does not climb out of it with '..')",
            )
        ]
    if target in doc.refused:
        return None, [doc.error(key, f"include {ref!r}: {doc.refused[target]}")]
    data = doc.files.get(target)
    if data is None:
        return None, [doc.error(key, f"include {ref!r}: no such file {doc.display(target)}")]
    suffix = posixpath.splitext(target)[1].lower()
    if suffix not in INCLUDE_TYPES:
        return None, [
            doc.error(key, f"include {ref!r}: unsupported file type {suffix or '(none)'!r}; use .csv or .txt")
        ]
    shown = doc.display(target)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [error(shown, f"not valid UTF-8 (included by {where})", line=line)]
    if suffix == ".txt":
        entries = tuple(
            (stripped, Origin(shown, number, where))
            for number, raw in enumerate(text.splitlines(), start=1)
            if (stripped := raw.strip())
        )
        return Included(entries, ()), []
    return _read_csv(text, shown, where)


def _read_csv(text: str, shown: str, where: str) -> tuple[Included | None, list[Problem]]:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        raw_header = next(reader, [])
    except csv.Error as exc:
        return None, [error(shown, f"CSV error: {exc} (included by {where})", line=reader.line_num)]
    columns = [(index, name.strip()) for index, name in enumerate(raw_header) if name.strip()]
    if not columns:
        return None, [error(shown, f"an included CSV needs a header row (included by {where})", line=1)]
    header = tuple(name for _, name in columns)
    entries: list[tuple[str | tuple[str, ...], Origin]] = []
    problems: list[Problem] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # a blank line
            cells = [(row[i].strip() if i < len(row) else "") for i, _ in columns]
            if len(cells) == 1:
                if cells[0]:
                    entries.append((cells[0], Origin(shown, line, where)))
                continue
            missing = [name for (_, name), cell in zip(columns, cells, strict=True) if not cell]
            if missing:
                problems.append(
                    error(
                        shown,
                        f"row has no value in column {missing[0]!r} (included by {where}); every cell of a "
                        "multi-column include must be filled",
                        line=line,
                        column=missing[0],
                    )
                )
                continue
            entries.append((tuple(cells), Origin(shown, line, where)))
    except csv.Error as exc:
        problems.append(error(shown, f"CSV error: {exc} (included by {where})", line=reader.line_num))
    if problems:
        return None, problems
    if not entries:
        return None, [error(shown, f"an included CSV needs data rows below its header (included by {where})")]
    return Included(tuple(entries), header), []
