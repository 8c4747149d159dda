"""Rendering in child processes: real processes, real kills, real memory caps."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from daydreamd.core.errors import TemplateError, TemplateLimitError
from daydreamd.core.templates import Renderer, RenderLimits
from daydreamd.sandbox.render_process import RenderProcess, RenderUnavailableError

SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
CONCEPTS = [{"name": "Alpha", "content": "first"}, {"name": "Beta", "content": "second é"}]
DRAFT = "Concepts:\n{% for c in concepts %}- {{ c.name }}: {{ c.content }}\n{% endfor %}"


def render(renderer: RenderProcess, text: str, **variables: object) -> str:
    return renderer.render(text, variables, template_id="t", stage="draft")


def test_prompts_are_the_same_as_rendering_in_process() -> None:
    with RenderProcess() as renderer:
        for text, variables in [(DRAFT, {"concepts": CONCEPTS}), ("{{ x }}\n\n", {"x": "<b>"}), ("", {})]:
            expected = Renderer().render(text, variables, template_id="t", stage="draft")
            assert renderer.render(text, variables, template_id="t", stage="draft") == expected


def test_many_threads_share_the_children_and_get_their_own_answers() -> None:
    with RenderProcess(RenderLimits(workers=2)) as renderer, ThreadPoolExecutor(8) as threads:
        got = list(threads.map(lambda n: render(renderer, "{{ n }}-{{ n * 2 }}", n=n), range(400)))
        assert len(renderer.pids()) == 2
    assert got == [f"{n}-{n * 2}" for n in range(400)]


def test_a_runaway_loop_is_killed_at_the_time_limit_and_the_next_render_works() -> None:
    with RenderProcess(RenderLimits(timeout_s=0.5, workers=1)) as renderer:
        render(renderer, "warm")  # the child's start is not part of the render's time
        (before,) = renderer.pids()
        started = time.monotonic()
        with pytest.raises(TemplateLimitError) as info:
            render(renderer, SPIN)
        assert 0.5 <= time.monotonic() - started < 5.0
        assert "rendering took longer than 0.5 s (render.timeout_s)" in str(info.value)
        assert not Path(f"/proc/{before}").exists()  # killed and reaped
        assert render(renderer, "{{ 1 + 1 }}") == "2"
        assert renderer.pids() != [before]


def test_a_memory_bomb_fails_in_the_child_not_the_service() -> None:
    """A constant filter is evaluated while compiling; the child's address-space cap stops it."""
    with RenderProcess(RenderLimits(memory_mb=256, workers=1)) as renderer:
        with pytest.raises(TemplateLimitError) as info:
            render(renderer, '{{ "a" | center(2000000000) }}')
        assert "render.memory_mb" in str(info.value)
        assert render(renderer, "still {{ 'ok' }}") == "still ok"


def test_a_template_that_hits_limits_twice_is_refused_without_rendering() -> None:
    with RenderProcess(RenderLimits(timeout_s=0.3, workers=1)) as renderer:
        for _ in range(2):
            with pytest.raises(TemplateLimitError):
                render(renderer, SPIN)
        started = time.monotonic()
        with pytest.raises(TemplateLimitError) as info:
            render(renderer, SPIN)
        assert time.monotonic() - started < 0.2
        assert "went past a render limit 2 times" in str(info.value)
        fixed = "{% for i in range(3) %}{% endfor %}fixed"  # an edited template gets its own chances
        assert render(renderer, fixed) == "fixed"


def test_ordinary_errors_are_template_errors_and_do_not_count_as_strikes() -> None:
    with RenderProcess() as renderer:
        for _ in range(3):
            with pytest.raises(TemplateError) as info:
                render(renderer, "{{ missing }}")
            assert not isinstance(info.value, TemplateLimitError)
            assert "'missing' is undefined" in str(info.value)


def test_children_never_see_the_services_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template that escaped the sandbox would find no key in its process."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-render-child-must-not-see-this")
    with RenderProcess(RenderLimits(workers=1)) as renderer:
        render(renderer, "x")
        (pid,) = renderer.pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"render-child-must-not-see-this" not in environ
    assert b"PYTHONPATH=" in environ


def test_closing_stops_the_children_and_refuses_further_renders() -> None:
    renderer = RenderProcess(RenderLimits(workers=2))
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(lambda n: render(renderer, "{{ n }}", n=n), range(20)))
    pids = renderer.pids()
    assert pids
    renderer.close()
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(RenderUnavailableError):
        render(renderer, "x")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
