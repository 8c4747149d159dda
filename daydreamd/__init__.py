"""daydreamd: run combinatorial LLM experiments as a service.

Edit ``data/1_raw``; the service rebuilds the cohort, and runs only the stages you approve.
"""

from __future__ import annotations

from functools import cache

__all__ = ["__version__"]


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("daydreamd")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def __getattr__(name: str) -> str:
    """``__version__`` is looked up on first use: importlib.metadata costs ~20 ms per CLI call."""
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'daydreamd' has no attribute {name!r}")
