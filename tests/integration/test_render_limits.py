"""Runaway templates against the real service and CLI: they fail as render errors, nothing wedges."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio

from daydreamd.core.build import read_and_build
from daydreamd.core.config import load_settings
from daydreamd.core.jobs import Jobs
from daydreamd.core.trials import first_of_each_template
from tests.integration.daemon import Daemon, fast_config, make
from tests.integration.test_operations import ctl

SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
"""Ten billion empty iterations: no output, no call, nothing a check inside the render could see."""
LIMITS = "[render]\ntimeout_s = 1.0\n"


def add_draft_template(raw: Path, template_id: str, text: str) -> None:
    table = raw / "draft_templates.csv"
    table.write_text(table.read_text() + f"{template_id},{template_id},A test template,,llm,True\n")
    (raw / "templates" / "draft" / f"{template_id}.txt").write_text(text)


def untried_concept(daemon: Daemon, template_id: str) -> str:
    """A concept the trial render of ``template_id`` does not see (it is in the other drafts)."""
    settings = load_settings(daemon.config, {})
    build = read_and_build(settings)
    assert build.cohort is not None
    jobs = Jobs(build.experiment, settings)
    trial = next(
        job
        for g in first_of_each_template(build.cohort.generations)
        if g.template_id == template_id and (job := jobs.job(g)) is not None
    )
    seen = {name for name, _ in trial.concepts}
    return next(c.name for c in build.experiment.active_concepts() if c.name not in seen)


def add_spinning_template(daemon: Daemon) -> None:
    """A draft template ``spin`` that passes its trial render and spins on two real drafts."""
    add_draft_template(daemon.raw, "spin", "Concepts: {% for c in concepts %}{{ c.name }} {% endfor %}")
    trigger = untried_concept(daemon, "spin")
    loop = "{% if c.name == '" + trigger + "' %}" + SPIN + "{% endif %}"
    text = "{% for c in concepts %}" + loop + "{{ c.name }} {% endfor %}"
    (daemon.raw / "templates" / "draft" / "spin.txt").write_text(text)


async def test_a_template_that_runs_away_on_some_inputs_fails_only_those(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The trial render passes, two real drafts spin: they fail as render_error naming the limit,
    the other ten drafts finish, status answers throughout, and SIGTERM ends the service promptly."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock", extra=LIMITS))
    add_draft_template(daemon.raw, "spin", "Concepts: {% for c in concepts %}{{ c.name }} {% endfor %}")
    trigger = untried_concept(daemon, "spin")
    text = (
        "{% for c in concepts %}{% if c.name == '"
        + trigger
        + "' %}"
        + SPIN
        + "{% endif %}{{ c.name }} {% endfor %}"
    )
    (daemon.raw / "templates" / "draft" / "spin.txt").write_text(text)
    await daemon.start()

    await ctl(daemon, "approve", "draft")
    slowest = 0.0
    deadline = time.monotonic() + 60
    status: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        asked = time.monotonic()
        status = await daemon.status()
        slowest = max(slowest, time.monotonic() - asked)
        if status and status["stages"]["draft"]["done"] + status["stages"]["draft"]["failed"] == 12:
            break
        await anyio.sleep(0.05)  # the next poll (a deadline bounds the loop)
    assert status is not None
    assert (status["stages"]["draft"]["done"], status["stages"]["draft"]["failed"]) == (10, 2)
    assert status["failures"]["draft"] == {"render_error": 2}
    assert slowest < 2.0, f"status took {slowest:.2f} s while templates spun"
    failed = await daemon.get("/v1/generations", stage="draft", state="failed")
    text = json.dumps(failed)
    assert "render.timeout_s" in text or "went past a render limit" in text
    assert "draft/spin" in text

    asked = time.monotonic()
    assert await daemon.stop() == 0
    assert time.monotonic() - asked < 10.0


async def test_a_template_past_a_limit_on_sample_inputs_is_refused_by_validate_and_the_service(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Edited in while the service runs: the rebuild reports both templates by file and keeps the
    cohort in force; ``validate`` says the same and exits 1, within seconds."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock", extra=LIMITS))
    first = await daemon.start()
    cohort_id = first["cohort_id"]

    add_draft_template(daemon.raw, "spin", SPIN)
    add_draft_template(daemon.raw, "huge", "{{ 'a' * 10**8 }}")

    def reported(s: dict[str, Any] | None) -> bool:
        files = {e.get("file") for e in (s or {}).get("errors", [])}
        return {"1_raw/templates/draft/spin.txt", "1_raw/templates/draft/huge.txt"} <= files

    status = await daemon.wait_for(reported, what="both templates reported", deadline_s=30)
    assert status["cohort_id"] == cohort_id
    messages = " ".join(e["message"] for e in status["errors"])
    assert "render.timeout_s" in messages and "render.max_bytes" in messages

    started = time.monotonic()
    ran = await ctl(daemon, "validate", code=1)
    assert time.monotonic() - started < 20
    assert "1_raw/templates/draft/spin.txt" in ran.out and "render.timeout_s" in ran.out
    assert "1_raw/templates/draft/huge.txt" in ran.out and "render.max_bytes" in ran.out


async def test_sigterm_while_templates_spin_ends_within_the_render_time_limit(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Shutdown waits for renders in progress, and a render lasts at most ``render.timeout_s``. Three
    rendering processes: the two spinning drafts hold two, the other drafts render in the third
    whatever order their renders are asked in."""
    extra = "[render]\ntimeout_s = 4.0\nworkers = 3\n"
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock", extra=extra))
    add_spinning_template(daemon)
    await daemon.start()
    await ctl(daemon, "approve", "draft")
    await daemon.wait_for(
        lambda s: (
            s is not None and s["stages"]["draft"]["done"] == 10 and s["stages"]["draft"]["running"] > 0
        ),
        what="the other drafts done while spin renders run",
    )
    asked = time.monotonic()
    assert await daemon.stop() == 0
    assert time.monotonic() - asked < 4.0 + 6.0
