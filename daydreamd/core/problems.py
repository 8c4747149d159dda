"""Problems found in the experiment files (pure).

The core never raises on bad input: it returns ``Problem`` values, so ``validate`` can list
every problem at once and the daemon can show them in its status while it keeps running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """How bad a problem is: errors block a cohort build, warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with the experiment, located precisely enough to fix it."""

    level: Level
    path: str
    """File path relative to the data directory, e.g. ``1_raw/draft_templates.csv``."""
    line: int | None = None
    """1-based line in that file (the CSV line of the row, or the template line)."""
    column: str | None = None
    """The CSV column at fault, when there is one."""
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        column = f"column '{self.column}': " if self.column else ""
        return f"{where}: {self.level}: {column}{self.message}"

    def to_dict(self) -> dict[str, object]:
        """The JSON shape used by ``validate --json`` and the status socket."""
        return {
            "level": str(self.level),
            "file": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


def has_errors(problems: Iterable[Problem]) -> bool:
    """True when any problem is an error (warnings alone never block a build)."""
    return any(p.level is Level.ERROR for p in problems)


def error(path: str, message: str, *, line: int | None = None, column: str | None = None) -> Problem:
    """Shorthand for an error-level problem."""
    return Problem(level=Level.ERROR, path=path, line=line, column=column, message=message)


def warning(path: str, message: str, *, line: int | None = None, column: str | None = None) -> Problem:
    """Shorthand for a warning-level problem."""
    return Problem(level=Level.WARNING, path=path, line=line, column=column, message=message)
