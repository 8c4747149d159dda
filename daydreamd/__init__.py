"""daydreamd: run combinatorial LLM experiments as a service.

Edit ``data/1_raw``; the service rebuilds the cohort, and runs only the stages you approve.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("daydreamd")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["__version__"]
