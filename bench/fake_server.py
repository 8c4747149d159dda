"""Start the fake LLM server (``tests/fakellm.py``) as a separate process for benchmarks.

Benchmarks must not share a CPU-bound event loop with the server they measure against, so the
server runs in its own process and prints its base URL once it listens.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """Run ``python -m tests.fakellm --port 0 ARGS`` and yield its base URL; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakellm", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"fake server did not start (printed {url!r})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
