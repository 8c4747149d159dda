"""A snapshot of the experiment directory's bytes (the one place the core reads files).

Loading works on a snapshot rather than on the live directory so that validation, the cohort
and the fingerprint all describe the same contents even while an editor is saving, and so the
rest of the core stays pure and testable with in-memory files.
"""

from __future__ import annotations

import hashlib
import os
import stat
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
    bad_names: tuple[bytes, ...] = ()
    """Relative paths, as bytes, whose name is not valid UTF-8 (a folder's ends with ``/``).

    Nothing can refer to such a file, and its name cannot be shown or hashed as text, so it is
    kept apart (never read) and reported as an error by the loader; see :func:`escaped_name`."""

    @classmethod
    def of(
        cls,
        files: Mapping[str, bytes],
        *,
        unreadable: tuple[tuple[str, str], ...] = (),
        label: str = RAW_DIR_NAME,
        missing: bool = False,
        bad_names: tuple[bytes, ...] = (),
    ) -> RawFiles:
        """Build a snapshot from in-memory files (tests, tools), computing its fingerprint."""
        fingerprint = fingerprint_files(files, unreadable, bad_names)
        return cls(files, fingerprint, unreadable, label, missing, bad_names)

    def display(self, relpath: str) -> str:
        """The path as shown to users (relative to the data directory)."""
        return f"{self.label}/{relpath}"


def fingerprint_files(
    files: Mapping[str, bytes],
    unreadable: tuple[tuple[str, str], ...] = (),
    bad_names: tuple[bytes, ...] = (),
) -> str:
    """Hash paths, sizes and bytes in path order, so any edit, add, remove or rename shows."""
    digest = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    for path, reason in unreadable:
        digest.update(f"{path}\0unreadable:{reason}\0".encode())
    for name in bad_names:
        digest.update(b"\0bad-name:" + name + b"\0")
    return digest.hexdigest()


def escaped_name(name: bytes) -> str:
    """A file name that is not valid UTF-8, printable: each bad byte as ``\\xNN`` (``bad\\xff.csv``).

    The same escapes work in a shell's ``$'...'`` quoting, so ``mv $'bad\\xff.csv' bad.csv`` renames it.
    """
    return name.decode("utf-8", "backslashreplace")


def is_ignored_name(name: str) -> bool:
    """Editor and OS droppings that are never part of an experiment."""
    return name.startswith(".") or name.endswith(("~", ".swp", ".tmp")) or name.startswith("#")


def _utf8(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_raw_dir(raw_dir: Path) -> RawFiles:
    """Read every regular file under ``raw_dir`` (skipping hidden and editor temp files).

    Names are walked as bytes, so any name the file system allows is handled: one that is not
    valid UTF-8 goes to ``bad_names`` (a folder's contents are not read). A file or folder that
    vanishes during the walk is simply not there; the edit that removed it triggers another read.
    """
    label = raw_dir.name or RAW_DIR_NAME
    if not raw_dir.is_dir():
        return RawFiles.of({}, missing=True, label=label)
    root = os.fsencode(raw_dir)
    files: dict[str, bytes] = {}
    unreadable: list[tuple[str, str]] = []
    bad_names: list[bytes] = []
    for top, dirs, names in os.walk(root):  # errors (a folder removed meanwhile) are skipped
        rel_top = os.path.relpath(top, root)
        prefix = b"" if rel_top == b"." else rel_top + b"/"
        for name in sorted(dirs):
            if is_ignored_name(os.fsdecode(name)):
                dirs.remove(name)
            elif _utf8(name) is None:
                dirs.remove(name)
                bad_names.append(prefix + name + b"/")
        for name in names:
            if is_ignored_name(os.fsdecode(name)):
                continue
            rel = _utf8(prefix + name)
            if rel is None:
                bad_names.append(prefix + name)
                continue
            path = raw_dir / rel
            try:
                if not stat.S_ISREG(path.stat().st_mode):  # follows links, like Path.is_file()
                    continue
                files[rel] = path.read_bytes()
            except FileNotFoundError:  # removed since it was listed
                continue
            except OSError as exc:
                unreadable.append((rel, exc.strerror or type(exc).__name__))
    if not raw_dir.is_dir():  # removed while it was read: say so rather than list half of it
        return RawFiles.of({}, missing=True, label=label)
    return RawFiles.of(
        dict(sorted(files.items())),
        unreadable=tuple(sorted(unreadable)),
        label=label,
        bad_names=tuple(sorted(bad_names)),
    )
