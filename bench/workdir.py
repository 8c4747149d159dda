"""Where the service's benchmarks put their data folders."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_root() -> Path:
    """``$DD_BENCH_DIR`` when set, else ``.bench/`` in the project (ignored by git).

    Not the system's temporary folder: a benchmark should measure the service writing into a data
    folder as a deployment's is, and on a disk whose temporary folder has seen many deletions,
    creating a file there can cost ten times more than elsewhere on the same disk.
    """
    chosen = os.environ.get("DD_BENCH_DIR")
    path = Path(chosen) if chosen else ROOT / ".bench"
    path.mkdir(parents=True, exist_ok=True)
    return path
