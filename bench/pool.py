"""Does the worker pool use the slots and request budgets it is given, and stay under the server's limits?

Each scenario runs a real daemon process against the fake LLM server (``tests/fakellm.py``) in its
own process, on a drafts-only experiment (one draft template, k=2) with just enough concepts for
the drafts asked for; approving fewer drafts than asked is an error, not a smaller run. Latency
``L`` is the fake server's fixed answer time; ``S`` is the pool's concurrency (its slots).

* ``concurrency``: ``--count`` drafts (default 3,200) of one model, S=16, L=100 ms, no RPM limit
  anywhere. Ideal throughput ``S / L`` = 160/s; ``ratio`` = achieved / ideal (target >= 0.95).
* ``wide``: the same with S=64 and L=200 ms: ideal 320/s, 7,000 drafts (about 22 s at the ideal).
* ``multimodel``: S=16, L=100 ms, six generation models. Five are limited to ``R`` = 30 requests
  per minute both by the server (``--model-rpm``, per the body's ``model``) and by the daemon
  (``[pool.models.gen_N] requests_per_minute = 30``), 90 drafts each; the sixth is unlimited
  (18,000 drafts). Every model may use all S slots. A limited model's best finishing time, with
  its budget in a sliding 60 s window spent in bursts at t = 0, 60 s, ...: ``k = ceil(n / R)``,
  ``b = n - (k - 1) R``, ``(k - 1) x 60 s + ceil(b / S) x L`` (90 drafts: 120.2 s). The unlimited
  model's: ``ceil(n / S) x L`` (112.5 s). All calls share the slots: ``ceil(total / S) x L``
  (115.4 s). ``ideal_s`` is the largest of these (120.2 s) and ``ratio`` = ``ideal_s / wall_s``
  (target >= 0.95). ``ceiling_per_s`` is the long-run rate, ``min(S / L, 5 x R / 60 + S / L)``
  = 160/s, for reference. Per model: the server's count of its calls answered 200 and 429, when
  its last call was answered (``finish_s``, from the approval) and ``ratio`` = its own best
  finishing time / ``finish_s``.
* ``rpm``: ``--count`` drafts (default 1,200) of one model, S=64, L=100 ms; the daemon's RPM
  budget equals the server's limit (``--rpm``, default 600), which binds. With a sliding 60 s
  window the first minute's budget can be spent at once, so ``k = ceil(n / rpm)`` minutes of
  budget take at best ``(k - 1) x 60 s`` plus ``ceil(b / S) x L`` for the last ``b``: ``ideal_s``, and
  ``ratio`` = ``ideal_s / wall_s`` (target >= 0.95).

Measured in every scenario: ``wall_s`` from just before the first approval to the first status
poll that shows every approved draft done or failed (polls every 0.1 s; the daemon refreshes its
counts every 0.2 s, so this ends up to ~0.3 s late: ``last_answer_s``, when the server answered
its last call, bounds it from below); ``throughput_per_s`` = drafts done / ``wall_s``. A thread
polls ``GET /v1/status`` and the server's ``GET /_fake/stats`` every 0.1 s during the run and
reports the mean and median over its samples (time-uniform, so the mean is a time average) of:
``slots_busy`` (the status document's ``in_flight``: generations holding a pool slot),
``calls_in_flight`` (the sum of the per-model ``in_flight``: calls the pool counts as in flight)
and ``server_in_progress`` (requests the server has received and not yet answered: the truth).
``responses_429`` is the server's own count (target 0); ``rate_limit_errors_seen_by_service``
is the daemon's ``recent_errors.rate_limit``; ``max_requests_in_60s`` the most requests the
server received in any sliding 60 s window (per model in ``multimodel``). ``cpu``: CPU time
(user + system) over the same span, per generation and in cores, of the service process (all its
threads, not its prompt-rendering children) and of the fake server: on a 2-core machine the two
share the cores, so these say whether the run was bound by CPU rather than by the scheduler.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/pool.py          # all four: about 6 min at the ideal, 7 today
    .venv/bin/python bench/pool.py --scenario concurrency --count 2400
    .venv/bin/python bench/pool.py --scenario rpm --rpm 600 --count 1500

It prints one JSON object on stdout, with the machine's load average before and after (exit 1
if a draft failed; exit 2, with nothing on stdout, if fewer drafts than asked could be approved).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.experiment import drafts_only, write_experiment
from bench.fake_server import fake_server
from bench.machine import machine
from bench.workdir import bench_root
from daydreamd.cli.client import ServiceClient, ServiceUnavailable
from tests.integration.daemon import Daemon, fast_config

WINDOW_S = 60.0
SAMPLE_PERIOD_S = 0.1
# The pool lines of tests/integration/daemon.py's fast_config, replaced by each scenario's own.
FAST_POOL_LINES = "concurrency = 8\nmodel_concurrency = 4\nrequests_per_minute = 6000\n"


class TooFewApproved(Exception):
    """The experiment had fewer drafts than the run asked for."""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One generation model of a scenario: ``gen_<index>`` in the synthetic llm_models.csv."""

    index: int
    drafts: int
    rpm: int = 0
    """Requests per minute, enforced by the server and configured in the daemon (0: unlimited)."""

    @property
    def model_id(self) -> str:
        return f"gen_{self.index}"

    @property
    def model(self) -> str:
        """The model string the daemon sends (``model`` in the request body)."""
        return f"vendor/gen-model-{self.index}"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    slots: int
    latency_ms: int
    models: tuple[ModelPlan, ...]
    server_rpm: int | None = None
    """A global server limit (the ``rpm`` scenario), besides the models' own."""

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000

    @property
    def total(self) -> int:
        return sum(m.drafts for m in self.models)

    def server_args(self) -> list[str]:
        args = ["--latency-ms", str(self.latency_ms)]
        if self.server_rpm is not None:
            args += ["--rpm", str(self.server_rpm)]
        for m in self.models:
            if m.rpm and self.server_rpm is None:
                args += ["--model-rpm", f"{m.model}={m.rpm}"]
        return args

    def config(self, url: str) -> str:
        text = fast_config(url)
        if FAST_POOL_LINES not in text:
            raise RuntimeError("tests/integration/daemon.py's fast_config changed: update bench/pool.py")
        pool = f"concurrency = {self.slots}\nmodel_concurrency = {self.slots}\nrequests_per_minute = 0\n"
        text = text.replace(FAST_POOL_LINES, pool)
        for m in self.models:
            text += f"[pool.models.{m.model_id}]\nrequests_per_minute = {m.rpm}\n"
        return text


