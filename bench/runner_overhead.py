"""How much CPU does the stage runner spend per generation? (It must never be the bottleneck.)

What is measured
    ``--count`` draft generations (default 5,000) go through ``Runner.run`` — render, one HTTP
    call to the fake LLM server, checks, parse, four atomic file writes (``prompt.txt``,
    ``raw.txt``, ``parsed.txt``, ``metadata.json`` as ``done``) made durable by group syncs shared
    by the generations saved meanwhile (see ``daydreamd.storage.gens``) — with ``--concurrency``
    (default 64) in flight, against ``tests/fakellm.py`` running as a separate process at 0 ms
    latency, into a data folder under the benchmarks' folder (``bench/workdir.py``). Reported per
    run: wall seconds, generations per second, this process's CPU time per generation (user +
    system, all threads; also split), fsyncs and group syncs per generation. The server's CPU is
    not included. On a filesystem where creating a file is slow (ext4 without a journal skips
    recently deleted inodes, so a machine that just deleted many files pays up to ~0.4 ms of
    kernel time per new file), the four new files of each generation dominate the kernel time.

Target
    Under 1 ms of runner CPU per generation.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/runner_overhead.py --runs 3

It prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cohort_scale import write_experiment
from bench.fake_server import fake_server
from bench.workdir import bench_root
from daydreamd.core.build import read_and_build
from daydreamd.core.config import Settings, load_settings
from daydreamd.core.jobs import Job, Jobs
from daydreamd.core.stages import Stage
from daydreamd.daemon.runner import Runner
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.storage.gens import GensStore


def make_jobs(data_dir: Path, count: int) -> tuple[Settings, list[Job]]:
    """A synthetic experiment (k=3, 9,880 combos) and the jobs of its first ``count`` drafts."""
    write_experiment(data_dir / "1_raw")
    config = data_dir / "config.toml"
    config.write_text('[paths]\ndata_dir = "."\n[experiment]\nk_max = 3\n')
    settings = load_settings(config, {})
    build = read_and_build(settings)
    assert build.cohort is not None, [str(p) for p in build.problems]
    drafts = [g for g in build.cohort.generations if g.stage is Stage.DRAFT][:count]
    factory = Jobs(build.experiment, settings)
    return settings, [job for g in drafts if (job := factory.job(g)) is not None]


async def run_once(url: str, data_dir: Path, jobs: list[Job], concurrency: int) -> dict[str, Any]:
    """Run every job once into a fresh gens store; time wall and CPU."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = OpenAiCompatibleClient(session, url, "bench-key", 60.0, include_usage=True)
        store = GensStore(data_dir)
        runner = Runner(store=store, provider=client, rng=random.Random(0))
        pending = iter(jobs)
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for job in pending:
                outcome = await runner.run(job)
                failures += not outcome.ok

        fsyncs = 0
        real_fsync = os.fsync

        def counting_fsync(fd: Any) -> None:
            nonlocal fsyncs
            fsyncs += 1
            real_fsync(fd)

        os.fsync = counting_fsync
        wall0, cpu0 = time.perf_counter(), time.process_time()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        os.fsync = real_fsync
    return {
        "wall_s": round(wall, 3),
        "generations_per_s": round(len(jobs) / wall, 1),
        "cpu_ms_per_generation": round(cpu * 1000 / len(jobs), 3),
        "user_ms_per_generation": round((usage1.ru_utime - usage0.ru_utime) * 1000 / len(jobs), 3),
        "system_ms_per_generation": round((usage1.ru_stime - usage0.ru_stime) * 1000 / len(jobs), 3),
        "fsyncs_per_generation": round(fsyncs / len(jobs), 2),
        "group_syncs_per_generation": round(store.group_sync.rounds / len(jobs), 3),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="draft generations per run (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="generations in flight (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    parser.add_argument("--latency-ms", type=int, default=0, help="fake server latency (default 0)")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="runner-overhead-", dir=bench_root()) as tmp,
        fake_server("--latency-ms", str(args.latency_ms)) as url,
    ):
        _, jobs = make_jobs(Path(tmp) / "experiment", args.count)
        runs = []
        for n in range(args.runs):
            data_dir = Path(tmp) / f"run{n}"
            data_dir.mkdir()
            runs.append(anyio.run(run_once, url, data_dir, jobs, args.concurrency))
    result = {
        "benchmark": "runner_overhead",
        "generations": len(jobs),
        "concurrency": args.concurrency,
        "server_latency_ms": args.latency_ms,
        "median_generations_per_s": statistics.median(r["generations_per_s"] for r in runs),
        "median_cpu_ms_per_generation": statistics.median(r["cpu_ms_per_generation"] for r in runs),
        "median_user_ms_per_generation": statistics.median(r["user_ms_per_generation"] for r in runs),
        "median_system_ms_per_generation": statistics.median(r["system_ms_per_generation"] for r in runs),
        "target_cpu_ms_per_generation": 1.0,
        "runs": runs,
    }
    result["target_met"] = result["median_cpu_ms_per_generation"] < 1.0
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
