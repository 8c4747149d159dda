"""Reading the experiment's CSV files with line numbers and precise problems (pure).

Researchers edit these files by hand, so every problem must name the file, the line and the
column. The reader works on bytes already in memory (see ``snapshot``) and never raises for
bad input: it returns the problems it found alongside whatever it could read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from daydreamd.core.problems import Problem, error

BOM = b"\xef\xbb\xbf"
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


@dataclass(frozen=True, slots=True)
class Row:
    """One data row: its 1-based line in the file and its cells by column name (stripped)."""

    line: int
    cells: dict[str, str]

    def get(self, column: str, default: str = "") -> str:
        """The cell's text, or ``default`` when the column is absent."""
        return self.cells.get(column, default)


@dataclass(frozen=True, slots=True)
class Table:
    """A parsed CSV file: its path (relative to the data dir), header and rows."""

    path: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def decode_text(path: str, data: bytes) -> tuple[str | None, list[Problem]]:
    """Decode UTF-8 (a BOM is allowed) and normalise line endings to ``\\n``.

    Returns the text, or None with a problem naming the line of the first bad byte.
    """
    body = data[len(BOM) :] if data.startswith(BOM) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        message = f"not valid UTF-8 (byte {exc.start + len(data) - len(body)}); save the file as UTF-8"
        return None, [error(path, message, line=line)]
    return text.replace("\r\n", "\n").replace("\r", "\n"), []


def read_table(path: str, data: bytes, *, required: Sequence[str]) -> tuple[Table | None, list[Problem]]:
    """Parse a CSV file whose header must contain ``required`` columns.

    Returns None for the table when the file cannot be used at all (undecodable, unparseable,
    no header, missing required columns); row-level problems leave the other rows usable.
    """
    text, problems = decode_text(path, data)
    if text is None:
        return None, problems
    records, parse_problems = _read_records(path, text)
    if parse_problems:
        return None, parse_problems
    if not records:
        return None, [error(path, "file is empty; it needs a header row", line=1)]
    header_line, header = records[0]
    columns = tuple(name.strip() for name in header)
    header_problems = _check_header(path, header_line, columns, required)
    if header_problems:
        return None, header_problems
    rows: list[Row] = []
    for line, fields in records[1:]:
        if len(fields) != len(columns):
            message = (
                f"row has {len(fields)} fields but the header has {len(columns)}; check commas and quotes"
            )
            problems.append(error(path, message, line=line))
            continue
        rows.append(Row(line, {c: v.strip() for c, v in zip(columns, fields, strict=True)}))
    return Table(path, columns, tuple(rows)), problems


def _read_records(path: str, text: str) -> tuple[list[tuple[int, list[str]]], list[Problem]]:
    """Split text into (first line, fields) records, skipping blank lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        return [], [error(path, f"CSV does not parse: {exc}; check the quoting of this row", line=start)]
    return records, []


def _check_header(path: str, line: int, columns: tuple[str, ...], required: Sequence[str]) -> list[Problem]:
    problems = []
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        problems.append(error(path, f"duplicate column name(s) {', '.join(duplicates)}", line=line))
    missing = [c for c in required if c not in columns]
    if missing:
        message = (
            f"missing required column(s) {', '.join(missing)}; the header must include {', '.join(required)}"
        )
        problems.append(error(path, message, line=line))
    return problems


def parse_bool(text: str) -> bool | None:
    """True/False/true/false/1/0/yes/no (any case); None for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None
