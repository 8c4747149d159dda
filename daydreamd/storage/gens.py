"""The gens store: each generation's files in ``data/gens/<stage>/<gen_id>/``.

``prompt.txt`` (what was sent), ``raw.txt`` (the model's reply, exactly as received),
``parsed.txt`` (what children and results read; present only when the generation succeeded)
and ``metadata.json`` (see ``metadata`` for the schema). Every write is atomic (temp file,
rename): a reader, or a killed process, sees the old file or the whole new one. Before a new
call replaces a saved reply, the old ``raw.txt`` is archived as ``raw.<n>.txt``: a reply that
was paid for is never silently overwritten. Paths come from :mod:`daydreamd.storage.layout`.

Durability (what survives a power failure or a kernel crash; see :mod:`daydreamd.storage.atomic`):

- ``raw.txt`` and ``metadata.json`` are *records*. A generation saved for the first time (its
  folder made by this save) has no earlier version a crash could tear: its files are written
  and renamed into place without an fsync each, then one group sync of the file system
  (:class:`daydreamd.storage.group_sync.GroupSync`, shared by every save running meanwhile)
  makes all of them durable before the save returns. A folder that exists already (a retry, a
  re-parse) has its records fsynced before they are renamed over the old ones and the folder
  fsynced last, so a crash never turns a durable record into a torn one.
- ``metadata.json`` records ``raw_sha256`` of the reply saved with it: a ``raw.txt`` that a
  power failure caught before the sync (missing, empty, partial) no longer matches, and the
  runner then takes the generation for one that never ran (the damaged file is archived, the
  model called again: the crash came before the reply was acknowledged).
- ``prompt.txt`` and ``parsed.txt`` are *derived*: re-created from the records and the
  experiment (the prompt is rendered again, the saved reply parsed again), so the runner writes
  them without an fsync of their own. After a power failure they may be missing, empty or
  partial; ``metadata.json`` records ``prompt_sha256`` and ``parsed_sha256`` (this store stamps
  the latter whenever it writes ``parsed.txt``), and :meth:`GensStore.read_parsed_checked`
  tells an intact ``parsed.txt`` from a damaged one, which the runner then re-creates.

Methods are synchronous: the async runner calls them in a worker thread, a batch per step.
Offline readers (results, the report) use the ``try_`` methods, which take any file they cannot
read (missing, unreadable, not UTF-8, not a JSON object) for an absent one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daydreamd.core.stages import Stage
from daydreamd.storage.atomic import fsync_dir, replace_file, write_atomic, write_atomic_many
from daydreamd.storage.group_sync import GroupSync
from daydreamd.storage.layout import METADATA as METADATA
from daydreamd.storage.layout import PARSED as PARSED
from daydreamd.storage.layout import PROMPT as PROMPT
from daydreamd.storage.layout import RAW as RAW
from daydreamd.storage.layout import DataLayout, relative_gen_file

RECORDS = frozenset({RAW, METADATA})
"""The files that cannot be re-created: fsynced before they replace an earlier version."""

PARSED_SHA256 = "parsed_sha256"
"""The ``metadata.json`` key holding the SHA-256 of the ``parsed.txt`` written with it."""

RAW_SHA256 = "raw_sha256"
"""The ``metadata.json`` key holding the SHA-256 of the ``raw.txt`` saved with it."""


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """A generation's ``parsed.txt`` checked against the hash its ``metadata.json`` recorded."""

    text: str | None
    """The file's text when it is intact (None: missing, or damaged)."""
    metadata: dict[str, Any] | None
    damaged: bool
    """The metadata says done and records a hash, but the file is missing or does not match it:
    a power failure caught it before its contents reached the disk. It can be re-created."""