# ---- the ideal ---------------------------------------------------------------------------------


def model_best_finish_s(plan: ModelPlan, slots: int, latency_s: float) -> float:
    """When ``plan``'s last call could end at best, with all ``slots`` to itself.

    A limited model spends its budget in bursts at t = 0, 60 s, ...: its last ``b`` calls start at
    ``(k - 1) x 60 s`` and take ``ceil(b / slots)`` latencies.
    """
    if not plan.rpm:
        return math.ceil(plan.drafts / slots) * latency_s
    minutes = math.ceil(plan.drafts / plan.rpm)
    last_burst = plan.drafts - (minutes - 1) * plan.rpm
    return (minutes - 1) * WINDOW_S + math.ceil(last_burst / slots) * latency_s


def ideal_s(scenario: Scenario) -> float:
    """The best possible wall time: the latest model's best finish, or the slots' if they bind."""
    slots, latency = scenario.slots, scenario.latency_s
    by_slots = math.ceil(scenario.total / slots) * latency
    if scenario.server_rpm is not None:  # one global budget (the rpm scenario)
        (plan,) = scenario.models
        return max(
            by_slots,
            model_best_finish_s(ModelPlan(plan.index, plan.drafts, scenario.server_rpm), slots, latency),
        )
    return max([by_slots, *(model_best_finish_s(m, slots, latency) for m in scenario.models)])


# ---- sampling ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sampler:
    """Polls the daemon's status and the server's stats every ``SAMPLE_PERIOD_S`` in a thread.

    Stops at the first status showing ``expected`` drafts done or failed with none queued or
    running; ``settled_at`` is when that answer arrived (``time.monotonic``).
    """

    client: ServiceClient
    stats_url: str
    expected: int
    slots_busy: list[int] = field(default_factory=list)
    calls_in_flight: list[int] = field(default_factory=list)
    server_in_progress: list[int] = field(default_factory=list)
    model_in_progress: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    settled_at: float | None = None
    last_status: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self._sample()
                if self.settled_at is not None:
                    return
                self.stop.wait(max(0.0, started + SAMPLE_PERIOD_S - time.monotonic()))
        finally:
            self.done.set()

    def _sample(self) -> None:
        try:
            status = self.client.get("/v1/status")
            answered = time.monotonic()
            server = server_stats(self.stats_url)
        except (ServiceUnavailable, OSError) as error:
            self.errors.append(str(error))
            return
        self.last_status = status
        self.slots_busy.append(int(status.get("in_flight") or 0))
        models = status.get("models") or {}
        self.calls_in_flight.append(sum(int(m.get("in_flight") or 0) for m in models.values()))
        self.server_in_progress.append(int(server["in_progress"]))
        for model, info in server["models"].items():
            self.model_in_progress.setdefault(model, []).append(int(info["in_progress"]))
        draft = status["stages"]["draft"]
        if (
            draft["queued"] == 0
            and draft["running"] == 0
            and draft["done"] + draft["failed"] >= self.expected
        ):
            self.settled_at = answered


