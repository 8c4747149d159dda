"""Pins the Prometheus text that ``GET /metrics`` answers: families, samples, label escaping.

``render_metrics`` is pure, so a known snapshot gives known text. The exposition format (0.0.4)
rules checked here: every family is announced by ``# HELP`` then ``# TYPE`` before its samples,
names carry the ``daydreamd_`` prefix, label values escape backslash, double quote and newline,
and the text ends with a newline.
"""

from __future__ import annotations

import re

from daydreamd.daemon.metrics import MetricsSnapshot, render_metrics

SAMPLE = re.compile(r'^(daydreamd_[a-z_]+)(\{(?:[a-z_]+="(?:[^"\\\n]|\\["\\n])*",?)*\})? (\S+)$')


def snapshot(**overrides: object) -> MetricsSnapshot:
    fields: dict[str, object] = {
        "generations": {
            "draft": {"pending": 0, "queued": 0, "running": 0, "done": 9, "failed": 0, "retired": 0},
            "essay": {"pending": 0, "queued": 4, "running": 2, "done": 12, "failed": 0, "retired": 0},
        },
        "calls": {("gemini_25_flash", "ok"): 21, ("gemini_25_flash", "rate_limit"): 3},
        "tokens": {("gemini_25_flash", "prompt"): 4200, ("gemini_25_flash", "completion"): 900},
        "cost_usd": {"gemini_25_flash": 0.5},
        "limits": {
            "gemini_25_flash": {
                "concurrency": 3,
                "max_concurrency": 4,
                "requests_per_minute": 60,
                "in_flight": 2,
            }
        },
        "endpoints": {
            "vllm-a": {
                "in_flight": 2,
                "concurrency": 8,
                "requests_last_minute": 40,
                "tokens_last_minute": 9000,
            }
        },
        "in_flight": 2,
        "rebuilds": 3,
        "rebuild_seconds_sum": 0.25,
        "last_rebuild_seconds": 0.125,
        "raw_errors": 1,
        "uptime_s": 12.5,
    }
    fields.update(overrides)
    return MetricsSnapshot(**fields)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, str]:
    """``name{labels}`` -> value for every sample line."""
    found = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = value
    return found


def test_every_line_is_a_comment_or_a_well_formed_sample() -> None:
    text = render_metrics(snapshot())
    assert text.endswith("\n") and not text.endswith("\n\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) daydreamd_[a-z_]+ \S", line), line
        else:
            match = SAMPLE.match(line)
            assert match, line
            float(match.group(3))  # the value is a number


def test_help_then_type_before_the_samples_of_each_family() -> None:
    lines = render_metrics(snapshot()).splitlines()
    families: dict[str, str] = {}
    current = None
    for index, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[index + 1].startswith(f"# TYPE {name} "), (line, lines[index + 1])
            assert name not in families, f"{name} announced twice"
            families[name] = lines[index + 1].split()[3]
            current = name
        elif not line.startswith("#"):
            assert current is not None and line.split("{")[0].split(" ")[0] == current, line
    assert families == {
        "daydreamd_generations": "gauge",
        "daydreamd_queue_depth": "gauge",
        "daydreamd_calls_total": "counter",
        "daydreamd_tokens_total": "counter",
        "daydreamd_cost_usd_total": "counter",
        "daydreamd_model_concurrency": "gauge",
        "daydreamd_model_max_concurrency": "gauge",
        "daydreamd_model_requests_per_minute": "gauge",
        "daydreamd_model_in_flight": "gauge",
        "daydreamd_endpoint_in_flight": "gauge",
        "daydreamd_endpoint_concurrency": "gauge",
        "daydreamd_endpoint_requests_last_minute": "gauge",
        "daydreamd_endpoint_tokens_last_minute": "gauge",
        "daydreamd_in_flight": "gauge",
        "daydreamd_rebuilds_total": "counter",
        "daydreamd_rebuild_seconds_sum": "counter",
        "daydreamd_last_rebuild_seconds": "gauge",
        "daydreamd_raw_errors": "gauge",
        "daydreamd_uptime_seconds": "gauge",
    }


