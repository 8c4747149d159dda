"""Prometheus text exposition for ``GET /metrics`` (pure: a snapshot in, text out).

Counters count since the service started (Prometheus handles restarts); gauges are read
from the run state and the pool at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from daydreamd.core.stages import State

PREFIX = "daydreamd"


@dataclass(slots=True, kw_only=True)
class MetricsSnapshot:
    """Everything one scrape reports."""

    generations: Mapping[str, Mapping[str, int]]
    """stage -> state -> count (``retired`` included)."""
    calls: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(model, outcome) -> attempts since start."""
    tokens: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(model, kind: prompt|completion|reasoning) -> tokens since start."""
    cost_usd: Mapping[str, float] = field(default_factory=dict)
    """model -> dollars since start (reported cost, else tokens x price)."""
    limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """model -> {concurrency, max_concurrency, requests_per_minute, in_flight}."""
    endpoints: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """endpoint -> {in_flight, concurrency, requests_last_minute, tokens_last_minute}."""
    in_flight: int = 0
    rebuilds: int = 0
    rebuild_seconds_sum: float = 0.0
    last_rebuild_seconds: float = 0.0
    raw_errors: int = 0
    uptime_s: float = 0.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    label_text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{PREFIX}_{name}{{{label_text}}} {number}" if label_text else f"{PREFIX}_{name} {number}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}", *samples]


def _gauges(
    label: str, by_name: Mapping[str, Mapping[str, float]], keys: Iterable[tuple[str, str]]
) -> list[str]:
    """One gauge family ``<label>_<key>`` per key, a sample per name (a model, an endpoint)."""
    lines: list[str] = []
    for key, help_text in keys:
        name = f"{label}_{key}"
        samples = (
            _sample(name, {label: item}, values.get(key, 0)) for item, values in sorted(by_name.items())
        )
        lines += _family(name, "gauge", help_text, samples)
    return lines


def render_metrics(s: MetricsSnapshot) -> str:
    """The text exposition format, version 0.0.4."""
    lines: list[str] = []
    lines += _family(
        "generations",
        "gauge",
        "Generations by stage and state.",
        (
            _sample("generations", {"stage": stage, "state": state}, n)
            for stage, states in sorted(s.generations.items())
            for state, n in sorted(states.items())
        ),
    )
    lines += _family(
        "queue_depth",
        "gauge",
        "Approved generations waiting (queued), by stage.",
        (
            _sample("queue_depth", {"stage": stage}, states.get(State.QUEUED, 0))
            for stage, states in sorted(s.generations.items())
        ),
    )
    lines += _family(
        "calls_total",
        "counter",
        "LLM attempts since start, by model and outcome.",
        (
            _sample("calls_total", {"model": model, "outcome": outcome}, n)
            for (model, outcome), n in sorted(s.calls.items())
        ),
    )
    lines += _family(
        "tokens_total",
        "counter",
        "Tokens since start, by model and kind.",
        (
            _sample("tokens_total", {"model": model, "kind": kind}, n)
            for (model, kind), n in sorted(s.tokens.items())
        ),
    )
    lines += _family(
        "cost_usd_total",
        "counter",
        "Dollars spent since start, by model.",
        (_sample("cost_usd_total", {"model": model}, float(v)) for model, v in sorted(s.cost_usd.items())),
    )
    lines += _gauges(
        "model",
        s.limits,
        (
            ("concurrency", "Current (adaptive) concurrency limit per model."),
            ("max_concurrency", "Configured concurrency ceiling per model."),
            ("requests_per_minute", "Requests-per-minute budget per model (0: unlimited)."),
            ("in_flight", "Calls in flight per model."),
        ),
    )
    lines += _gauges(
        "endpoint",
        s.endpoints,
        (
            ("in_flight", "Calls in flight per endpoint."),
            ("concurrency", "Current (adaptive) calls-at-once limit per endpoint (0: none of its own)."),
            ("requests_last_minute", "Requests sent to each endpoint in the last 61 s."),
            ("tokens_last_minute", "Tokens counted at each endpoint in the last 61 s."),
        ),
    )
    lines += _family(
        "in_flight", "gauge", "Generations in progress.", [_sample("in_flight", {}, s.in_flight)]
    )
    lines += _family(
        "rebuilds_total",
        "counter",
        "Cohort rebuilds applied since start.",
        [_sample("rebuilds_total", {}, s.rebuilds)],
    )
    lines += _family(
        "rebuild_seconds_sum",
        "counter",
        "Seconds spent in rebuilds since start.",
        [_sample("rebuild_seconds_sum", {}, float(s.rebuild_seconds_sum))],
    )
    lines += _family(
        "last_rebuild_seconds",
        "gauge",
        "Duration of the last rebuild.",
        [_sample("last_rebuild_seconds", {}, float(s.last_rebuild_seconds))],
    )
    lines += _family(
        "raw_errors", "gauge", "Errors in data/1_raw right now.", [_sample("raw_errors", {}, s.raw_errors)]
    )
    lines += _family(
        "uptime_seconds",
        "gauge",
        "Seconds since the service started.",
        [_sample("uptime_seconds", {}, float(s.uptime_s))],
    )
    return "\n".join(lines) + "\n"