def server_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.load(response)
        return body


def distribution(values: list[int], of: int | None = None) -> dict[str, Any]:
    if not values:
        return {"samples": 0}
    result: dict[str, Any] = {
        "mean": round(statistics.fmean(values), 2),
        "p50": statistics.median(values),
        "max": max(values),
        "samples": len(values),
    }
    if of:
        result["mean_share_of_slots"] = round(statistics.fmean(values) / of, 3)
    return result


# ---- one run -----------------------------------------------------------------------------------


async def run_scenario(scenario: Scenario, url: str) -> dict[str, Any]:
    """Approve each model's drafts, poll until they settle, and compare with the ideal."""
    stats_url = url.removesuffix("/v1") + "/_fake/stats"
    root = Path(tempfile.mkdtemp(prefix="dd-pool-", dir=bench_root()))
    try:
        most = max(m.drafts for m in scenario.models)
        write_experiment(root / "data" / "1_raw", drafts_only(most, generation_models=len(scenario.models)))
        daemon = Daemon(root, scenario.config(url))
        try:
            await daemon.start(deadline_s=600)
            before = await anyio.to_thread.run_sync(server_stats, stats_url)
            if before["requests"]:
                raise RuntimeError(f"the fake server had {before['requests']} requests before the run")
            sampler = Sampler(ServiceClient(daemon.socket, timeout=30.0), stats_url, scenario.total)
            assert daemon.process is not None
            cpu_before = process_cpu_s(daemon.process.pid), before["cpu_s"]
            t0 = time.monotonic()
            for plan in scenario.models:
                matched = (await daemon.approve("draft", llm_model_id=plan.model_id, limit=plan.drafts))[
                    "matched"
                ]
                if matched != plan.drafts:
                    raise TooFewApproved(
                        f"{scenario.name}: asked for {plan.drafts} drafts of {plan.model_id}, "
                        f"only {matched} could be approved"
                    )
            thread = threading.Thread(target=sampler.run, name="sampler", daemon=True)
            thread.start()
            finished = await anyio.to_thread.run_sync(lambda: sampler.done.wait(7200))
            sampler.stop.set()
            if not finished or sampler.settled_at is None:
                raise RuntimeError(f"{scenario.name}: the drafts did not settle\n{daemon.log_tail()}")
            daemon_cpu = process_cpu_s(daemon.process.pid) - cpu_before[0]
            asked = time.monotonic()
            server = await anyio.to_thread.run_sync(server_stats, stats_url)
            cpu = {"service": daemon_cpu, "server": server["cpu_s"] - cpu_before[1]}
            server_offset = server["now"] - (asked + time.monotonic()) / 2  # server clock - ours
            await daemon.stop()
        finally:
            daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(scenario, sampler, server, server_offset, t0, cpu)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(
    scenario: Scenario,
    sampler: Sampler,
    server: dict[str, Any],
    server_offset: float,
    t0: float,
    cpu: dict[str, float],
) -> dict[str, Any]:
    assert sampler.settled_at is not None
    wall = sampler.settled_at - t0
    status = sampler.last_status
    draft = status["stages"]["draft"]
    slots, latency = scenario.slots, scenario.latency_s

    def since_start(server_time: float | None) -> float | None:
        return None if server_time is None else round(server_time - server_offset - t0, 2)

    last_ok = max((info["last_ok_at"] or 0.0 for info in server["models"].values()), default=None)
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "approved": scenario.total,
        "done": draft["done"],
        "failed": draft["failed"],
        "slots": slots,
        "latency_ms": scenario.latency_ms,
        "wall_s": round(wall, 2),
        "last_answer_s": since_start(last_ok),
        "throughput_per_s": round(draft["done"] / wall, 2),
    }
    best = ideal_s(scenario)
    if scenario.name in ("concurrency", "wide"):
        result["ideal_per_s"] = round(slots / latency, 2)
        result["ratio"] = round(draft["done"] / wall / (slots / latency), 3)
    else:
        result["ideal_s"] = round(best, 2)
        result["ratio"] = round(best / wall, 3)
    if scenario.name == "multimodel":
        per_model = sum(
            min(m.rpm / WINDOW_S, slots / latency) if m.rpm else slots / latency for m in scenario.models
        )
        result["ceiling_per_s"] = round(min(slots / latency, per_model), 2)
    result["slots_busy"] = distribution(sampler.slots_busy, of=slots)
    result["calls_in_flight"] = distribution(sampler.calls_in_flight)
    result["server_in_progress"] = distribution(sampler.server_in_progress, of=slots)
    result["responses_429"] = server["rate_limited"]
    result["rate_limit_errors_seen_by_service"] = (status.get("recent_errors") or {}).get("rate_limit", 0)
    result["server_requests"] = server["requests"]
    result["max_requests_in_60s"] = server["max_in_window"]
    if scenario.name == "rpm":
        result["rpm_budget"] = scenario.server_rpm
    if scenario.name == "multimodel":
        models: dict[str, Any] = {}
        for plan in scenario.models:
            info = server["models"].get(plan.model, {})
            finish = since_start(info.get("last_ok_at"))
            own_best = model_best_finish_s(plan, slots, latency)
            models[plan.model_id] = {
                "rpm": plan.rpm or None,
                "approved": plan.drafts,
                "calls_ok": int(info.get("status_counts", {}).get("200", 0)),
                "responses_429": info.get("rate_limited", 0),
                "max_requests_in_60s": info.get("max_in_window", 0),
                "ceiling_per_s": round(plan.rpm / WINDOW_S if plan.rpm else slots / latency, 2),
                "best_finish_s": round(own_best, 2),
                "finish_s": finish,
                "ratio": round(own_best / finish, 3) if finish else None,
                "server_in_progress_mean": round(
                    statistics.fmean(sampler.model_in_progress.get(plan.model) or [0]), 2
                ),
            }
        result["models"] = models
    done = max(1, draft["done"] + draft["failed"])
    result["cpu"] = {
        "service_ms_per_generation": round(1000 * cpu["service"] / done, 3),
        "service_cores": round(cpu["service"] / wall, 2),
        "server_ms_per_generation": round(1000 * cpu["server"] / done, 3),
        "server_cores": round(cpu["server"] / wall, 2),
    }
    if sampler.errors:
        result["status_poll_errors"] = len(sampler.errors)
    return result


