"""The API key never leaves the real daemon, whatever a gateway echoes back.

A leaky fake gateway (``FakeLlm(echo_key=True)``) puts the key it receives, whole and masked, in
every answer: the reply's ``id``, ``model``, ``provider``, ``native_finish_reason``, its content,
and every error message. Some calls fail for good (400, content filter), some fail once and are
retried (502 in a 200 body, 500, 429), the rest succeed. The key reaches the daemon the way the
shipped unit gives it: a systemd credential (``$CREDENTIALS_DIRECTORY``), which wins over the
harness's environment variable. Afterwards the bytes of everything the service wrote or answered
(the data folder, the SQLite state with its WAL, the log file and stdout, the socket API, the event
stream, ``daydreamctl`` output, the HTML report and the score CSVs) hold neither the key nor its
first 12 characters nor any longer piece of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from daydreamd.cli.client import ServiceUnavailable
from daydreamd.llm.apikey import CREDENTIALS_DIRECTORY, REDACTED
from tests.fakellm import FakeLlm, Fault, FaultKind, FaultSpec, RecordedRequest
from tests.integration.daemon import API_KEY, Daemon, ctl, fast_config

KEY = "sk-or-v1-" + hashlib.sha256(b"daydreamd: the key that must not leak").hexdigest()
NEEDLES = (KEY, KEY[:12], KEY[12:28], KEY[-16:])
"""The key, its first 12 characters (a masked key's visible part) and two 16-character pieces."""
JUDGE = "anthropic/claude-sonnet-4"  # the example's evaluation model: its calls may fail for good
STAGES = ("draft", "essay", "evaluation")


def leaks(data: bytes | str) -> list[str]:
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [needle for needle in NEEDLES if needle.encode() in blob]


class LeakyFaults:
    """Faults chosen by the prompt (the same generation meets the same fault every run):
    judges fail for good with a 400 or a content filter, any call may fail once and be retried."""

    def __init__(self) -> None:
        self.tries: Counter[str] = Counter()
        self.final: Counter[str] = Counter()

    def __call__(self, number: int, request: RecordedRequest) -> FaultSpec | None:
        self.tries[request.prompt] += 1
        pick = int(hashlib.sha256(request.prompt.encode()).hexdigest()[:8], 16) % 6
        if request.model == JUDGE and pick in (0, 1):
            self.final[request.prompt] += 1
            return Fault(kind=FaultKind.INVALID_REQUEST) if pick == 0 else FaultKind.CONTENT_FILTER
        if self.tries[request.prompt] > 1:
            return None
        once: dict[int, FaultSpec] = {
            2: Fault(kind=FaultKind.ERROR_BODY, code=502),
            3: FaultKind.SERVER_ERROR,
            4: FaultKind.RATE_LIMIT,
        }
        return once.get(pick)


def settled(status: dict[str, Any] | None) -> bool:
    """Drafts and essays all done, every evaluation done or failed, nothing left to run."""
    if status is None:
        return False
    stages = status["stages"]
    evaluations = stages["evaluation"]
    return (
        stages["draft"]["done"] == 9
        and stages["essay"]["done"] == 18
        and evaluations["done"] + evaluations["failed"] == 36
        and evaluations["queued"] == evaluations["running"] == 0
    )


def collect_events(daemon: Daemon, events: list[Any]) -> None:
    """Follow ``/v1/events`` until the service closes the stream (it does when it stops)."""
    try:
        for event in daemon.client.stream("/v1/events"):
            events.append(event)
    except ServiceUnavailable:
        pass


async def api_answers(daemon: Daemon) -> list[Any]:
    """Everything the socket API says about the run: status, lists, each generation in full."""
    answers: list[Any] = [await daemon.get("/v1/status"), await daemon.get("/v1/limits")]
    for stage in STAGES:
        listed = await daemon.get("/v1/generations", stage=stage, limit=1000)
        answers.append(listed)
        for row in listed["generations"]:
            answers.append(await daemon.get(f"/v1/generations/{row['gen_id']}"))
    return answers


async def test_the_key_appears_nowhere_the_service_writes_or_answers(
    tmp_path: Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "DD_TEST_KEY").write_text(KEY + "\n", encoding="utf-8")
    (credentials / "DD_TEST_KEY").chmod(0o400)
    monkeypatch.setenv(CREDENTIALS_DIRECTORY, str(credentials))  # the harness still sets DD_TEST_KEY
    faults = LeakyFaults()
    events: list[Any] = []

    async with FakeLlm(echo_key=True, fault_fn=faults) as fake:
        (tmp_path / "run").mkdir()  # apart from the credential: everything under it is searched
        daemon = Daemon(tmp_path / "run", fast_config(fake.base_url))
        daemons.append(daemon)
        await daemon.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: anyio.to_thread.run_sync(collect_events, daemon, events, abandon_on_cancel=True)
            )
            try:
                await daemon.wait_for(lambda s: s is not None, what="the socket")
                await anyio.sleep(0.2)  # let the event stream connect before anything happens
                for stage in STAGES:
                    await daemon.approve(stage)
                status = await daemon.wait_for(settled, deadline_s=90.0, what="the run to settle")
                answers = await api_answers(daemon)
                failures = await daemon.get("/v1/generations", stage="evaluation", state="failed")
                failed = failures["generations"]
                some = [row["gen_id"] for row in failed[:2]]
                retried = [a["gen_id"] for a in answers if len(a.get("attempt_log") or ()) > 1]
                some += retried[:1]
                commands = [
                    ("status",),
                    ("status", "--json"),
                    ("logs",),
                    *(("show", gen_id) for gen_id in some),
                ]
                shown = [
                    await anyio.to_thread.run_sync(lambda args=args: ctl(daemon, *args)) for args in commands
                ]
                state = daemon.root / "state"
                live_state = {path.name: path.read_bytes() for path in state.iterdir() if path.is_file()}
            finally:
                assert await daemon.stop() == 0

    # The run was the one intended: the credential's key went out, echoes came back, calls failed.
    assert fake.requests and all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in fake.requests)
    assert API_KEY not in {r.headers.get("Authorization", "").removeprefix("Bearer ") for r in fake.requests}
    evaluations = status["stages"]["evaluation"]
    assert evaluations["failed"] == len(faults.final) > 0 and evaluations["done"] > 0
    assert Counter(r.status for r in fake.requests).keys() >= {200, 400, 429, 500}
    assert len(failed) == evaluations["failed"] and retried  # some calls were retried, then done

    # The report and the score tables, made after the run, from the state and from the files.
    reports = [
        await anyio.to_thread.run_sync(lambda args=args: ctl(daemon, *args))
        for args in (
            ("report", "--out", str(daemon.root / "reports" / "from-state.html")),
            ("report", "--from-files", "--out", str(daemon.root / "reports" / "from-files.html")),
            ("results", "--out", str(daemon.root / "reports" / "from-state")),
            ("results", "--from-files", "--out", str(daemon.root / "reports" / "from-files")),
        )
    ]
    assert all(result.returncode == 0 for result in reports), [r.stderr for r in reports]
    csvs = sorted((daemon.root / "reports").rglob("aggregated_scores.csv"))
    htmls = sorted((daemon.root / "reports").rglob("*.html"))
    assert len(csvs) == len(htmls) == 2
    assert all(REDACTED in path.read_text(encoding="utf-8") for path in csvs + htmls)  # the echoes, scrubbed

    # Nothing anywhere holds the key or a piece of it.
    found: dict[str, list[str]] = {}
    written = [path for path in daemon.root.rglob("*") if path.is_file()]
    assert len(written) > 100
    for path in written:
        if hits := leaks(path.read_bytes()):
            found[str(path.relative_to(daemon.root))] = hits
    for name, blob in live_state.items():
        if hits := leaks(blob):
            found[f"state/{name} (while running)"] = hits
    assert any(name.endswith("-wal") for name in live_state), sorted(live_state)
    for index, answer in enumerate(answers):
        if hits := leaks(repr(answer)):
            found[f"API answer {index}"] = hits
    if hits := leaks(repr(events)):
        found["/v1/events"] = hits
    for result in shown + reports:
        if hits := leaks(result.stdout + result.stderr):
            found[f"daydreamctl {result.args[4:]}"] = hits
    assert found == {}, found

    # ... and the echoes did arrive: scrubbed, not missing.
    metadata = [json.loads(path.read_text()) for path in daemon.data.glob("gens/*/*/metadata.json")]
    replies = [entry["reply"] for entry in metadata if entry.get("reply")]
    for field in ("generation_id", "served_model", "provider", "native_finish_reason"):
        assert replies and all(REDACTED in reply[field] for reply in replies), field
    assert REDACTED in "".join(path.read_text() for path in daemon.data.glob("gens/*/*/raw.txt"))
    attempt_logs = repr([answer.get("attempt_log") for answer in answers if isinstance(answer, dict)])
    assert REDACTED in attempt_logs
    assert len(events) > 10


def test_the_daemon_refuses_a_dotenv_others_can_read(tmp_path: Path) -> None:
    """An open ``.env`` stops the start with exit 2 and a message naming the file, its mode and the fix."""
    daemon = Daemon(tmp_path, fast_config("http://127.0.0.1:9/v1"))
    try:
        dotenv = tmp_path / ".env"
        dotenv.write_text(f"DD_TEST_KEY={KEY}\n", encoding="utf-8")
        dotenv.chmod(0o644)
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in {"DD_TEST_KEY", CREDENTIALS_DIRECTORY}
        }
        result = subprocess.run(
            [sys.executable, "-m", "daydreamd", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert f"chmod 600 {dotenv}" in result.stderr and "0644" in result.stderr
        assert not leaks(result.stdout + result.stderr)
        assert not daemon.socket.exists()
    finally:
        daemon.close()
