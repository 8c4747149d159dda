"""``daydreamctl report``: the HTML file, checked as text and opened in headless Chromium.

The browser test drives Debian's ``chromium`` over the DevTools protocol on a pipe (stdlib
only): it loads the report from ``file://``, records every console message, uncaught
exception, failed load and network request, takes a screenshot, and reads the page's
structure. It is skipped, with the reason, when ``chromium`` is not installed
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from daydreamd.core.costs import CallGroup
from daydreamd.core.scores import ScoreRow, Scores
from daydreamd.report.html import ReportData, render_report
from daydreamd.storage.score_db import progress_from_db
from daydreamd.storage.scores import load_scores
from tests.shell.test_scores import Run, invoke, run_everything

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAYOUT_SCRIPT = """JSON.stringify({
    h2: [...document.querySelectorAll('h2')].map(h => h.textContent),
    svgs: [...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().width),
    height: document.documentElement.scrollHeight,
    title: document.title,
})"""


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One finished run (two judges, replicates, failures) shared by this module's tests."""
    return asyncio.run(run_everything(tmp_path_factory.mktemp("report-run")))


@pytest.fixture(scope="module", name="report")
def _report(run: Run) -> tuple[Path, dict[str, Any]]:
    """The report of the run, written by the verb to its default place."""
    code, stdout, stderr = invoke(run, "report", "--json")
    assert code == 0, stdout + stderr
    result = json.loads(stdout)
    return Path(result["report"]), result


# ---- the file --------------------------------------------------------------------------------


def test_report_is_written_under_the_cohort(run: Run, report: tuple[Path, dict[str, Any]]) -> None:
    """Default place data/cohorts/<id>/reports/report.html; counts match the run."""
    path, result = report
    assert path == run.data / "cohorts" / run.cohort.cohort_id / "reports" / "report.html"
    assert result["evaluations"] == 144 and result["scored"] + result["failed"] == 144
    assert result["bytes"] == path.stat().st_size


