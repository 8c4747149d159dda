"""Operating a running daydreamd with daydreamctl: plan, approve (budget, plan hash), status, show,
watch, pause, resume, retry, limits, and ``GET /metrics``.

Each test starts a real daemon (a subprocess on a private copy of the example experiment) and
drives it with the real CLI, ``python -m daydreamd.cli.main --config <config> VERB ...``, run as a
subprocess, checking what it prints and its exit code. The LLM is the fake server
(``tests.fakellm``), which reports usage and cost like OpenRouter; :class:`GatedFake` adds a
gate that holds chosen requests in flight (so "while the pool is busy" is a fact, not a
timing), and a fixed cost per call (so budget arithmetic is exact).

The example cohort: 9 drafts (3 templates on gemini_25_flash), 18 essays (9 by polished-essay
on gemini_25_flash, 9 copies), 36 evaluations (2 judges' templates on sonnet_4). Waiting is
always on a condition with a deadline; the few "nothing happens for a while" checks poll for
longer than the pool's idle poll interval and fail on the first poll that sees a change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import pytest
import pytest_asyncio
from anyio.streams.buffered import BufferedByteReceiveStream

from daydreamd.daemon import pool
from tests.fakellm import FakeLlm, Fault, FaultKind, RecordedRequest, default_reply
from tests.integration.daemon import Daemon, fast_config

VERBS = ("plan", "approve", "status", "watch", "show", "pause", "resume", "retry", "limits")
QUIET_S = getattr(pool, "IDLE_POLL_S", 1.0) + 0.5
"""How long "nothing new starts" is watched: longer than the pool's idle poll."""
DRAFT_HEADINGS = {
    "bridge-sketch": "# Bridge Sketch",
    "contrast-map": "# Contrast Map",
    "rolling-idea": "# Rolling Idea",
}
ESSAY_HEADING = "# Polished Essay"


# -- the fake LLM, gated -------------------------------------------------------------------------


class GatedFake(FakeLlm):
    """The fake server, plus: requests for which ``hold(request)`` is true wait at :attr:`gate`
    (they are in flight for the daemon until the test opens it), and every successful reply can
    report the same ``cost_per_call``."""

    def __init__(
        self,
        *,
        hold: Callable[[RecordedRequest], bool] | None = None,
        cost_per_call: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hold = hold
        self.cost_per_call = cost_per_call
        self.gate = asyncio.Event()
        self.held = 0

    async def _answer(self, request: Any, record: RecordedRequest, fault: Fault | None) -> Any:
        if self.hold is not None and self.hold(record) and not self.gate.is_set():
            self.held += 1
            try:
                await self.gate.wait()
            finally:
                self.held -= 1
        return await super()._answer(request, record, fault)

    def _completion(self, record: RecordedRequest, text: str, **kwargs: Any) -> dict[str, Any]:
        body = super()._completion(record, text, **kwargs)
        if self.cost_per_call is not None:
            body["usage"]["cost"] = self.cost_per_call
        return body


def varied_reply(request: RecordedRequest) -> str:
    """The default reply (every parser accepts it) with 0 to 2 extra lines, chosen by the prompt,
    so reply sizes differ between generations and an output estimate is not trivially exact."""
    first, rest = default_reply(request).split("\n", 1)
    extra = int(hashlib.sha256(request.prompt.encode()).hexdigest()[20:22], 16) % 3
    filler = "".join(
        f"Aside {i}: the mechanism still holds when the order is reversed.\n" for i in range(extra)
    )
    return f"{first}\n{filler}{rest}"


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest_asyncio.fixture(name="gated")
async def _gated() -> AsyncIterator[Callable[..., GatedFake]]:
    """Make started GatedFake servers; each is opened and closed when the test ends."""
    fakes: list[GatedFake] = []

    def make(**kwargs: Any) -> GatedFake:
        fake = GatedFake(**kwargs)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.gate.set()  # nothing stays held while the server shuts down
        await fake.close()


async def start(daemons: list[Daemon], root: Path, config: str) -> Daemon:
    daemon = Daemon(root, config)
    daemons.append(daemon)
    await daemon.start()
    return daemon


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "120"}
    for name in ("DD_COHORT", "DAYDREAMD_CONFIG"):
        env.pop(name, None)
    return env


