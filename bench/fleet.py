"""Does one model spread over a fleet of endpoints reach the sum of their ceilings?

One generation model is served by three endpoints, each a fake LLM server (``tests/fakellm.py``)
in its own process with its own latency ``L_i`` and its own key, and each limited in the daemon
to ``C_i`` calls at once (``[endpoints.<name>] concurrency``). An endpoint's ceiling is
``C_i / L_i`` calls a second; the fleet's ideal is their sum (the pool's own concurrency and the
model's are set to ``sum C_i``, so only the endpoints bind). ``--count`` drafts (default 4,800)
are approved at once; ``wall_s`` runs from just before the approval to the first status that shows
every draft done (polled every 0.1 s), and ``ratio`` = (drafts / ``wall_s``) / ideal (target >= 0.95).

Per endpoint: the calls it answered (its share, against its share of the ideal), the most calls it
ever had at once (must not pass ``C_i``), its 429s (must be 0), and the mean calls in progress at
the server (sampled every 0.1 s) against ``C_i``. The service's and the servers' CPU per
generation say whether the machine, not the scheduler, was the limit.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/fleet.py --runs 3

It prints one JSON object on stdout (each run, and the median ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.experiment import drafts_only, write_experiment
from bench.fake_server import fake_server
from bench.machine import machine
from bench.pool import FAST_POOL_LINES, process_cpu_s, server_stats
from bench.workdir import bench_root
from tests.integration.daemon import API_KEY, Daemon, fast_config

FLEET = (("near", 8, 100), ("far", 8, 200), ("slow", 8, 400))
"""(endpoint, calls at once, latency in ms): ceilings 80, 40 and 20 calls a second."""
MODEL_ID = "gen_0"


def config(urls: list[str]) -> str:
    slots = sum(c for _, c, _ in FLEET)
    text = fast_config(urls[0]).replace(
        FAST_POOL_LINES, f"concurrency = {slots}\nmodel_concurrency = {slots}\nrequests_per_minute = 0\n"
    )
    for (name, calls, _), url in zip(FLEET, urls, strict=True):
        text += (
            f'[endpoints.{name}]\nkind = "openai"\nbase_url = "{url}"\napi_key_env = "DD_TEST_KEY"\n'
            f"concurrency = {calls}\n"
        )
    names = ", ".join(f'"{name}"' for name, _, _ in FLEET)
    return text + f"[models.{MODEL_ID}]\nendpoints = [{names}]\n"


async def run_once(urls: list[str], count: int) -> dict[str, Any]:
    stats_urls = [url.removesuffix("/v1") + "/_fake/stats" for url in urls]
    root = Path(tempfile.mkdtemp(prefix="dd-fleet-", dir=bench_root()))
    try:
        write_experiment(root / "data" / "1_raw", drafts_only(count))
        daemon = Daemon(root, config(urls))
        try:
            await daemon.start(deadline_s=600)
            before = [await anyio.to_thread.run_sync(server_stats, u) for u in stats_urls]
            assert daemon.process is not None
            cpu0 = process_cpu_s(daemon.process.pid)
            in_progress: list[list[int]] = [[] for _ in FLEET]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    for i, u in enumerate(stats_urls):
                        with contextlib.suppress(OSError):
                            in_progress[i].append(int(server_stats(u)["in_progress"]))

            t0 = time.monotonic()
            matched = (await daemon.approve("draft", limit=count))["matched"]
            if matched != count:
                raise SystemExit(f"bench/fleet.py: only {matched} of {count} drafts could be approved")
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            await daemon.wait_stage("draft", done=count, deadline_s=3600, poll_s=0.1)
            wall = time.monotonic() - t0
            stop.set()
            service_cpu = process_cpu_s(daemon.process.pid) - cpu0
            after = [await anyio.to_thread.run_sync(server_stats, u) for u in stats_urls]
            await daemon.stop()
        finally:
            daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ideal = sum(calls / (latency / 1000) for _, calls, latency in FLEET)
    endpoints = {}
    for (name, calls, latency), b, a, samples in zip(FLEET, before, after, in_progress, strict=True):
        answered = int(a["status_counts"].get("200", 0)) - int(b["status_counts"].get("200", 0))
        endpoints[name] = {
            "concurrency": calls,
            "latency_ms": latency,
            "answered": answered,
            "share": round(answered / count, 3),
            "ideal_share": round(calls / (latency / 1000) / ideal, 3),
            "max_in_progress": a["max_in_progress"],
            "mean_in_progress": round(statistics.fmean(samples), 2) if samples else None,
            "responses_429": a["rate_limited"] - b["rate_limited"],
            "server_cpu_ms_per_call": round(1000 * (a["cpu_s"] - b["cpu_s"]) / max(1, answered), 3),
        }
    return {
        "drafts": count,
        "wall_s": round(wall, 2),
        "throughput_per_s": round(count / wall, 2),
        "ideal_per_s": round(ideal, 2),
        "ratio": round(count / wall / ideal, 3),
        "service_cpu_ms_per_generation": round(1000 * service_cpu / count, 3),
        "endpoints": endpoints,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4800, help="drafts (default 4,800: 34 s at the ideal)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs = []
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(fake_server("--latency-ms", str(latency), "--api-key", API_KEY))
            for _, _, latency in FLEET
        ]
        for _ in range(args.runs):
            runs.append(anyio.run(run_once, urls, args.count))
    ratios = [run["ratio"] for run in runs]
    print(
        json.dumps(
            {
                "benchmark": "fleet",
                "target_ratio": 0.95,
                "machine": machine(load_before),
                "median_ratio": statistics.median(ratios),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
