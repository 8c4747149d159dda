"""A snapshot of the experiment directory's bytes (the one place the core reads files).

Loading works on a snapshot rather than on the live directory so that validation, the cohort
and the fingerprint all describe the same contents even while an editor is saving, and so the
rest of the core stays pure and testable with in-memory files.

Containment: every file is read through :func:`read_inside`, which reads only regular files
whose real path (symbolic links resolved) is inside ``1_raw``. A link to another file or folder
inside ``1_raw`` is followed (researchers link shared concept files; such a link reads nothing
they could not read anyway); a link that leaves ``1_raw`` (``leak.txt -> /proc/self/environ``,
``templates/draft -> /etc``) and anything that is not a regular file (a FIFO, whose open would
block the service, a device, a socket) is *refused*: never opened, listed in
:attr:`RawFiles.refused` and reported by the loader as an error naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daydreamd.core.errors import DaydreamError

RAW_DIR_NAME = "1_raw"
SYSTEM_TREES = ("/proc", "/sys", "/dev")
"""Kernel and device file systems: nothing in them is ever an experiment file."""
_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK  # a FIFO swapped in after the check cannot block the open
    | getattr(os, "O_NOFOLLOW", 0)  # the resolved path's last part must not be a link by now
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class RefusedFileError(DaydreamError):
    """A file under ``1_raw`` that daydreamd will not read: it leaves ``1_raw`` or is not a regular file.

    Args:
        relative: its path relative to ``1_raw``.
        reason: why, and what to do about it (one sentence, shown after the path).
    """

    def __init__(self, relative: str, reason: str) -> None:
        super().__init__(f"{relative}: {reason}")
        self.relative = relative
        self.reason = reason


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
    refused: tuple[tuple[str, str], ...] = ()
    """(relative path, reason) for what :func:`read_inside` would not read: a link leaving ``1_raw``
    (to a file or a folder), a FIFO, a device, a socket. Never opened; an error in the loader."""

    @classmethod
    def of(
        cls,
        files: Mapping[str, bytes],
        *,
        unreadable: tuple[tuple[str, str], ...] = (),
        label: str = RAW_DIR_NAME,
        missing: bool = False,
        bad_names: tuple[bytes, ...] = (),
        refused: tuple[tuple[str, str], ...] = (),
    ) -> RawFiles:
        """Build a snapshot from in-memory files (tests, tools), computing its fingerprint."""
        fingerprint = fingerprint_files(files, unreadable, bad_names, refused)
        return cls(files, fingerprint, unreadable, label, missing, bad_names, refused)

    def display(self, relpath: str) -> str:
        """The path as shown to users (relative to the data directory)."""
        return f"{self.label}/{relpath}"


def fingerprint_files(
    files: Mapping[str, bytes],
    unreadable: tuple[tuple[str, str], ...] = (),
    bad_names: tuple[bytes, ...] = (),
    refused: tuple[tuple[str, str], ...] = (),
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
    for path, reason in refused:
        digest.update(f"{path}\0refused:{reason}\0".encode())
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
    Files are read with :func:`read_inside`; links to folders are followed only when the folder is
    inside ``raw_dir`` and not one the link is already in (a loop). What is not read for those
    reasons goes to ``refused``.
    """
    label = raw_dir.name or RAW_DIR_NAME
    if not raw_dir.is_dir():
        return RawFiles.of({}, missing=True, label=label)
    real_root = os.path.realpath(raw_dir)
    root = os.fsencode(raw_dir)
    files: dict[str, bytes] = {}
    unreadable: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    bad_names: list[bytes] = []
    within: dict[bytes, frozenset[str]] = {root: frozenset()}
    """Folder being walked -> the real paths of the folders above it (to cut loops of links)."""
    # Errors (a folder removed meanwhile) are skipped; links to folders are checked below before
    # the walk may enter them (followlinks).
    for top, dirs, names in os.walk(root, followlinks=True):
        rel_top = os.path.relpath(top, root)
        prefix = b"" if rel_top == b"." else rel_top + b"/"
        above = within.pop(top, frozenset())
        real_top = os.path.realpath(os.fsdecode(top))
        if _folder_problem(Path(os.fsdecode(top)), real_top, real_root, above, label) is not None:
            dirs.clear()  # changed into a link since it was listed: that change triggers another read
            continue
        path_to_here = above | {real_top}
        for name in sorted(dirs):
            if is_ignored_name(os.fsdecode(name)):
                dirs.remove(name)
            elif _utf8(name) is None:
                dirs.remove(name)
                bad_names.append(prefix + name + b"/")
            else:
                child = top + b"/" + name
                child_path = Path(os.fsdecode(child))
                problem = (
                    _folder_problem(child_path, os.path.realpath(child_path), real_root, path_to_here, label)
                    if child_path.is_symlink()
                    else None
                )
                if problem is not None:
                    dirs.remove(name)
                    refused.append((os.fsdecode(prefix + name), problem))
                else:
                    within[child] = path_to_here
        for name in names:
            if is_ignored_name(os.fsdecode(name)):
                continue
            rel = _utf8(prefix + name)
            if rel is None:
                bad_names.append(prefix + name)
                continue
            try:
                files[rel] = read_inside(raw_dir, rel, real_root=real_root, label=label)
            except RefusedFileError as exc:
                refused.append((rel, exc.reason))
            except FileNotFoundError:  # removed since it was listed (or a link to nothing inside 1_raw)
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
        refused=tuple(sorted(refused)),
    )


