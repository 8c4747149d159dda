"""A batch's files under ``batches/<batch id>/``: what was uploaded, and what came back.

``input.jsonl`` is the request file exactly as uploaded (written durably before the upload): the
prompts a batch's results answer are read back from it, so a template edited while a batch runs
cannot change what its replies are recorded as answering. ``output.jsonl`` and ``errors.jsonl``
are the provider's result files exactly as downloaded, written durably before any result is saved:
what was paid for is on disk whole before anything else happens to it.
"""

from __future__ import annotations

from pathlib import Path

from daydreamd.storage.atomic import write_atomic
from daydreamd.storage.layout import DataLayout

INPUT = "input.jsonl"
OUTPUT = "output.jsonl"
ERRORS = "errors.jsonl"


class BatchFiles:
    """The files of every batch of one data folder."""

    def __init__(self, layout: DataLayout) -> None:
        self._layout = layout

    def path(self, batch_id: int, name: str) -> Path:
        return self._layout.batch_file(batch_id, name)

    def write(self, batch_id: int, name: str, content: bytes) -> None:
        """Write one file atomically and durably."""
        write_atomic(self.path(batch_id, name), content)

    def read(self, batch_id: int, name: str) -> bytes | None:
        """One file's bytes, or None when it is not there."""
        try:
            return self.path(batch_id, name).read_bytes()
        except FileNotFoundError:
            return None
