"""The gens store: each generation's files in ``data/gens/<stage>/<gen_id>/``.

``prompt.txt`` (what was sent), ``raw.txt`` (the model's reply, exactly as received),
``parsed.txt`` (what children and results read; present only when the generation succeeded)
and ``metadata.json`` (see ``metadata`` for the schema). Every write is atomic. Before a new
call replaces a saved reply, the old ``raw.txt`` is archived as ``raw.<n>.txt``: a reply that
was paid for is never silently overwritten. Paths come from :mod:`daydreamd.storage.layout`.

Methods are synchronous: the async runner calls them in a worker thread, a batch per step.
Offline readers (results, the report) use the ``try_`` methods, which take any file they cannot
read (missing, unreadable, not UTF-8, not a JSON object) for an absent one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from daydreamd.core.stages import Stage
from daydreamd.storage.atomic import write_atomic, write_atomic_many
from daydreamd.storage.layout import METADATA as METADATA
from daydreamd.storage.layout import PARSED as PARSED
from daydreamd.storage.layout import PROMPT as PROMPT
from daydreamd.storage.layout import RAW as RAW
from daydreamd.storage.layout import DataLayout, relative_gen_file


class GensStore:
    """Files of generations under ``<data_dir>/gens``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.layout = DataLayout(data_dir)
        self.root = self.layout.gens

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
        """Write several files of a generation in order, each atomically (dicts become JSON)."""
        write_atomic_many(
            self.directory(stage, gen_id),
            [(name, dump_metadata(data) if isinstance(data, dict) else data) for name, data in files],
        )

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