def read_inside(
    root: Path, relative: str, *, real_root: str | None = None, label: str = RAW_DIR_NAME
) -> bytes:
    """The bytes of the regular file ``root/relative`` whose real path is inside ``root``.

    Raises :class:`RefusedFileError` (never opening it) when its real path, links resolved, is
    outside ``root`` or in a kernel file system (``/proc``...), or when it is not a regular file
    (a FIFO, a device, a socket): a FIFO would block the open, and a device or ``/proc`` file can
    hold anything (``/proc/self/environ`` holds the service's API key). The check is made on the
    resolved path, and what was opened is checked again (``O_NOFOLLOW | O_NONBLOCK``, then
    ``fstat``: the same regular file), so a file swapped for a link or a FIFO between the check
    and the open is refused too. Other ``OSError``s (a missing file, no permission) propagate.
    ``real_root`` is ``os.path.realpath(root)`` when the caller has it already.
    """
    real_root = real_root if real_root is not None else os.path.realpath(root)
    path = root / relative
    real = os.path.realpath(path)
    linked = path.is_symlink()
    if not _is_within(real, real_root) or _is_within_any(real, SYSTEM_TREES):
        raise RefusedFileError(relative, _outside_message(path, real, label, folder=False))
    before = Path(real).lstat()
    if not stat.S_ISREG(before.st_mode):
        raise RefusedFileError(relative, _special_message(before.st_mode, label, linked=linked))
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since it was resolved
            raise RefusedFileError(relative, _changed_message()) from None
        raise
    with os.fdopen(fd, "rb") as f:
        opened = os.fstat(f.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise RefusedFileError(relative, _special_message(opened.st_mode, label, linked=linked))
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise RefusedFileError(relative, _changed_message())
        return f.read()


def _is_within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (both absolute, normalised)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _is_within_any(path: str, folders: tuple[str, ...]) -> bool:
    return any(_is_within(path, folder) for folder in folders)


def _folder_problem(path: Path, real: str, real_root: str, above: frozenset[str], label: str) -> str | None:
    """Why the walk must not enter the folder ``path`` (real path ``real``), or None when it may."""
    if not _is_within(real, real_root) or _is_within_any(real, SYSTEM_TREES):
        return _outside_message(path, real, label, folder=True)
    if real in above:
        return (
            "refused: it is a symbolic link to a folder it is itself in (a loop), so it is not followed; "
            "remove the link"
        )
    return None


def _outside_message(path: Path, real: str, label: str, *, folder: bool) -> str:
    """Refusing what resolves outside ``label``: the link as ``ls -l`` shows it (stable, unlike a
    resolved ``/proc/self``), else the real path (a folder above it is the link)."""
    what, fix = ("folder", "copy the folder in") if folder else ("file", "copy the file in")
    try:
        where = f"it is a symbolic link to the {what} {path.readlink()}, outside {label}/"
    except OSError:  # not a link itself: a folder above it is one
        where = f"its real path {real} (reached through a linked folder) is outside {label}/"
    return (
        f"refused: {where}, and daydreamd reads only files inside {label}/ "
        f"(links within {label}/ are fine); {fix} instead of linking to it, or remove the link"
    )


def _special_message(mode: int, label: str, *, linked: bool) -> str:
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a special file"
    )
    subject = "it links to" if linked else "it is"
    return (
        f"refused: {subject} {kind}, not a regular file, and daydreamd reads only regular files "
        f"(it never opens pipes, devices or sockets); remove it or move it out of {label}/"
    )


def _changed_message() -> str:
    return (
        "refused: it was replaced (by a link or another file) while it was read; "
        "it is read again on the next change"
    )