# ---- the scenarios -----------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    limited = tuple(ModelPlan(i, args.limited_drafts, rpm=30) for i in range(5))
    return {
        "concurrency": Scenario("concurrency", args.concurrency, 100, (ModelPlan(0, args.count or 3200),)),
        "wide": Scenario("wide", 64, 200, (ModelPlan(0, args.count or 7000),)),
        "multimodel": Scenario("multimodel", 16, 100, (*limited, ModelPlan(5, args.unlimited_drafts))),
        "rpm": Scenario(
            "rpm", 64, 100, (ModelPlan(0, args.count or 1200, rpm=args.rpm),), server_rpm=args.rpm
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", choices=["concurrency", "wide", "multimodel", "rpm", "all"], default="all"
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="drafts for concurrency, wide and rpm (default 3200, 7000 and 1200)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="slots for 'concurrency' (default 16)")
    parser.add_argument(
        "--rpm", type=int, default=600, help="RPM budget and server limit for 'rpm' (default 600)"
    )
    parser.add_argument(
        "--limited-drafts", type=int, default=90, help="drafts per limited model in 'multimodel' (default 90)"
    )
    parser.add_argument(
        "--unlimited-drafts", type=int, default=18000, help="drafts of the unlimited model in 'multimodel'"
    )
    args = parser.parse_args(argv)
    chosen = scenarios(args)
    names = list(chosen) if args.scenario == "all" else [args.scenario]
    results = []
    load_before = os.getloadavg()[0]
    try:
        for name in names:
            scenario = chosen[name]
            with fake_server(*scenario.server_args()) as url:
                results.append(anyio.run(run_scenario, scenario, url))
    except TooFewApproved as error:
        print(f"bench/pool.py: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "benchmark": "pool",
                "targets": {"ratio": 0.95, "responses_429": 0},
                "machine": machine(load_before),
                "results": results,
            },
            indent=2,
        )
    )
    failed = [r["scenario"] for r in results if r["failed"]]
    if failed:
        print(f"bench/pool.py: drafts failed in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