async def ctl(daemon: Daemon | None, *args: str, code: int = 0) -> Ran:
    """``daydreamctl [--config CONFIG] ARGS...`` as a real process; asserts the exit code."""
    command = [sys.executable, "-m", "daydreamd.cli.main"]
    if daemon is not None:
        command += ["--config", str(daemon.config)]
    command += args
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env())
    )
    ran = Ran(done.returncode, done.stdout, done.stderr)
    assert ran.code == code, f"daydreamctl {' '.join(args)} exited {ran.code}:\n{ran.out}\n{ran.err}"
    return ran


async def until(condition: Callable[[], bool], *, what: str, deadline_s: float = 20.0) -> None:
    """Wait for ``condition`` (about the fake or the files) with a deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


async def stays(daemon: Daemon, condition: Callable[[dict[str, Any]], bool], *, what: str) -> dict[str, Any]:
    """Assert ``condition`` holds at every status poll for QUIET_S seconds."""
    deadline = time.monotonic() + QUIET_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await daemon.status() or {}
        assert condition(status), f"{what} stopped holding: {status}"
        await anyio.sleep(0.05)
    return status


async def metrics(daemon: Daemon) -> str:
    """``GET /metrics`` over the Unix socket (text, not JSON, so not through ServiceClient)."""
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://daydreamd/metrics") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


def metric(text: str, sample: str) -> float:
    """The value of one sample line, e.g. ``daydreamd_generations{stage="draft",state="done"}``."""
    values = [line.rpartition(" ")[2] for line in text.splitlines() if line.rpartition(" ")[0] == sample]
    assert len(values) == 1, f"{sample} not exactly once in:\n{text}"
    return float(values[0])


def counts(status: dict[str, Any], stage: str) -> dict[str, int]:
    return status["stages"][stage]


def settled_stage(status: dict[str, Any], stage: str, *, done: int, queued: int, failed: int = 0) -> bool:
    """Nothing of ``stage`` running (so nothing in flight or finishing), with these counts."""
    got = counts(status, stage)
    return (got["done"], got["queued"], got["running"], got["failed"]) == (done, queued, 0, failed)


class LiveScreen:
    """What ``daydreamctl status --watch`` draws, as text without the terminal control codes."""

    ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.raw = b""
        self.code: int | None = None

    @property
    def text(self) -> str:
        return self.ANSI.sub("", self.raw.decode(errors="replace"))

    async def until(self, text: str, *, deadline_s: float = 20.0) -> None:
        assert self.process.stdout is not None
        with anyio.fail_after(deadline_s):
            while text not in self.text:
                self.raw += await self.process.stdout.receive()


@asynccontextmanager
async def live_status(daemon: Daemon) -> AsyncIterator[LiveScreen]:
    """``status --watch`` on a (forced) terminal for the block; Ctrl-C (SIGINT) at the end."""
    command = [sys.executable, "-m", "daydreamd.cli.main", "--config", str(daemon.config)]
    command += ["status", "--watch", "--interval", "0.2"]
    process = await anyio.open_process(command, env={**_env(), "FORCE_COLOR": "1", "TTY_INTERACTIVE": "1"})
    screen = LiveScreen(process)
    try:
        yield screen
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert process.stdout is not None
            async for chunk in process.stdout:  # read to the end: a full pipe would block its exit
                screen.raw += chunk
            screen.code = await process.wait()
        await process.aclose()


# -- every verb has --help -----------------------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
async def test_every_operating_verb_has_help(verb: str) -> None:
    ran = await ctl(None, verb, "--help")
    assert ran.out.startswith(f"Usage: daydreamctl {verb} ")
    assert "Examples:" in ran.out and "--help" in ran.out
    expected = {
        "approve": ("--budget-usd", "--plan", "--limit", "--json"),
        "plan": ("--template", "--model", "--limit", "--json"),
        "status": ("--watch", "--plain / --rich", "--json"),
        "retry": ("--kind", "--fresh", "--stage", "--json"),
        "limits": ("--model", "--concurrency", "--rpm", "--json"),
        "pause": ("--model", "--json"),
        "resume": ("--model", "--json"),
        "watch": ("--json",),
        "show": ("GEN_ID", "--json"),
    }[verb]
    for option in expected:
        assert option in ran.out, (verb, option)


# -- plan: estimates against what the run used; approve --plan ------------------------------------


async def test_plan_estimates_what_the_run_then_uses(
    tmp_path: Path, gated: Callable[..., GatedFake], daemons: list[Daemon]
) -> None:
    """Plans before and after observed calls; a stale --plan is refused; the estimate of the last 30
    evaluations is within 25% of the tokens the fake server then reported for them."""
    fake = gated(reply_builder=varied_reply)
    await fake.start()
    daemon = await start(daemons, tmp_path, fast_config(fake.base_url))

    # Nothing has run: outputs are bounded by max_tokens, and the cost is unknown, not free.
    text = (await ctl(daemon, "plan", "draft")).out
    assert ": 9 generation(s)" in text.splitlines()[0]
    assert "output tokens from: max_tokens (upper bound)" in text
    assert "total: unknown" in text and "no price for gemini_25_flash" in text
    draft_plan = (await ctl(daemon, "plan", "draft", "--json")).json()
    assert draft_plan["count"] == 9 and draft_plan["unpriced_models"] == ["gemini_25_flash"]
    assert draft_plan["total_usd"] is None
    for line in draft_plan["lines"]:
        assert line["count"] == 3 and line["input_source"] == "rendered"
        assert line["output_tokens"] == 3 * 16384 and line["usd"] is None
    assert f"daydreamctl approve draft --plan {draft_plan['plan']}" in text
    assert fake.request_count == 0  # planning calls nothing

    ran = await ctl(daemon, "approve", "draft", "--plan", draft_plan["plan"])
    assert ran.out.startswith("approved 9 pending draft generation(s) (approval ")

    # A plan goes stale when the pending work it covered changes: approve --plan is refused.
    essay_plan = (await ctl(daemon, "plan", "essay", "--json")).json()
    assert essay_plan["count"] == 18
    await ctl(daemon, "approve", "essay", "--template", "idea-as-essay")
    stale = await ctl(daemon, "approve", "essay", "--plan", essay_plan["plan"], code=1)
    assert f"plan {essay_plan['plan']} no longer matches" in stale.err
    assert "run daydreamctl plan again" in stale.err
    assert counts(await daemon.status() or {}, "essay")["pending"] == 9  # nothing was approved
    fresh = (await ctl(daemon, "plan", "essay", "--json")).json()
    assert fresh["count"] == 9 and fresh["plan"] != essay_plan["plan"]
    approved = (await ctl(daemon, "approve", "essay", "--plan", fresh["plan"], "--json")).json()
    assert approved["matched"] == 9
    await daemon.wait_stage("draft", done=9)
    await daemon.wait_stage("essay", done=18)
    assert fake.request_count == 18

    # GET /metrics after drafts and essays.
    text = await metrics(daemon)
    assert metric(text, 'daydreamd_generations{stage="draft",state="done"}') == 9
    assert metric(text, 'daydreamd_generations{stage="essay",state="done"}') == 18
    assert metric(text, 'daydreamd_generations{stage="evaluation",state="pending"}') == 36
    assert metric(text, 'daydreamd_calls_total{model="gemini_25_flash",outcome="ok"}') == 18
    prompt_tokens = sum(max(1, len(r.prompt) // 4) for r in fake.requests)
    assert metric(text, 'daydreamd_tokens_total{model="gemini_25_flash",kind="prompt"}') == prompt_tokens
    assert metric(text, 'daydreamd_cost_usd_total{model="gemini_25_flash"}') > 0
    assert metric(text, 'daydreamd_queue_depth{stage="essay"}') == 0

    # Observe a few evaluations of each template, then plan the rest from what they used.
    for template in ("novelty-judge", "rigor-judge"):
        await ctl(daemon, "approve", "evaluation", "--template", template, "--limit", "3")
    await daemon.wait_stage("evaluation", done=6)
    plan = (await ctl(daemon, "plan", "evaluation", "--json")).json()
    assert plan["count"] == 30 and plan["unpriced_models"] == []
    for line in plan["lines"]:
        assert line["count"] == 15 and line["blocked_on_parent"] == 0
        assert (line["input_source"], line["output_source"]) == ("rendered", "observed")
        assert line["usd"] is not None and line["usd"] > 0  # the observed cost per call
    assert plan["total_usd"] == pytest.approx(sum(line["usd"] for line in plan["lines"]), abs=1e-3)
    before = {row["gen_id"] for row in await done_rows(daemon, "evaluation")}
    approved = (await ctl(daemon, "approve", "evaluation", "--plan", plan["plan"], "--json")).json()
    assert approved["matched"] == 30
    await daemon.wait_stage("evaluation", done=36)

    planned = {r["gen_id"] for r in await done_rows(daemon, "evaluation")} - before
    assert len(planned) == 30
    used_in = used_out = 0
    used_usd = 0.0
    for gen_id in sorted(planned):
        row = await daemon.get(f"/v1/generations/{gen_id}")
        (attempt,) = row["attempt_log"]
        assert attempt["outcome"] == "ok"
        used_in += attempt["prompt_tokens"]
        used_out += attempt["completion_tokens"]
        used_usd += attempt["cost"]
    estimate = plan["stages"]["evaluation"]
    assert abs(estimate["input_tokens"] - used_in) / used_in <= 0.25, (estimate, used_in)
    assert abs(estimate["output_tokens"] - used_out) / used_out <= 0.25, (estimate, used_out)
    assert abs(plan["total_usd"] - used_usd) / used_usd <= 0.25, (plan["total_usd"], used_usd)

    # show: one generation, as text and JSON; an unknown id exits 1.
    gen_id = sorted(planned)[0]
    shown = (await ctl(daemon, "show", gen_id)).out
    assert "gen_id" in shown and gen_id in shown and "attempt log (1):" in shown
    assert any(line.split() == ["state", "done"] for line in shown.splitlines())
    as_json = (await ctl(daemon, "show", gen_id, "--json")).json()
    assert as_json["gen_id"] == gen_id and as_json["state"] == "done" and len(as_json["attempt_log"]) == 1
    missing = await ctl(daemon, "show", "v_0000000000000000", code=1)
    assert "no generation v_0000000000000000" in missing.err

    # status in its three forms, for the finished run.
    status = (await ctl(daemon, "status", "--json")).json()
    assert [counts(status, s)["done"] for s in ("draft", "essay", "evaluation")] == [9, 18, 36]
    plain = (await ctl(daemon, "status", "--plain")).out.splitlines()
    assert plain[0] == f"cohort {status['cohort_id']}"
    assert plain[4].split() == ["evaluation", "0", "0", "0", "36", "0", "0"]
    assert "━" not in "\n".join(plain)
    rich = (await ctl(daemon, "status", "--rich")).out
    bars = {line.split()[0]: line.split() for line in rich.splitlines()[2:5]}
    assert bars["draft"][1:3] == ["━" * 24, "9/9"]
    assert bars["essay"][1:3] == ["━" * 24, "18/18"]
    assert bars["evaluation"][1:3] == ["━" * 24, "36/36"]
    assert "sonnet_4" in rich and "gemini_25_flash" in rich
    assert await daemon.stop() == 0


async def done_rows(daemon: Daemon, stage: str) -> list[dict[str, Any]]:
    return (await daemon.get("/v1/generations", stage=stage, state="done", limit=1000))["generations"]


# -- budgets -------------------------------------------------------------------------------------


def calls_within(budget: float, per_call: float) -> int:
    """Calls a budget allows under the pool's rule: no new call once spent + (in flight + 1) x the
    average cost per call would pass the budget (one call at a time here, so in flight is 0)."""
    spent, calls = 0.0, 0
    while not (spent + per_call > budget or spent >= budget):
        spent += per_call
        calls += 1
    return calls


async def test_a_budget_stops_new_calls_at_its_limit(
    tmp_path: Path, gated: Callable[..., GatedFake], daemons: list[Daemon]
) -> None:
    """approve --budget-usd: calls stop where one more would pass the budget and the rest stay
    queued, across a restart too; status shows spent of budget, exhausted; other approvals run."""
    per_call = 0.10
    fake = gated(cost_per_call=per_call)
    await fake.start()
    one_at_a_time = (
        "\n[pool.models.gemini_25_flash]\nconcurrency = 1\n[pool.models.sonnet_4]\nconcurrency = 1\n"
    )
    config = fast_config(fake.base_url, extra=one_at_a_time)
    daemon = await start(daemons, tmp_path, config)

    ran = await ctl(daemon, "approve", "draft", "--budget-usd", "0.35")
    assert ran.out.startswith("approved 9 pending draft generation(s) (approval ")
    assert ran.out.rstrip().endswith("budget $0.35)")
    approval = ran.out.split("(approval ")[1].split(",")[0]
    drafts = calls_within(0.35, per_call)
    assert drafts == 3  # 0.3 spent; a fourth call would make 0.4 > 0.35

    await daemon.wait_for(
        lambda s: (
            s is not None
            and s["pool"]["budgets"][approval]["exhausted"]
            and settled_stage(s, "draft", done=drafts, queued=9 - drafts)
        ),
        what="the budget to be reached",
    )
    await stays(
        daemon,
        lambda s: settled_stage(s, "draft", done=drafts, queued=9 - drafts),
        what="the rest staying queued",
    )
    assert fake.request_count == drafts

    status = (await ctl(daemon, "status", "--json")).json()
    assert status["pool"]["budgets"] == {approval: {"budget_usd": 0.35, "spent_usd": 0.3, "exhausted": True}}
    assert status["spent_usd"] == pytest.approx(0.3)
    assert status["models"]["gemini_25_flash"]["cost_usd"] == pytest.approx(0.3)
    rich = (await ctl(daemon, "status", "--rich")).out
    assert f"approval {approval}: spent $0.30 of $0.35 (budget reached: no new calls)" in rich.splitlines()
    assert "spent $0.30" in rich.splitlines()[0]

    # The budget belongs to its approval: essays approved without one run (for the done drafts).
    await ctl(daemon, "approve", "essay")
    await daemon.wait_for(
        lambda s: s is not None and settled_stage(s, "essay", done=2 * drafts, queued=18 - 2 * drafts),
        what="the essays of the finished drafts",
    )
    assert fake.request_count == drafts + drafts  # the copy essays call nothing

    # The spend is recomputed from the run state after a restart: still exhausted, nothing starts.
    assert await daemon.stop() == 0
    daemon = await start(daemons, tmp_path, config)
    status = await stays(
        daemon,
        lambda s: s["pool"]["budgets"][approval]["exhausted"] and counts(s, "draft")["queued"] == 9 - drafts,
        what="the budget staying reached after a restart",
    )
    assert status["pool"]["budgets"][approval]["spent_usd"] == pytest.approx(0.3)
    assert fake.request_count == 2 * drafts

    # To go on, revoke and approve again with a new budget: the rest of the drafts and their essays run.
    assert "revoked 6 queued" in (await ctl(daemon, "revoke", "draft")).out
    await ctl(daemon, "approve", "draft", "--budget-usd", "5")
    await daemon.wait_stage("draft", done=9)
    await daemon.wait_stage("essay", done=18)
    assert fake.request_count == 9 + 9

    # An evaluation budget (their completions wake the pool differently): 0.1 + 0.1 fits in 0.25, a
    # third call would not.
    ran = await ctl(
        daemon, "approve", "evaluation", "--template", "novelty-judge", "--budget-usd", "0.25", "--json"
    )
    evaluation_approval = str(ran.json()["approval_id"])
    evaluations = calls_within(0.25, per_call)
    assert evaluations == 2
    await daemon.wait_for(
        lambda s: (
            s is not None
            and s["pool"]["budgets"][evaluation_approval]["exhausted"]
            and settled_stage(s, "evaluation", done=evaluations, queued=18 - evaluations)
        ),
        what="the evaluation budget to be reached",
    )
    await stays(
        daemon,
        lambda s: settled_stage(s, "evaluation", done=evaluations, queued=18 - evaluations),
        what="the rest of the evaluations staying queued",
    )
    assert fake.request_count == 18 + evaluations
    assert await daemon.stop() == 0


# -- pause / resume while calls are in flight ------------------------------------------------------


async def test_pause_and_resume_while_calls_are_in_flight(
    tmp_path: Path, gated: Callable[..., GatedFake], daemons: list[Daemon]
) -> None:
    """pause: calls in flight finish, nothing new starts while work is queued; resume: it goes on.
    pause --model holds only that model's calls."""
    fake = gated(hold=lambda r: any(h in r.prompt for h in DRAFT_HEADINGS.values()))
    await fake.start()
    daemon = await start(daemons, tmp_path, fast_config(fake.base_url))  # 4 calls per model at once

    await ctl(daemon, "approve", "draft")
    await until(lambda: fake.held == 4, what="four drafts in flight at the fake")
    assert (await ctl(daemon, "pause")).out.strip() == "all work paused"
    assert "in flight: 4 (of 8, PAUSED)" in (await ctl(daemon, "status", "--plain")).out
    assert "all work is paused (daydreamctl resume)" in (await ctl(daemon, "status", "--rich")).out
    assert (await ctl(daemon, "pause", "--json")).json() == {"paused": True, "paused_models": []}

    fake.gate.set()  # the calls in flight finish normally
    await daemon.wait_for(
        lambda s: s is not None and settled_stage(s, "draft", done=4, queued=5),
        what="the four calls in flight to finish",
    )
    await stays(
        daemon,
        lambda s: (
            counts(s, "draft")["queued"] == 5 and counts(s, "draft")["running"] == 0 and s["pool"]["paused"]
        ),
        what="the pause",
    )
    assert fake.request_count == 4

    # resume, watched live by `status --watch`: the paused view, then the drafts finishing.
    async with live_status(daemon) as screen:
        await screen.until("all work is paused (daydreamctl resume)")
        await screen.until("4/9")
        assert (await ctl(daemon, "resume")).out.strip() == "claiming"
        await screen.until("9/9")
    assert screen.code == 0  # Ctrl-C ends the live view cleanly
    await daemon.wait_stage("draft", done=9)
    assert fake.request_count == 9

    # One model paused: copy essays run, the model's essays wait.
    ran = await ctl(daemon, "pause", "--model", "gemini_25_flash")
    assert ran.out.strip() == "claiming; paused models: gemini_25_flash"
    await ctl(daemon, "approve", "essay")
    status = await daemon.wait_for(
        lambda s: s is not None and settled_stage(s, "essay", done=9, queued=9),
        what="the copy essays",
    )
    assert counts(status, "essay")["queued"] == 9
    assert status["models"]["gemini_25_flash"]["paused"] is True
    assert status["pool"]["paused_models"] == ["gemini_25_flash"]
    plain = (await ctl(daemon, "status", "--plain")).out.splitlines()
    (gemini,) = [line for line in plain if line.startswith("  gemini_25_flash ")]
    assert gemini.endswith(", PAUSED") and "in flight 0 of limit 4 (max 4)" in gemini
    assert fake.request_count == 9
    ran = await ctl(daemon, "resume", "--model", "gemini_25_flash", "--json")
    assert ran.json() == {"paused": False, "paused_models": []}
    await daemon.wait_stage("essay", done=18)
    assert fake.request_count == 18
    assert await daemon.stop() == 0


