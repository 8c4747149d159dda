"""A snapshot of the experiment directory's bytes (the one place the core reads files).

Loading works on a snapshot rather than on the live directory so that validation, the cohort
and the fingerprint all describe the same contents even while an editor is saving, and so the
rest of the core stays pure and testable with in-memory files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RAW_DIR_NAME = "1_raw"


@dataclass(frozen=True, slots=True)
class RawFiles:
    """The files under ``data/1_raw`` by POSIX path relative to that folder."""

    files: Mapping[str, bytes]
    fingerprint: str
    """SHA-256 over every path and its bytes: equal fingerprints mean equal contents."""
    unreadable: tuple[tuple[str, str], ...] = ()
    """(relative path, reason) for files that exist but could not be read."""
    label: str = RAW_DIR_NAME
    """How paths are shown in problems: ``<label>/<relative path>``."""
    missing: bool = False
    """True when the directory itself does not exist."""

    @classmethod
    def of(
        cls,
        files: Mapping[str, bytes],
        *,
        unreadable: tuple[tuple[str, str], ...] = (),
        label: str = RAW_DIR_NAME,
        missing: bool = False,
    ) -> RawFiles:
        """Build a snapshot from in-memory files (tests, tools), computing its fingerprint."""
        return cls(files, fingerprint_files(files, unreadable), unreadable, label, missing)

    def display(self, relpath: str) -> str:
        """The path as shown to users (relative to the data directory)."""
        return f"{self.label}/{relpath}"


def fingerprint_files(files: Mapping[str, bytes], unreadable: tuple[tuple[str, str], ...] = ()) -> str:
    """Hash paths, sizes and bytes in path order, so any edit, add, remove or rename shows."""
    digest = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    for path, reason in unreadable:
        digest.update(f"{path}\0unreadable:{reason}\0".encode())
    return digest.hexdigest()


def is_ignored_name(name: str) -> bool:
    """Editor and OS droppings that are never part of an experiment."""
    return name.startswith(".") or name.endswith(("~", ".swp", ".tmp")) or name.startswith("#")


def read_raw_dir(raw_dir: Path) -> RawFiles:
    """Read every regular file under ``raw_dir`` (skipping hidden and editor temp files)."""
    if not raw_dir.is_dir():
        return RawFiles.of({}, missing=True, label=raw_dir.name or RAW_DIR_NAME)
    files: dict[str, bytes] = {}
    unreadable: list[tuple[str, str]] = []
    for path in sorted(raw_dir.rglob("*")):
        rel = path.relative_to(raw_dir)
        if any(is_ignored_name(part) for part in rel.parts) or not path.is_file():
            continue
        try:
            files[rel.as_posix()] = path.read_bytes()
        except OSError as exc:
            unreadable.append((rel.as_posix(), exc.strerror or type(exc).__name__))
    return RawFiles.of(files, unreadable=tuple(unreadable), label=raw_dir.name)