def test_report_is_self_contained_and_small(report: tuple[Path, dict[str, Any]]) -> None:
    """No scripts, no external stylesheets, images or fonts: it opens without a network."""
    text = report[0].read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(http" not in text
    assert text.count("<svg") == 5  # a heatmap per rubric (2), distributions, agreement, failures
    assert len(text.encode()) < 400_000


def test_report_shows_every_section(run: Run, report: tuple[Path, dict[str, Any]]) -> None:
    """Definition, progress, heatmap, distributions, agreement, top essays with text and links, failures."""
    text = report[0].read_text(encoding="utf-8")
    for title in (
        "Cohort",
        "Progress",
        "Mean score by draft template × generation model, per rubric",
        "Score distribution per judge",
        "Agreement",
        "Top essays",
        "What the calls cost",
        "Failures by kind",
    ):
        assert f"<h2>{title}" in text
    assert "<h3>novelty-judge <span class='muted'>(0-10)</span></h3>" in text
    assert "<h3>rigor-judge" in text
    assert any(re.fullmatch(r"n=\d+", t) for t in _chart_texts(text)), "each heatmap cell shows its n"
    assert "<th>ICC(2,1)</th>" in text and "<td>rubrics</td>" in text
    assert run.cohort.cohort_id in text and "novelty-judge, rigor-judge" in text
    assert "parse_error" in text and "empty" in text
    links = re.findall(r"href='([^']+/parsed\.txt)'", text)
    assert len(links) == 15
    for link in links:
        assert (report[0].parent / link).resolve().is_file()  # relative links reach the essays
    assert "<details><summary>" in text and "<pre>" in text


def test_progress_counts_each_stage_of_the_cohort(run: Run) -> None:
    """Progress from the run state: every generation of the cohort, per stage and state."""
    progress = progress_from_db(run.db, run.data, run.cohort.cohort_id)
    assert list(progress) == ["draft", "essay", "evaluation"]
    assert progress["draft"] == {"total": 9, "done": 9}
    assert progress["evaluation"]["total"] == 144
    assert progress["evaluation"]["done"] + progress["evaluation"]["failed"] == 144


def test_report_from_files_matches(run: Run, tmp_path: Path) -> None:
    """--from-files makes the same report from the gens store (apart from the source line)."""
    out = tmp_path / "files.html"
    code, stdout, _ = invoke(run, "report", "--from-files", "--out", str(out), "--json")
    assert code == 0, stdout
    assert json.loads(stdout)["evaluations"] == 144
    assert "from the gens store (files)" in out.read_text(encoding="utf-8")


def test_heatmap_cells_keep_rubrics_apart_with_n_and_a_t_interval() -> None:
    """From the results fixture: nov's (dA, m1) cell holds E1's 8, 10, 6 (v1-v3); rig's holds E1's 9."""
    from daydreamd.core.breakdowns import t_quantile_975
    from daydreamd.report.html import heatmap_cells
    from tests.core.test_results import ROWS

    cells = heatmap_cells(Scores(list(ROWS)))
    assert sorted(cells) == ["nov", "rig"]
    nov = cells["nov"]["dA", "m1"]
    assert (nov.n, nov.mean) == (3, 8.0)
    half = t_quantile_975(2) * 2.0 / 3**0.5  # sd of 8, 10, 6 is 2
    assert nov.interval == (pytest.approx(8 - half), pytest.approx(8 + half))
    rig = cells["rig"]["dA", "m1"]
    assert (rig.n, rig.mean, rig.interval) == (1, 9.0, None)
    assert ("dB", "m1") not in cells["rig"]  # E2's rig evaluation failed: no cell


def test_the_cost_section_lists_each_group_then_each_stage_and_overall() -> None:
    groups = [
        CallGroup(
            stage="draft",
            template_id="t",
            llm_model_id="m",
            calls=3,
            ok_calls=2,
            generations=2,
            prompt_tokens=300,
            completion_tokens=90,
            cost_usd=0.5,
            priced_calls=3,
            latencies_s=(1.0, 3.0, 2.0),
        ),
        CallGroup(
            stage="evaluation",
            template_id="j",
            llm_model_id="m",
            calls=2,
            ok_calls=2,
            generations=2,
            cost_usd=0.25,
            priced_calls=1,
            latencies_s=(0.5, 0.5),
        ),
    ]
    page = render_report(
        ReportData(cohort_id="c", scores=Scores([]), source="sqlite", generated_at="t", costs=groups)
    )
    rows = re.findall(r"<tr(?: class='total')?><td>([^<]+)</td>((?:<td class='num'>[^<]*</td>)+)</tr>", page)
    labels = [label for label, _ in rows]
    assert labels == ["t / m", "draft: all", "j / m", "evaluation: all", "overall"]
    overall = re.findall(r"<td class='num'>([^<]*)</td>", rows[-1][1])
    assert overall == [
        "5",
        "1",
        "300",
        "90",
        "$0.7500 (lower bound)",
        "1.00 s",
    ]  # nearest-rank median of 5  # one call had no cost
    assert "No calls yet." in render_report(
        ReportData(cohort_id="c", scores=Scores([]), source="sqlite", generated_at="t", costs=[])
    )


def test_report_of_nothing_yet_renders_placeholders() -> None:
    """A cohort with no finished evaluation still gives a readable page, without charts."""
    page = render_report(
        ReportData(cohort_id="cohort_empty", scores=Scores([]), source="sqlite", generated_at="now")
    )
    assert "<svg" not in page
    assert "No scores yet." in page and "No failed evaluations." in page and "no manifest.json" in page


def test_report_with_scores_only_from_db(run: Run) -> None:
    """render_report is pure: the same data gives the same page."""
    scores, _ = load_scores(
        data_dir=run.data, db_path=run.db, cohort_id=run.cohort.cohort_id, from_files=False
    )
    data = ReportData(cohort_id=run.cohort.cohort_id, scores=scores, source="sqlite", generated_at="t")
    assert render_report(data) == render_report(data)


# ---- labels with matplotlib's mathtext specials -------------------------------------------------

MATH_MODEL = "gen$x^2_a$"
"""Two ``$``: matplotlib would draw a formula instead of the id."""
MATH_JUDGE = "judge$^$"
"""Two ``$`` around invalid mathtext: matplotlib raised, and ``daydreamctl report`` crashed."""


def _math_row(gen_id: str, essay: str, judge: str, score: float | None) -> ScoreRow:
    return ScoreRow(
        draft_template="tpl$_{b}$",
        generation_model=MATH_MODEL,
        essay_template="s\\1",
        combo_id="c1",
        essay_gen_id=essay,
        evaluation_template="nov$el$",
        evaluation_model=judge,
        replicate=1,
        gen_id=gen_id,
        draft_gen_id="d" + essay,
        concept_ids=("a$b$",),
        score=score,
        error_kind="" if score is not None else "kind$^$",
        error_message="" if score is not None else "no $score$",
    )


def _chart_texts(page: str) -> list[str]:
    """The text of every ``<text>`` element of the inline SVG charts (XML entities decoded)."""
    import html

    return [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", page, flags=re.S)]


def test_chart_labels_with_mathtext_specials_are_shown_literally() -> None:
    """``$``, ``\\``, ``^``, ``_``, ``{`` in ids (allowed by the loader) are drawn as written."""
    judges = (MATH_JUDGE, "back\\slash$_$")
    rows = [
        _math_row(f"v{i}{j}", f"E{i}", judge, float(i + j))
        for i in range(3)
        for j, judge in enumerate(judges)
    ]
    rows.append(_math_row("vf", "E9", MATH_JUDGE, None))
    page = render_report(
        ReportData(cohort_id="cohort_math", scores=Scores(rows), source="sqlite", generated_at="t")
    )
    texts = _chart_texts(page)
    assert MATH_MODEL in texts and "tpl$_{b}$" in texts  # heatmap ticks
    assert any(t.startswith(f"{MATH_JUDGE} (n=") for t in texts)  # histogram titles
    assert any(t.startswith("back\\slash$_$ (n=") for t in texts)
    assert "kind$^$" in texts  # failures by kind
    assert not any("\\$" in t for t in texts)  # the escape itself is never shown


def test_report_verb_with_dollar_signs_in_model_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported crash, end to end: models named with ``$`` in llm_models.csv, a finished run,
    ``daydreamctl report`` writes the page and shows the ids as written."""
    from tests.shell import test_scores

    raw = tmp_path / "raw"
    shutil.copytree(test_scores.EXAMPLE_RAW, raw)
    models = raw / "llm_models.csv"
    models.write_text(
        models.read_text()
        .replace("gemini_25_flash,", f"{MATH_MODEL},")
        .replace("sonnet_4,", f"{MATH_JUDGE},")
    )
    monkeypatch.setattr(test_scores, "EXAMPLE_RAW", raw)
    run = asyncio.run(run_everything(tmp_path / "run"))

    code, stdout, stderr = invoke(run, "report", "--json")

    assert code == 0, stdout + stderr
    texts = _chart_texts(Path(json.loads(stdout)["report"]).read_text(encoding="utf-8"))
    assert MATH_MODEL in texts
    assert any(t.startswith(f"{MATH_JUDGE} (n=") for t in texts)


# ---- the browser -----------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: Path) -> None:
        self._log = profile.parent / "chromium.log"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Move the child's ends above 9, so that placing them at 3 and 4 cannot clobber them.
        to_browser_r, from_browser_w = (_high(fd) for fd in (to_browser_r, from_browser_w))

        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # The protocol wants the pipe ends as fds 3 and 4; bash puts them there and execs the browser
        # (bash, not sh: dash takes only one-digit fd numbers).
        wiring = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", wiring, binary, *flags],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(to_browser_r, from_browser_w),
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its answer (events arriving meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait for an event (already received or coming)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"chromium did not answer in time{self._log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe{self._log_tail()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _log_tail(self) -> str:
        lines = self._log.read_text(errors="replace").splitlines() if self._log.exists() else []
        useful = [line for line in lines if "dbus" not in line and "bus.cc" not in line][-10:]
        return "; its log ends:\n" + "\n".join(useful) if useful else ""

    def close(self) -> None:
        with suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _high(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


@contextmanager
def browser(profile: Path) -> Iterator[DevTools]:
    assert CHROMIUM is not None
    tools = DevTools(CHROMIUM, profile)
    try:
        yield tools
    finally:
        tools.close()


def problems(events: list[dict[str, Any]], page_url: str) -> list[str]:
    """Console errors and warnings, uncaught exceptions, failed loads, requests for anything not inline."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params.get('errorText')}")
        elif (
            method == "Network.requestWillBeSent"
            and params["request"]["url"] != page_url
            and not (
                params["request"]["url"].startswith("data:")  # inline (the colour bar's gradient)
            )
        ):
            found.append(f"request: {params['request']['url']}")
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Chromium opens the report with no console error, no failed load, no request; a screenshot is taken."""
    url = report[0].resolve().as_uri()
    with browser(tmp_path / "profile") as tools:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        tools.events.clear()
        tools.send("Page.navigate", {"url": url}, session=session)
        tools.wait_for("Page.loadEventFired")
        layout = tools.send(
            "Runtime.evaluate",
            {
                "expression": LAYOUT_SCRIPT,
                "returnByValue": True,
            },
            session=session,
        )
        shot = tools.send("Page.captureScreenshot", {"format": "png"}, session=session)
        found = problems(tools.events, url)
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert found == []
    page = json.loads(layout["result"]["value"])
    assert page["title"].startswith("daydreamd report: cohort_")
    assert page["h2"][:2] == ["Cohort", "Progress"] and len(page["h2"]) == 8
    assert len(page["svgs"]) == 5 and all(w > 200 for w in page["svgs"])
    assert page["height"] > 2000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_problem_detection_catches_a_broken_page(tmp_path: Path) -> None:
    """The browser check is not vacuous: a script error, console.error and a missing image are caught."""
    page = tmp_path / "bad.html"
    page.write_text("<p>x</p><img src='missing.png'><script>console.error('boom'); nope();</script>")
    url = page.as_uri()
    with browser(tmp_path / "profile") as tools:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": url}, session=session)
        tools.wait_for("Page.loadEventFired")
        found = problems(tools.events, url)
    text = "\n".join(found)
    assert "exception" in text and "console.error" in text and "missing.png" in text
