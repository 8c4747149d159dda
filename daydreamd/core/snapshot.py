"""A snapshot of the experiment directory's bytes (the one place the core reads files).

Loading works on a snapshot rather than on the live directory so that validation, the cohort
and the fingerprint all describe the same contents even while an editor is saving, and so the
rest of the core stays pure and testable with in-memory files.

Containment. ``1_raw`` lives in a folder the experiment's group can write, while the service
holds secrets (its API key, in its environment and its credentials), so what the group puts
there must never make the service read anything outside ``1_raw``. No decision is made on path
strings (``realpath`` results computed at different moments can be raced: a link flipped
while a long chain is resolved once made the whole file system count as "inside"):

* ``1_raw`` is opened once, as a directory descriptor. A ``1_raw`` that is itself a symbolic
  link is followed at that one open (researchers may point it at another folder); from then on
  the snapshot is of that directory, whatever the name is re-pointed to meanwhile.
* The walk holds a descriptor for every folder it is in, and opens each entry relative to its
  folder's descriptor with ``O_NOFOLLOW`` (folders with ``O_DIRECTORY``, files with
  ``O_NONBLOCK``), then checks what it opened with ``fstat``: a regular file (or a folder). An
  entry swapped for a link after it was listed is refused as replaced (it is read again on the
  next change); a folder above it swapped meanwhile does not matter, as its descriptor is held.
* Symbolic links *inside* ``1_raw`` (to a file or a folder) are followed, by the kernel:
  ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` relative to the ``1_raw``
  descriptor resolves the link's path but fails if any step (a ``..``, an absolute target, a
  link in a chain, a rename racing the resolution) would leave ``1_raw``; as the path is
  resolved from the ``1_raw`` descriptor, a folder on it swapped meanwhile can only lead
  somewhere else beneath ``1_raw``. This keeps the
  documented policy (researchers link a shared concept file into several levels) with the
  kernel, not this module, doing the resolving; resolving links by hand with a stack of folder
  descriptors would re-implement that and be easier to get wrong. Absolute links are refused
  even when they point inside ``1_raw`` (make them relative). Where ``openat2`` is missing
  (Linux before 5.6, a seccomp filter) no link is followed at all: every link is refused with an
  error saying to copy the file in. A link to a folder the walk is already in (a loop, as
  ``(dev, inode)`` of the open folders) is refused, and the walk stops at :data:`MAX_DEPTH`
  folders and :data:`MAX_ENTRIES` entries (links can repeat folders without looping).
* Anything that is not a regular file (a FIFO, whose open would block the service, a device,
  a socket) is refused, never opened: entries are checked with ``lstat`` first (links with an
  ``O_PATH`` descriptor, which opens nothing), and what is opened is checked again.
* Sizes: a file over :data:`MAX_FILE_BYTES`, or one that would bring the snapshot over
  :data:`MAX_TOTAL_BYTES`, is refused from its ``fstat`` size (a sparse file counts by its
  size) without being read, and at most the limit plus one byte is ever read (a file can grow).

What is refused is listed in :attr:`RawFiles.refused` (never opened, or never read) and reported
by the loader as an error naming the file relative to ``1_raw``, why, and what to do.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import platform
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from daydreamd.core.errors import DaydreamError

RAW_DIR_NAME = "1_raw"
MIB = 1024 * 1024
MAX_FILE_BYTES = 16 * MIB
"""The largest file read from ``1_raw`` (the largest real experiment files are CSVs of a few MB)."""
MAX_TOTAL_BYTES = 256 * MIB
"""The most read from ``1_raw`` in one snapshot, all files together (a linked folder counts each time)."""
MAX_DEPTH = 64
"""The deepest folder read, counting folders reached through links."""
MAX_ENTRIES = 50_000
"""The most files and folders looked at in one snapshot (links to folders can repeat folders)."""


class RefusedFileError(DaydreamError):
    """A file under ``1_raw`` that daydreamd will not read: it leaves ``1_raw``, is not a regular
    file, or is over a size limit.

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
    """(relative path, reason) for what was not read: a link leaving ``1_raw`` (to a file or a
    folder), a FIFO, a device, a socket, a file over a size limit. An error in the loader."""

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

    ``raw_dir`` is opened once (a link there is followed, at that open only) and read with
    :func:`read_raw_fd`. A ``raw_dir`` that does not exist, or is removed while it is read, is
    ``missing``; one that cannot be opened otherwise is ``unreadable`` as a whole.
    """
    label = raw_dir.name or RAW_DIR_NAME
    try:
        root_fd = os.open(raw_dir, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return RawFiles.of({}, missing=True, label=label)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a loop of links: there is no such folder
            return RawFiles.of({}, missing=True, label=label)
        return RawFiles.of({}, unreadable=(("", exc.strerror or type(exc).__name__),), label=label)
    try:
        raw = read_raw_fd(root_fd, label=label)
        if os.fstat(root_fd).st_nlink == 0:  # removed while it was read: say so rather than list half of it
            return RawFiles.of({}, missing=True, label=label)
        return raw
    finally:
        os.close(root_fd)


def read_raw_fd(
    root_fd: int,
    *,
    label: str = RAW_DIR_NAME,
    follow_links: bool | None = None,
    before_open: Callable[[str], None] | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> RawFiles:
    """Read the folder open as ``root_fd`` (the caller keeps and closes it), as :func:`read_raw_dir`.

    Names are walked as bytes, so any name the file system allows is handled: one that is not
    valid UTF-8 goes to ``bad_names`` (a folder's contents are not read). A file or folder that
    vanishes during the walk is simply not there; the edit that removed it triggers another read.
    What is refused (see the module's docstring) goes to ``refused``; what exists but cannot be
    read (no permission) to ``unreadable``.

    ``follow_links``: follow links inside the folder (None: where ``openat2`` makes that safe).
    ``before_open`` is called with each entry's relative path just before it is opened (tests
    use it to change the tree at that moment). The limits default to the module's constants.
    """
    walk = _Walk(
        root_fd,
        label=label,
        follow_links=openat2_available() if follow_links is None else follow_links,
        before_open=before_open or (lambda _relative: None),
        max_file_bytes=max_file_bytes,
        max_total_bytes=max_total_bytes,
    )
    root = os.fstat(root_fd)
    walk.folder(root_fd, b"", frozenset({(root.st_dev, root.st_ino)}), 1)
    return RawFiles.of(
        dict(sorted(walk.files.items())),
        unreadable=tuple(sorted(walk.unreadable)),
        label=label,
        bad_names=tuple(sorted(walk.bad_names)),
        refused=tuple(sorted(walk.refused)),
    )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIR_FLAGS = _DIR_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""Opening a file: never blocks (a FIFO swapped in), never takes a terminal; files in folders
are opened with ``O_NOFOLLOW`` too (links go through :func:`_openat2_beneath`)."""
_O_PATH: int = getattr(os, "O_PATH", 0)
_READ_CHUNK = MIB
_RETRIES = 8
"""``openat2`` attempts when a rename races a ``..`` in the resolution (EAGAIN)."""

Key = tuple[int, int]
"""(st_dev, st_ino): one folder, whatever path reaches it."""


class _Walk:
    """One snapshot's walk: what was read, refused and skipped so far."""

    def __init__(
        self,
        root_fd: int,
        *,
        label: str,
        follow_links: bool,
        before_open: Callable[[str], None],
        max_file_bytes: int,
        max_total_bytes: int,
    ) -> None:
        self.root_fd = root_fd
        self.label = label
        self.follow_links = follow_links
        self.before_open = before_open
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.files: dict[str, bytes] = {}
        self.unreadable: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.bad_names: list[bytes] = []
        self.total = 0
        self.entries = 0

    def folder(self, fd: int, prefix: bytes, ancestors: frozenset[Key], depth: int) -> None:
        """Read the folder open as ``fd`` (``prefix``: its path relative to the root, with ``/``):
        its files first, then its folders, each in name order."""
        try:
            with os.scandir(fd) as listing:
                names = sorted(os.fsencode(entry.name) for entry in listing)
        except OSError:  # removed meanwhile, or not listable: as good as empty
            return
        later: list[tuple[bytes, str]] = []
        for name in names:
            if is_ignored_name(os.fsdecode(name)):
                continue
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                self.refused.append((os.fsdecode(prefix + name), _too_many_message(self.label)))
                return
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._unreadable(prefix + name, exc)
                continue
            relative = _utf8(prefix + name)
            if relative is None:
                self.bad_names.append(prefix + name + (b"/" if stat.S_ISDIR(mode) else b""))
            elif stat.S_ISDIR(mode):
                later.append((name, relative))
            else:
                self._entry(fd, name, relative, mode, ancestors, depth)
        for name, relative in later:
            if self.entries > MAX_ENTRIES:
                return
            self._subfolder(fd, name, relative, ancestors, depth)

    def _entry(
        self, fd: int, name: bytes, relative: str, mode: int, ancestors: frozenset[Key], depth: int
    ) -> None:
        try:
            if stat.S_ISLNK(mode):
                self._link(fd, name, relative, ancestors, depth)
            elif stat.S_ISREG(mode):
                self.before_open(relative)
                try:
                    file_fd = os.open(name, _FILE_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # replaced by a link since it was listed
                        raise RefusedFileError(relative, _changed_message()) from None
                    raise
                self._read(file_fd, relative, linked=False)
            else:  # a FIFO, a socket, a device: never opened
                raise RefusedFileError(relative, _special_message(mode, self.label, linked=False))
        except RefusedFileError as exc:
            self.refused.append((relative, exc.reason))
        except FileNotFoundError:  # removed since it was listed, or a link to nothing
            pass
        except OSError as exc:
            self._unreadable(os.fsencode(relative), exc)

    def _subfolder(self, fd: int, name: bytes, relative: str, ancestors: frozenset[Key], depth: int) -> None:
        self.before_open(relative)
        try:
            sub_fd = os.open(name, _SUBDIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a link or a file since it was listed
                self.refused.append((relative, _changed_message()))
            return  # removed meanwhile, or not readable: skipped, as a folder that cannot be listed
        self._enter(sub_fd, relative, ancestors, depth)

    def _enter(self, sub_fd: int, relative: str, ancestors: frozenset[Key], depth: int) -> None:
        """Walk the open folder ``sub_fd`` (closing it), unless it is one the walk is already in."""
        try:
            opened = os.fstat(sub_fd)
            key = (opened.st_dev, opened.st_ino)
            if key in ancestors:
                self.refused.append((relative, _loop_message()))
            elif depth >= MAX_DEPTH:
                self.refused.append((relative, _too_deep_message(MAX_DEPTH, self.label)))
            else:
                self.folder(sub_fd, os.fsencode(relative) + b"/", ancestors | {key}, depth + 1)
        finally:
            os.close(sub_fd)

    def _link(self, fd: int, name: bytes, relative: str, ancestors: frozenset[Key], depth: int) -> None:
        """Follow the link ``relative`` (in the folder ``fd``) if it stays inside the root."""
        if not self.follow_links:
            raise RefusedFileError(relative, _unfollowed_message(fd, name, self.label))
        self.before_open(relative)
        path_fd = self._beneath(fd, name, relative, _O_PATH | os.O_CLOEXEC)
        try:
            target = os.fstat(path_fd)
            if stat.S_ISDIR(target.st_mode):  # the folder the O_PATH descriptor holds, opened to list
                sub_fd = os.open(".", _DIR_FLAGS, dir_fd=path_fd)
                self._enter(sub_fd, relative, ancestors, depth)
                return
            if not stat.S_ISREG(target.st_mode):  # an O_PATH descriptor opened nothing
                raise RefusedFileError(relative, _special_message(target.st_mode, self.label, linked=True))
        finally:
            os.close(path_fd)
        file_fd = self._beneath(fd, name, relative, _FILE_FLAGS)  # what the O_PATH check saw, or refused
        self._read(file_fd, relative, linked=True, expected=(target.st_dev, target.st_ino))

    def _beneath(self, fd: int, name: bytes, relative: str, flags: int) -> int:
        """Open ``relative`` (the link ``name`` in the folder ``fd``) with its links resolved by
        the kernel beneath the root, or refuse it saying why."""
        try:
            return _openat2_beneath(self.root_fd, os.fsencode(relative), flags)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise RefusedFileError(relative, _outside_message(fd, name, self.label)) from None
            if exc.errno == errno.ELOOP:
                raise RefusedFileError(relative, _chain_message(self.label)) from None
            if exc.errno == errno.EAGAIN:
                raise RefusedFileError(relative, _changed_message()) from None
            raise

    def _read(self, file_fd: int, relative: str, *, linked: bool, expected: Key | None = None) -> None:
        """Read the open ``file_fd`` (closing it) into ``files``, or refuse it."""
        try:
            opened = os.fstat(file_fd)
            if not stat.S_ISREG(opened.st_mode):
                raise RefusedFileError(relative, _special_message(opened.st_mode, self.label, linked=linked))
            if expected is not None and (opened.st_dev, opened.st_ino) != expected:
                raise RefusedFileError(relative, _changed_message())
            self._check_size(relative, opened.st_size)
            data = _read_at_most(file_fd, min(self.max_file_bytes, self.max_total_bytes - self.total) + 1)
            self._check_size(relative, len(data), grew=True)
        finally:
            os.close(file_fd)
        self.files[relative] = data
        self.total += len(data)

    def _check_size(self, relative: str, size: int, *, grew: bool = False) -> None:
        if size > self.max_file_bytes:
            raise RefusedFileError(
                relative, _too_big_message(size, self.max_file_bytes, self.label, grew=grew)
            )
        if self.total + size > self.max_total_bytes:
            raise RefusedFileError(
                relative, _total_message(self.total + size, self.max_total_bytes, self.label)
            )

    def _unreadable(self, relative: bytes, exc: OSError) -> None:
        name = _utf8(relative)
        if name is None:
            self.bad_names.append(relative)
        else:
            self.unreadable.append((name, exc.strerror or type(exc).__name__))


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``: all of it if it is shorter."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---- openat2 ---------------------------------------------------------------------------------------

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_OPENAT2_MACHINES = frozenset(
    {"x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv6l", "riscv64", "ppc64le", "s390x"}
)
"""Where ``openat2`` is system call 437 (the common numbering; not alpha or MIPS)."""
_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


@functools.cache
def _libc_syscall() -> Callable[..., int]:
    """libc's ``syscall()``, typed for ``openat2`` (looked up once; ENOSYS where it has no number)."""
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    function.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
    return function


def _openat2_beneath(dir_fd: int, path: bytes, flags: int) -> int:
    """``openat2(dir_fd, path, flags)`` resolving ``path`` (links too) only beneath ``dir_fd``.

    Raises ``OSError``: EXDEV when it would leave ``dir_fd`` (``..`` above it, an absolute link),
    ELOOP for a chain of over 40 links or a ``/proc`` magic link, EAGAIN when renames kept
    racing it, ENOSYS where there is no ``openat2``.
    """
    syscall = _libc_syscall()
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    code = errno.EAGAIN
    for _attempt in range(_RETRIES):
        fd = syscall(_SYS_OPENAT2, dir_fd, path, ctypes.addressof(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(code, os.strerror(code), os.fsdecode(path))


@functools.cache
def openat2_available() -> bool:
    """Whether links can be followed safely here (``openat2`` works; probed once per process)."""
    root = os.open("/", _DIR_FLAGS)
    try:
        os.close(_openat2_beneath(root, b".", _O_PATH | os.O_CLOEXEC))
        return True
    except OSError:  # ENOSYS (old kernel), EPERM (a seccomp filter), EINVAL
        return False
    finally:
        os.close(root)


# ---- messages: the path is shown before them; each says why, and what to do -------------------------


def _link_target(fd: int, name: bytes) -> tuple[str, str, str]:
    """The link ``name`` in the folder ``fd``: (what it says, as ``ls -l`` shows it; "file" or
    "folder"; how to fix it). Only for messages: nothing is read through it."""
    try:
        target = os.fsdecode(os.readlink(name, dir_fd=fd))
    except OSError:  # replaced meanwhile
        target = "?"
    try:
        folder = stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode)
    except OSError:  # leads nowhere (or through a loop)
        folder = False
    return (target, "folder", "copy the folder in") if folder else (target, "file", "copy the file in")


def _outside_message(fd: int, name: bytes, label: str) -> str:
    target, what, fix = _link_target(fd, name)
    if target.startswith("/"):
        where = (
            f"it is a symbolic link to the {what} {target} by an absolute path, which counts as "
            f"outside {label}/ (only relative links that stay inside it are followed)"
        )
        fix += ", make the link relative"
    else:
        where = f"it is a symbolic link to the {what} {target}, which leads outside {label}/"
    return (
        f"refused: {where}, and daydreamd reads only files inside {label}/ "
        f"(links within {label}/ are fine); {fix} instead of linking to it, or remove the link"
    )


def _unfollowed_message(fd: int, name: bytes, label: str) -> str:
    target, what, fix = _link_target(fd, name)
    return (
        f"refused: it is a symbolic link to the {what} {target}, and on this system daydreamd "
        f"follows no links in {label}/ (the kernel lacks openat2, which keeps a link from leading "
        f"outside {label}/); {fix} instead of linking to it"
    )


def _chain_message(label: str) -> str:
    return (
        "refused: it is a symbolic link that goes round a loop of links, or through more than 40 "
        f"links, so it is not followed; link straight to the file inside {label}/, or remove the link"
    )


def _loop_message() -> str:
    return (
        "refused: it is a symbolic link to a folder it is itself in (a loop), so it is not followed; "
        "remove the link"
    )


def _too_deep_message(depth: int, label: str) -> str:
    return (
        f"refused: it is more than {depth} folders deep in {label}/ (counting folders reached "
        "through links), so it is not read; flatten the folders or remove the links that nest them"
    )


def _too_many_message(label: str) -> str:
    return (
        f"refused: {label}/ holds more than {MAX_ENTRIES:,} files and folders (counting those reached "
        "through links to folders), so this one and the rest are not read; remove what the experiment "
        "does not use, or links that repeat folders"
    )


def _mib(size: int) -> str:
    return f"{size / MIB:,.3g} MiB" if size < 1000 * MIB else f"{size / MIB:,.0f} MiB"


def _too_big_message(size: int, limit: int, label: str, *, grew: bool) -> str:
    what = f"it grew past {size - 1:,} bytes while it was read" if grew else f"it is {size:,} bytes"
    return (
        f"refused: {what} ({_mib(size)}), over the limit of {_mib(limit)} for one file in {label}/, "
        f"so it is not read; experiment files are a few MB at most: remove it, split it, or move it "
        f"out of {label}/"
    )


def _total_message(total: int, limit: int, label: str) -> str:
    return (
        f"refused: with it, the files read from {label}/ would come to {total:,} bytes ({_mib(total)}), "
        f"over the limit of {_mib(limit)} for all of {label}/, so it is not read; move large files "
        f"the experiment does not use out of {label}/"
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