def test_sample_values_of_a_known_snapshot() -> None:
    found = samples(render_metrics(snapshot()))
    assert found['daydreamd_generations{stage="draft",state="done"}'] == "9"
    assert found['daydreamd_generations{stage="essay",state="queued"}'] == "4"
    assert found['daydreamd_queue_depth{stage="draft"}'] == "0"
    assert found['daydreamd_queue_depth{stage="essay"}'] == "4"
    assert found['daydreamd_calls_total{model="gemini_25_flash",outcome="ok"}'] == "21"
    assert found['daydreamd_calls_total{model="gemini_25_flash",outcome="rate_limit"}'] == "3"
    assert found['daydreamd_tokens_total{model="gemini_25_flash",kind="prompt"}'] == "4200"
    assert found['daydreamd_cost_usd_total{model="gemini_25_flash"}'] == "0.5"
    assert found['daydreamd_model_concurrency{model="gemini_25_flash"}'] == "3"
    assert found['daydreamd_model_max_concurrency{model="gemini_25_flash"}'] == "4"
    assert found['daydreamd_model_requests_per_minute{model="gemini_25_flash"}'] == "60"
    assert found['daydreamd_model_in_flight{model="gemini_25_flash"}'] == "2"
    assert found['daydreamd_endpoint_in_flight{endpoint="vllm-a"}'] == "2"
    assert found['daydreamd_endpoint_concurrency{endpoint="vllm-a"}'] == "8"
    assert found['daydreamd_endpoint_requests_last_minute{endpoint="vllm-a"}'] == "40"
    assert found['daydreamd_endpoint_tokens_last_minute{endpoint="vllm-a"}'] == "9000"
    assert found["daydreamd_in_flight"] == "2"
    assert found["daydreamd_rebuilds_total"] == "3"
    assert found["daydreamd_rebuild_seconds_sum"] == "0.25"
    assert found["daydreamd_last_rebuild_seconds"] == "0.125"
    assert found["daydreamd_raw_errors"] == "1"
    assert found["daydreamd_uptime_seconds"] == "12.5"
    assert len(found) == 12 + 2 + 2 + 2 + 1 + 4 + 4 + 6  # 2 stages x 6 states, ...: nothing else


def test_generations_are_sorted_by_stage_then_state() -> None:
    lines = [
        line for line in render_metrics(snapshot()).splitlines() if line.startswith("daydreamd_generations{")
    ]
    keys = [re.findall(r'"([^"]*)"', line) for line in lines]
    assert keys == sorted(keys)
    assert keys[0] == ["draft", "done"]


def test_label_values_escape_backslash_quote_and_newline() -> None:
    odd = 'a\\b"c\nd'
    text = render_metrics(
        snapshot(
            generations={},
            calls={(odd, "ok"): 1},
            tokens={},
            cost_usd={odd: 0.25},
            limits={odd: {"concurrency": 1}},
        )
    )
    assert 'daydreamd_calls_total{model="a\\\\b\\"c\\nd",outcome="ok"} 1' in text.splitlines()
    assert 'daydreamd_cost_usd_total{model="a\\\\b\\"c\\nd"} 0.25' in text.splitlines()
    # Missing limit keys are reported as 0 rather than left out.
    assert 'daydreamd_model_in_flight{model="a\\\\b\\"c\\nd"} 0' in text.splitlines()
    for line in text.splitlines():  # an escaped newline never splits a sample over two lines
        assert line.startswith(("#", "daydreamd_")), line


def test_an_idle_service_still_announces_every_family() -> None:
    text = render_metrics(MetricsSnapshot(generations={}))
    assert text.count("# HELP ") == text.count("# TYPE ") == 19
    found = samples(text)
    assert found == {
        "daydreamd_in_flight": "0",
        "daydreamd_rebuilds_total": "0",
        "daydreamd_rebuild_seconds_sum": "0.0",
        "daydreamd_last_rebuild_seconds": "0.0",
        "daydreamd_raw_errors": "0",
        "daydreamd_uptime_seconds": "0.0",
    }


def test_integers_stay_integers_and_floats_keep_their_precision() -> None:
    found = samples(render_metrics(snapshot(cost_usd={"m": 1e-7}, uptime_s=3.0)))
    assert found['daydreamd_cost_usd_total{model="m"}'] == "1e-07"
    assert float(found['daydreamd_cost_usd_total{model="m"}']) == 1e-7
    assert found["daydreamd_uptime_seconds"] == "3.0"
    assert found['daydreamd_generations{stage="essay",state="done"}'] == "12"