async def test_pausing_an_unknown_model_is_refused(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = await start(daemons, tmp_path, fast_config(None, provider="mock"))
    ran = await ctl(daemon, "pause", "--model", "gemini-flash", code=1)
    assert "no model 'gemini-flash'" in ran.err


# -- retry by kind while the pool is busy ----------------------------------------------------------


async def test_retry_by_kind_while_the_pool_is_busy(
    tmp_path: Path, gated: Callable[..., GatedFake], daemons: list[Daemon]
) -> None:
    """Two kinds of failure; retry --kind auth re-queues only those (while essays are in flight),
    they finish once the fault is gone; the invalid_request ones stay failed."""
    auth_broken = True

    def faults(number: int, request: RecordedRequest) -> FaultKind | None:
        if auth_broken and DRAFT_HEADINGS["bridge-sketch"] in request.prompt:
            return FaultKind.AUTH
        if DRAFT_HEADINGS["contrast-map"] in request.prompt:
            return FaultKind.INVALID_REQUEST
        return None

    fake = gated(fault_fn=faults, hold=lambda r: ESSAY_HEADING in r.prompt)
    await fake.start()
    room = "\n[pool.models.gemini_25_flash]\nconcurrency = 8\n"
    daemon = await start(daemons, tmp_path, fast_config(fake.base_url, extra=room))

    await ctl(daemon, "approve", "draft")
    await ctl(daemon, "approve", "essay")
    await daemon.wait_for(
        lambda s: (
            s is not None
            and s["failures"].get("draft") == {"auth": 3, "invalid_request": 3}
            and settled_stage(s, "draft", done=3, queued=0, failed=6)
        ),
        what="the two kinds of failure",
    )
    await until(lambda: fake.held == 3, what="the essays of the good drafts to be in flight")
    failed_column = next(
        line for line in (await ctl(daemon, "status", "--rich")).out.splitlines() if line.startswith("draft ")
    )
    assert "auth 3, invalid_request 3" in failed_column

    auth_broken = False  # the key is fixed
    assert (await ctl(daemon, "retry", "--kind", "auth")).out.strip() == "retrying 3 failed generation(s)"
    status = await daemon.wait_for(
        lambda s: s is not None and counts(s, "draft")["done"] == 6 and counts(s, "draft")["running"] == 0,
        what="the retried drafts",
    )
    assert counts(status, "draft")["failed"] == 3 and counts(status, "draft")["queued"] == 0
    assert status["failures"]["draft"] == {"invalid_request": 3}
    assert counts(status, "essay")["running"] >= 3 and fake.held >= 3  # the pool was busy all along
    assert fake.calls_for(DRAFT_HEADINGS["bridge-sketch"]) == 6  # each failed once, then succeeded
    assert fake.calls_for(DRAFT_HEADINGS["contrast-map"]) == 3  # never retried
    failed = (await daemon.get("/v1/generations", stage="draft", state="failed"))["generations"]
    assert {row["error_kind"] for row in failed} == {"invalid_request"} and len(failed) == 3
    ran = await ctl(daemon, "retry", "--kind", "auth", "--json")
    assert ran.json()["retried"] == 0  # nothing of that kind is left
    bad_kind = await ctl(daemon, "retry", "--kind", "no_such_kind", code=2)
    assert "no_such_kind" in bad_kind.err

    fake.gate.set()
    status = await daemon.wait_for(
        lambda s: s is not None and settled_stage(s, "essay", done=12, queued=6),
        what="the essays of the six good drafts",
    )
    assert counts(status, "essay")["queued"] == 6  # the essays of the failed drafts wait for them
    assert await daemon.stop() == 0


async def test_retry_fresh_pays_for_a_new_reply_and_plain_retry_does_not(
    tmp_path: Path, gated: Callable[..., GatedFake], daemons: list[Daemon]
) -> None:
    """A reply cut off at max_tokens is saved; retry re-checks the saved reply (no call, fails
    again); retry --fresh calls the model again."""
    cut_off = True

    def faults(number: int, request: RecordedRequest) -> FaultKind | None:
        return FaultKind.TRUNCATED if cut_off else None

    fake = gated(fault_fn=faults)
    await fake.start()
    daemon = await start(daemons, tmp_path, fast_config(fake.base_url))
    await ctl(daemon, "approve", "draft", "--template", "rolling-idea")
    status = await daemon.wait_for(
        lambda s: s is not None and settled_stage(s, "draft", done=0, queued=0, failed=3),
        what="three cut-off drafts",
    )
    assert status["failures"]["draft"] == {"truncated": 3}
    assert len(list(daemon.data.glob("gens/draft/*/raw.txt"))) == 3  # paid for, so kept
    assert fake.request_count == 3

    cut_off = False
    assert (
        await ctl(daemon, "retry", "--kind", "truncated")
    ).out.strip() == "retrying 3 failed generation(s)"
    await daemon.wait_for(
        lambda s: (
            s is not None
            and settled_stage(s, "draft", done=0, queued=0, failed=3)
            and s["failures"].get("draft") == {"truncated": 3}
        ),
        what="the saved replies to be checked again",
    )
    assert fake.request_count == 3  # the saved replies were re-checked, not paid for again

    ran = await ctl(daemon, "retry", "--kind", "truncated", "--fresh", "--json")
    assert ran.json()["retried"] == 3
    await daemon.wait_stage("draft", done=3)
    assert fake.request_count == 6
    assert await daemon.stop() == 0


# -- watch, limits --------------------------------------------------------------------------------


class LineReader:
    """The lines a ``daydreamctl watch`` process prints, read with deadlines."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        self.stream = BufferedByteReceiveStream(process.stdout)
        self.lines: list[str] = []

    async def until(self, predicate: Callable[[str], bool], *, deadline_s: float = 20.0) -> str:
        with anyio.fail_after(deadline_s):
            while True:
                line = (await self.stream.receive_until(b"\n", 1 << 20)).decode()
                self.lines.append(line)
                if predicate(line):
                    return line

    async def until_event(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """For ``watch --json``: the next event (one JSON object a line) that matches."""
        return json.loads(await self.until(lambda line: predicate(json.loads(line))))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@asynccontextmanager
async def watching(daemon: Daemon, *args: str) -> AsyncIterator[LineReader]:
    """``daydreamctl watch ARGS`` running for the block (a real process, stopped at the end)."""
    command = [sys.executable, "-m", "daydreamd.cli.main", "--config", str(daemon.config), "watch", *args]
    process = await anyio.open_process(command, env=_env())
    try:
        yield LineReader(process)
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


async def test_watch_follows_a_run_and_limits_change_live(tmp_path: Path, daemons: list[Daemon]) -> None:
    """watch --json streams generation_started/done while a run goes on, and the control actions;
    limits shows and changes the live limits (limits --json reflects each change)."""
    daemon = await start(daemons, tmp_path, fast_config(None, provider="mock"))
    async with watching(daemon, "--json") as reader:
        assert (await reader.until_event(lambda e: True))["event"] == "subscribed"

        # A model that has not run yet: the change is shown at once.
        changed = await ctl(
            daemon, "limits", "--model", "sonnet_4", "--concurrency", "2", "--rpm", "30", "--json"
        )
        sonnet = changed.json()["models"]["sonnet_4"]
        assert (sonnet["concurrency"], sonnet["max_concurrency"], sonnet["requests_per_minute"]) == (2, 2, 30)
        event = await reader.until_event(lambda e: e["event"] == "limits_changed")
        assert (event["model"], event["concurrency"], event["requests_per_minute"]) == ("sonnet_4", 2, 30)

        await ctl(daemon, "approve", "draft")
        approved = await reader.until_event(lambda e: e["event"] == "approved")
        assert approved["matched"] == 9 and approved["stage"] == "draft"
        started = await reader.until_event(lambda e: e["event"] == "generation_started")
        assert started["stage"] == "draft" and started["gen_id"].startswith("d_")
        assert started["model"] == "gemini_25_flash"
        done = await reader.until_event(lambda e: e["event"] == "generation_done")
        assert done["stage"] == "draft" and done["error_type"] is None
        await reader.until_event(lambda e: sum(x["event"] == "generation_done" for x in reader.events) == 9)
        started_ids = {e["gen_id"] for e in reader.events if e["event"] == "generation_started"}
        done_ids = {e["gen_id"] for e in reader.events if e["event"] == "generation_done"}
        assert len(started_ids) == 9 and done_ids == started_ids
        assert all("at" in e for e in reader.events)

        # limits: see, change per model and for the pool, refuse what makes no sense.
        limits = (await ctl(daemon, "limits", "--json")).json()
        assert limits["concurrency"] == 8
        gemini = limits["models"]["gemini_25_flash"]
        assert (gemini["max_concurrency"], gemini["requests_per_minute"]) == (4, 6000)
        changed = await ctl(daemon, "limits", "--model", "gemini_25_flash", "--concurrency", "2", "--json")
        gemini = changed.json()["models"]["gemini_25_flash"]
        assert (gemini["concurrency"], gemini["max_concurrency"], gemini["requests_per_minute"]) == (
            2,
            2,
            6000,
        )
        event = await reader.until_event(lambda e: e["event"] == "limits_changed")
        assert (event["model"], event["concurrency"], event["requests_per_minute"]) == (
            "gemini_25_flash",
            2,
            None,
        )
        assert (await ctl(daemon, "limits", "--concurrency", "3")).out.splitlines()[0] == "pool concurrency 3"
        limits = (await ctl(daemon, "limits", "--json")).json()
        assert limits["concurrency"] == 3
        assert limits["models"]["gemini_25_flash"]["concurrency"] == 2
        assert limits["models"]["sonnet_4"]["requests_per_minute"] == 30
        text = (await ctl(daemon, "limits")).out.splitlines()
        assert "  gemini_25_flash: concurrency 2 of max 2, 6000 rpm, in flight 0" in text
        assert "  sonnet_4: concurrency 2 of max 2, 30 rpm, in flight 0" in text
        status = (await ctl(daemon, "status", "--json")).json()
        assert status["pool"]["concurrency"] == 3
        assert status["models"]["sonnet_4"]["requests_per_minute"] == 30
        assert "needs llm_model_id" in (await ctl(daemon, "limits", "--rpm", "10", code=1)).err
        refused = await ctl(daemon, "limits", "--model", "nope", "--concurrency", "1", code=1)
        assert "no model 'nope'" in refused.err
        await ctl(daemon, "limits", "--concurrency", "0", code=2)  # refused by the CLI itself

        # pause and resume are events too.
        await ctl(daemon, "pause")
        assert (await reader.until_event(lambda e: e["event"] == "paused"))["model"] is None
        await ctl(daemon, "resume")
        await reader.until_event(lambda e: e["event"] == "resumed")

    # Without --json: one readable line per event, heartbeats left out.
    async with watching(daemon) as reader:
        assert "subscribed" in await reader.until(lambda line: True)
        await ctl(daemon, "pause", "--model", "sonnet_4")
        line = await reader.until(lambda line: "paused" in line)
        assert line.split()[1:] == ["paused", "model=sonnet_4"]


async def test_limits_rpm_zero_means_unlimited(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = await start(daemons, tmp_path, fast_config(None, provider="mock"))  # pool rpm 6000
    changed = await ctl(daemon, "limits", "--model", "sonnet_4", "--rpm", "0", "--json")
    assert changed.json()["models"]["sonnet_4"]["requests_per_minute"] == 0


async def test_a_stop_after_a_watch_client_left_is_prompt(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = await start(daemons, tmp_path, fast_config(None, provider="mock"))
    async with watching(daemon, "--json") as reader:
        await reader.until(lambda line: True)
    started = time.monotonic()
    assert await daemon.stop() == 0
    assert time.monotonic() - started < 2.5
