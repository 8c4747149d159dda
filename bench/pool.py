"""Does the worker pool use the budget it is given, and stay under the server's rate limit?

What is measured (a real daemon process, the fake LLM server in its own process, 100 ms latency):

* ``concurrency``: ``--count`` drafts with the pool's concurrency as the only binding limit
  (the server's RPM far above it). Achieved throughput over the ideal ``concurrency / latency``
  (target: at least 0.95).
* ``rpm``: the configured requests-per-minute budget equals the server's limit, which is the
  binding limit. Reported: 429s the server sent (target: none), the most requests the server
  saw in any 60 s window, and throughput over the ideal. With a sliding 60 s window the first
  minute's budget can be spent at once, so over a run of ``k`` minutes of budget the best
  possible time is ``(k - 1) x 60 s`` plus the first burst; ``ideal_s`` reports that bound.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/pool.py                 # both scenarios
    .venv/bin/python bench/pool.py --scenario rpm --rpm 600 --count 1500

It prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.experiment import Shape, write_experiment
from bench.fake_server import fake_server
from tests.integration.daemon import Daemon, fast_config

LATENCY_MS = 100


async def run_scenario(name: str, url: str, count: int, concurrency: int, rpm: int) -> dict[str, Any]:
    """Approve ``count`` drafts of one model and time them to done."""
    root = Path(tempfile.mkdtemp(prefix="dd-pool-", dir=os.environ.get("DD_BENCH_DIR")))
    try:
        write_experiment(root / "data" / "1_raw", Shape(concepts=60, draft_templates=1, generation_models=1))
        extra = (
            f"concurrency = {concurrency}\nmodel_concurrency = {concurrency}\nrequests_per_minute = {rpm}\n"
        )
        config = fast_config(url, extra=extra).replace("concurrency = 8\nmodel_concurrency = 4\n", "")
        config = config.replace("requests_per_minute = 6000\n", "")
        daemon = Daemon(root, config)
        try:
            await daemon.start()
            t0 = time.monotonic()
            approved = (await daemon.approve("draft", limit=count))["matched"]
            status = await daemon.wait_stage("draft", done=approved, deadline_s=3600, poll_s=0.5)
            wall = time.monotonic() - t0
            metrics = await anyio.to_thread.run_sync(lambda: daemon.client.get("/v1/status"))
            await daemon.stop()
        finally:
            daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    throughput = approved / wall
    result: dict[str, Any] = {
        "scenario": name,
        "generations": approved,
        "concurrency": concurrency,
        "rpm_budget": rpm,
        "latency_ms": LATENCY_MS,
        "wall_s": round(wall, 2),
        "throughput_per_s": round(throughput, 2),
        "rate_limit_errors_seen_by_service": metrics.get("recent_errors", {}).get("rate_limit", 0),
        "failed": status["stages"]["draft"]["failed"],
    }
    by_concurrency = concurrency / (LATENCY_MS / 1000)
    if name == "concurrency":
        result["ideal_per_s"] = round(by_concurrency, 2)
        result["ratio"] = round(throughput / by_concurrency, 3)
    else:
        minutes = math.ceil(approved / rpm)
        ideal_s = (minutes - 1) * 60 + (approved - (minutes - 1) * rpm) / by_concurrency
        result["ideal_s"] = round(ideal_s, 2)
        result["ratio"] = round(ideal_s / wall, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["concurrency", "rpm", "all"], default="all")
    parser.add_argument("--count", type=int, default=1200, help="drafts per scenario (default 1200)")
    parser.add_argument("--concurrency", type=int, default=16, help="pool concurrency (default 16)")
    parser.add_argument(
        "--rpm", type=int, default=600, help="RPM budget and server limit for 'rpm' (default 600)"
    )
    args = parser.parse_args(argv)
    results = []
    if args.scenario in ("concurrency", "all"):
        with fake_server("--latency-ms", str(LATENCY_MS), "--rpm", "1000000") as url:
            results.append(
                anyio.run(run_scenario, "concurrency", url, args.count, args.concurrency, 1_000_000)
            )
    if args.scenario in ("rpm", "all"):
        with fake_server("--latency-ms", str(LATENCY_MS), "--rpm", str(args.rpm)) as url:
            results.append(anyio.run(run_scenario, "rpm", url, args.count, 64, args.rpm))
    print(
        json.dumps(
            {"benchmark": "pool", "targets": {"ratio": 0.95, "rate_limit_errors": 0}, "results": results},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
