"""What rendering in child processes costs the service, against rendering in its own process.

Templates render in killable child processes (``daydreamd.sandbox.render_process``) so a runaway
template cannot wedge the service. This measures the price of that isolation for an ordinary
draft template of the example experiment (two concepts of 800 characters): the service's own
CPU per render (``time.process_time`` in this process: JSON, the socket round trip) and the wall
time per render, against the same renders done in-process by ``core.templates.Renderer``; then
what a runaway template costs before it is refused (two renders killed at the time limit, then
refusals). Prints JSON; medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.machine import machine
from daydreamd.core.errors import TemplateLimitError
from daydreamd.core.templates import Renderer, RenderLimits
from daydreamd.sandbox.render_process import RenderProcess

TEMPLATE = (
    Path(__file__).resolve().parents[1] / "data" / "1_raw" / "templates" / "draft" / "bridge-sketch.txt"
)
VARIABLES = {
    "concepts": [{"name": "Serendipity", "content": "s" * 800}, {"name": "Incubation", "content": "i" * 800}]
}
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def per_render_ms(render: Any, count: int) -> tuple[float, float]:
    """(this process's CPU, wall) per render, in ms."""
    text = TEMPLATE.read_text()
    render(text, VARIABLES, template_id="t", stage="draft")  # compiled (and a child started) first
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        render(text, VARIABLES, template_id="t", stage="draft")
    return (time.process_time() - cpu) / count * 1000, (time.perf_counter() - wall) / count * 1000


def runaway_s(renderer: RenderProcess, renders: int) -> float:
    """Wall time for ``renders`` renders of a template that never finishes."""
    started = time.perf_counter()
    for _ in range(renders):
        with contextlib.suppress(TemplateLimitError):
            renderer.render(SPIN, {}, template_id="spin", stage="draft")
    return time.perf_counter() - started


def one_run(count: int) -> dict[str, float]:
    in_cpu, in_wall = per_render_ms(Renderer().render, count)
    with RenderProcess(RenderLimits(workers=1)) as renderer:
        child_cpu, child_wall = per_render_ms(renderer.render, count)
        spin = runaway_s(renderer, 100)
    return {
        "in_process_cpu_ms": in_cpu,
        "in_process_wall_ms": in_wall,
        "child_service_cpu_ms": child_cpu,
        "child_wall_ms": child_wall,
        "runaway_100_renders_s": spin,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    runs = [one_run(args.renders) for _ in range(args.runs)]
    medians = {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}
    result = {
        "benchmark": "render_process",
        "renders_per_run": args.renders,
        "median": medians,
        "service_cpu_added_ms": round(medians["child_service_cpu_ms"] - medians["in_process_cpu_ms"], 4),
        "runs": runs,
        "machine": machine(load_before),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
