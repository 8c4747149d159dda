"""How busy the machine was during a benchmark: on a shared machine every figure depends on it."""

from __future__ import annotations

import os
from typing import Any


def machine(load_before: float) -> dict[str, Any]:
    """CPUs and the 1-minute load average before (``load_before``) and now, for a result's JSON."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