class GensStore:
    """Files of generations under ``<data_dir>/gens``."""

    def __init__(self, data_dir: Path, *, group_sync: GroupSync | None = None) -> None:
        self.data_dir = data_dir
        self.layout = DataLayout(data_dir)
        self.root = self.layout.gens
        self.group_sync = group_sync or GroupSync()
        """Makes first saves durable together (see the module docstring)."""

    def directory(self, stage: Stage | str, gen_id: str) -> Path:
        """``gens/<stage>/<gen_id>``."""
        return self.layout.gen_dir(stage, gen_id)

    @staticmethod
    def relative_file(stage: Stage | str, gen_id: str, name: str) -> str:
        """``gens/<stage>/<gen_id>/<name>``: a file's path relative to the data directory."""
        return relative_gen_file(stage, gen_id, name)

    def gen_ids(self, stage: Stage | str) -> list[str]:
        """The gen_ids that have a folder under ``gens/<stage>``, sorted (hidden folders skipped)."""
        try:
            entries = os.scandir(self.layout.stage_dir(stage))
        except (FileNotFoundError, NotADirectoryError):
            return []
        with entries:
            return sorted(entry.name for entry in entries if entry.is_dir() and entry.name[0] != ".")

    def exists(self, stage: Stage | str, gen_id: str, name: str) -> bool:
        """True when the generation has this file."""
        return self.layout.gen_file(stage, gen_id, name).exists()

    def read_text(self, stage: Stage | str, gen_id: str, name: str) -> str | None:
        """A file's text, or None when it does not exist."""
        try:
            return self.layout.gen_file(stage, gen_id, name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def try_read_text(
        self, stage: Stage | str, gen_id: str, name: str, *, errors: str = "strict"
    ) -> str | None:
        """A file's text, or None when it is missing or unreadable (permissions, a folder, not UTF-8).

        ``errors="replace"`` reads text that is not UTF-8 with replacement characters instead.
        """
        try:
            return self.layout.gen_file(stage, gen_id, name).read_text(encoding="utf-8", errors=errors)
        except (OSError, UnicodeDecodeError):
            return None

    def try_read_metadata(self, stage: Stage | str, gen_id: str) -> dict[str, Any] | None:
        """The metadata, or None when it is missing, unreadable or not a JSON object."""
        return _json_object(self.try_read_text(stage, gen_id, METADATA))

    def read_parsed(self, stage: Stage | str, gen_id: str) -> str | None:
        """The parsed text of a finished generation, or None."""
        return self.read_text(stage, gen_id, PARSED)

    def read_metadata(self, stage: Stage | str, gen_id: str) -> dict[str, Any] | None:
        """The metadata, or None when missing or unreadable (then it is simply rewritten)."""
        return _json_object(self.read_text(stage, gen_id, METADATA))

    def write(self, stage: Stage | str, gen_id: str, name: str, text: str) -> Path:
        """Atomically write one file of a generation (unchanged contents are not rewritten)."""
        path = self.layout.gen_file(stage, gen_id, name)
        if _same_text(path, text):
            return path
        write_atomic(path, text)
        return path

    def save(self, stage: Stage | str, gen_id: str, files: list[tuple[str, str | dict[str, Any]]]) -> None:
        """Write several files of a generation in order, each atomically and durably (dicts become
        JSON). A ``parsed.txt`` among them has its hash stamped into the metadata written with it."""
        _stamp(files)
        write_atomic_many(
            self.directory(stage, gen_id),
            [(name, dump_metadata(data) if isinstance(data, dict) else data) for name, data in files],
        )

    def save_reply(
        self, stage: Stage | str, gen_id: str, *, prompt: str, metadata: dict[str, Any], raw: str
    ) -> None:
        """A paid reply, durable when this returns: ``prompt.txt`` (derived), ``raw.txt``, then the
        metadata recording its input (and ``raw_sha256``).

        A crash before this returns may lose the reply (as if it had come later); after it,
        ``raw.txt`` and the metadata recording its input are both on disk, whole.
        """
        metadata[RAW_SHA256] = _sha256(raw)
        self._save(
            self.directory(stage, gen_id), [(PROMPT, prompt), (RAW, raw), (METADATA, dump_metadata(metadata))]
        )

    def save_result(
        self,
        stage: Stage | str,
        gen_id: str,
        metadata: dict[str, Any],
        *,
        parsed: str | None = None,
        prompt: str | None = None,
        raw: str | None = None,
    ) -> None:
        """How a run ended: ``prompt.txt``, a new reply's ``raw.txt``, ``parsed.txt``, then
        ``metadata.json`` (stamped with the hashes of the reply and the parsed text written with
        it). Durable when this returns, except the derived files' contents, which ``metadata.json``
        lets a reader check (``parsed_sha256``) and re-create.
        """
        if raw is not None:
            metadata[RAW_SHA256] = _sha256(raw)
        if parsed is not None:
            metadata[PARSED_SHA256] = _sha256(parsed)
        files = [(PROMPT, prompt), (RAW, raw), (PARSED, parsed), (METADATA, dump_metadata(metadata))]
        self._save(self.directory(stage, gen_id), [(name, text) for name, text in files if text is not None])

    def _save(self, directory: Path, files: list[tuple[str, str]]) -> None:
        """Write ``files`` in order and make the records durable (see the module docstring): one
        shared group sync for a folder made here, else each record fsynced before its rename."""
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            for name, text in files:
                replace_file(directory, name, text, sync=name in RECORDS)
            fsync_dir(directory)
            return
        for name, text in files:
            replace_file(directory, name, text, sync=False)
        self.group_sync.sync(directory, [name for name, _ in files])

    def write_derived(self, stage: Stage | str, gen_id: str, name: str, text: str) -> None:
        """Re-create a derived file (``prompt.txt``, ``parsed.txt``) of an existing generation:
        atomic, not fsynced (it can be re-created again)."""
        replace_file(self.directory(stage, gen_id), name, text, sync=False)

    def restore_derived(self, stage: Stage | str, gen_id: str, name: str, text: str) -> bool:
        """Write a derived file unless it already holds exactly ``text``; True when it was written."""
        try:
            same = self.layout.gen_file(stage, gen_id, name).read_bytes() == text.encode("utf-8")
        except FileNotFoundError:
            same = False
        if not same:
            self.write_derived(stage, gen_id, name, text)
        return not same

    def read_parsed_checked(self, stage: Stage | str, gen_id: str) -> ParsedFile:
        """``parsed.txt`` with its metadata, checked against the recorded ``parsed_sha256``.

        Without a recorded hash (files written before it was recorded, which were fsynced) the
        file is taken as it is.
        """
        metadata = self.read_metadata(stage, gen_id)
        try:
            data: bytes | None = self.layout.gen_file(stage, gen_id, PARSED).read_bytes()
        except FileNotFoundError:
            data = None
        recorded = (
            metadata.get(PARSED_SHA256) if metadata is not None and metadata.get("status") == "done" else None
        )
        if not isinstance(recorded, str):
            text = None if data is None else _decode(data)
            return ParsedFile(text=text, metadata=metadata, damaged=False)
        if data is not None and hashlib.sha256(data).hexdigest() == recorded:
            return ParsedFile(text=data.decode("utf-8"), metadata=metadata, damaged=False)
        return ParsedFile(text=None, metadata=metadata, damaged=True)

    def raw_intact(self, stage: Stage | str, gen_id: str, metadata: dict[str, Any]) -> bool:
        """False when ``metadata`` records a ``raw_sha256`` that ``raw.txt`` (missing, or damaged by
        a power failure before the save's sync) does not match."""
        recorded = metadata.get(RAW_SHA256)
        if not isinstance(recorded, str):
            return True
        try:
            data = self.layout.gen_file(stage, gen_id, RAW).read_bytes()
        except FileNotFoundError:
            return False
        return hashlib.sha256(data).hexdigest() == recorded

    def archive_raw(self, stage: Stage | str, gen_id: str) -> Path | None:
        """Move ``raw.txt`` aside as ``raw.<n>.txt`` before a new call; returns the new name.

        A reply that was paid for is never overwritten, and a stale reply can never be taken
        for the answer to a newer prompt.
        """
        path = self.layout.gen_file(stage, gen_id, RAW)
        if not path.exists():
            return None
        archive = _free_archive_name(path)
        path.replace(archive)
        return archive

    def remove_parsed(self, stage: Stage | str, gen_id: str) -> None:
        """Remove ``parsed.txt`` before a new attempt, so a failure never leaves a stale one."""
        self.layout.gen_file(stage, gen_id, PARSED).unlink(missing_ok=True)


def _json_object(text: str | None) -> dict[str, Any] | None:
    """``text`` as a JSON object, or None when absent, not JSON, or not an object."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def dump_metadata(metadata: dict[str, Any]) -> str:
    """``metadata.json`` text: sorted keys, one line (json's C encoder; ``jq .`` pretty-prints it).

    Indented output would use the pure-Python encoder, which costs more CPU than everything
    else the runner does per generation.
    """
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _stamp(files: list[tuple[str, str | dict[str, Any]]]) -> None:
    """Record the hash of a ``parsed.txt`` among ``files`` in the metadata among them."""
    parsed = next((data for name, data in files if name == PARSED and isinstance(data, str)), None)
    if parsed is None:
        return
    for name, data in files:
        if name == METADATA and isinstance(data, dict):
            data[PARSED_SHA256] = _sha256(parsed)


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except (FileNotFoundError, UnicodeDecodeError):
        return False


def _free_archive_name(path: Path) -> Path:
    n = 1
    while (candidate := path.with_name(f"raw.{n}.txt")).exists():
        n += 1
    return candidate
