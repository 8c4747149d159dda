"""daydreamctl's live verbs against the real control server over a real socket, with a fake service.

The CLI runs in a worker thread (it is synchronous) while the server answers in the test's
event loop. The config names the socket relative to its own folder, as users write it.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import click
import pytest
from click.testing import CliRunner

from daydreamd.cli.live import register
from daydreamd.cli.main import cli as base_cli
from daydreamd.core.control import ApprovalRequest, ControlError
from tests.shell.test_server import GENERATION, STATUS, FakeControl, leave_stale_socket, serving


def live_cli() -> click.Group:
    """A copy of ``daydreamctl`` with the live verbs registered (the module's group is left alone)."""
    group = click.Group(
        name="daydreamctl",
        callback=base_cli.callback,
        params=list(base_cli.params),
        commands=dict(base_cli.commands),
        context_settings=base_cli.context_settings,
    )
    register(group)
    return group


@pytest.fixture(name="config")
def _config() -> Iterator[Path]:
    """A config.toml in a short /tmp folder whose paths.socket is ``run/s.sock`` beside it."""
    folder = Path(tempfile.mkdtemp(prefix="dd-", dir="/tmp"))
    try:
        (folder / "config.toml").write_text('[paths]\nsocket = "run/s.sock"\n')
        yield folder / "config.toml"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def socket_of(config: Path) -> Path:
    return config.parent / "run" / "s.sock"


async def run(config: Path, *args: str) -> tuple[int, str, str]:
    """``daydreamctl --config CONFIG ARGS...`` in a thread; (exit code, stdout, stderr)."""
    result = await asyncio.to_thread(CliRunner().invoke, live_cli(), ["--config", str(config), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def test_status_json_round_trip(config: Path) -> None:
    """status --json prints exactly what GET /v1/status answered."""
    async with serving(FakeControl(), socket_of(config)):
        code, out, _ = await run(config, "status", "--json")
    assert code == 0
    assert json.loads(out) == STATUS


async def test_status_text(config: Path) -> None:
    """The text view: cohort, one row per stage, in-flight, per-model limits, located problems."""
    async with serving(FakeControl(), socket_of(config)):
        code, out, _ = await run(config, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"cohort {STATUS['cohort_id']}"
    assert lines[1].split() == ["stage", "pending", "queued", "running", "done", "failed", "retired"]
    assert lines[3].split() == ["essay", "12", "4", "2", "0", "0", "3"]
    assert "in flight: 3 (of 8)" in lines
    assert "  openai/gpt-4o-mini  in flight 2 of limit 4 (max 8), 12/60 rpm, openrouter" in lines
    assert "  1_raw/essay_templates.csv:4: error: unknown parser 'nope'" in lines
    assert "  1_raw/draft_templates.csv: warning: no active rows" in lines


async def test_approve_sends_the_scope_and_the_user(config: Path) -> None:
    """approve STAGE --template --model --limit reaches the service with the OS user, and says how many."""
    control = FakeControl()
    async with serving(control, socket_of(config)):
        code, out, _ = await run(
            config, "approve", "essay", "--template", "t1", "--model", "m/1", "--limit", "5"
        )
    assert code == 0
    assert out == "approved 4 pending essay generation(s) (template t1, model m/1) (approval 7)\n"
    request = ApprovalRequest(
        stage="essay", template_id="t1", llm_model_id="m/1", limit=5, requested_by=getpass.getuser()
    )
    assert control.calls == [("approve", request)]


async def test_approve_json(config: Path) -> None:
    """approve --json prints the service's answer."""
    async with serving(FakeControl(), socket_of(config)):
        code, out, _ = await run(config, "approve", "draft", "--json")
    assert code == 0
    assert json.loads(out) == {"approval_id": 7, "matched": 4, "stage": "draft"}


async def test_approve_checks_its_arguments_before_calling(config: Path) -> None:
    """A bad stage or limit is a usage error (exit 2) and no request is sent."""
    control = FakeControl()
    async with serving(control, socket_of(config)):
        bad_stage, _, _ = await run(config, "approve", "essays")
        bad_limit, _, err = await run(config, "approve", "essay", "--limit", "0")
    assert (bad_stage, bad_limit) == (2, 2)
    assert "--limit" in err
    assert control.calls == []


async def test_revoke(config: Path) -> None:
    """revoke STAGE --model sends a revocation without a limit and says how many went back."""
    control = FakeControl()
    async with serving(control, socket_of(config)):
        code, out, _ = await run(config, "revoke", "evaluation", "--model", "m/1")
    assert code == 0
    assert out == "revoked 2 queued evaluation generation(s) (model m/1); they are pending again\n"
    request = ApprovalRequest(stage="evaluation", llm_model_id="m/1", requested_by=getpass.getuser())
    assert control.calls == [("revoke", request)]


async def test_show_text_and_json(config: Path) -> None:
    """show prints the generation's fields and its attempt log; --json the row itself."""
    async with serving(FakeControl(), socket_of(config)):
        code, out, _ = await run(config, "show", GENERATION["gen_id"])
        json_code, json_out, _ = await run(config, "show", GENERATION["gen_id"], "--json")
    assert (code, json_code) == (0, 0)
    assert out.splitlines()[0].split() == ["gen_id", GENERATION["gen_id"]]
    assert "error_kind     rate_limit" in out.splitlines()
    assert "attempt log (1):\n  attempt 1, outcome rate_limit, status 429\n" in out
    assert json.loads(json_out) == GENERATION


async def test_show_unknown_generation_exits_1(config: Path) -> None:
    """An unknown gen_id is an operation error: exit 1 with the service's message."""
    async with serving(FakeControl(), socket_of(config)):
        code, _, err = await run(config, "show", "e_nope")
    assert code == 1
    assert err == "Error: no generation e_nope\n"


async def test_service_refusal_exits_1_with_its_message(config: Path) -> None:
    """A refusal from the service (409 here) is printed as the CLI's error, exit 1."""
    control = FakeControl()
    control.error = ControlError(
        409, "conflict", "there is no cohort yet: fix the errors in data/1_raw first"
    )
    async with serving(control, socket_of(config)):
        code, _, err = await run(config, "approve", "draft")
    assert code == 1
    assert "there is no cohort yet" in err


async def test_no_service_exits_3_naming_the_socket(config: Path) -> None:
    """Without a socket file every live verb exits 3 and says which socket and how to start the service."""
    for args in (["status"], ["approve", "draft"], ["revoke", "draft"], ["show", "d_1"]):
        code, out, err = await run(config, *args)
        assert code == 3 and out == ""
        assert err == (
            f"Error: daydreamd is not running (no socket at {socket_of(config)}); "
            f"start it with: daydreamd --config {config}\n"
        )


async def test_stale_socket_exits_3(config: Path) -> None:
    """A socket file nobody listens on (the service crashed) is also exit 3, naming the socket."""
    await anyio.Path(socket_of(config).parent).mkdir()
    leave_stale_socket(socket_of(config))
    code, _, err = await run(config, "status", "--json")
    assert code == 3
    assert f"nothing listens on {socket_of(config)}" in err


@pytest.mark.parametrize("verb", ["status", "approve", "revoke", "show"])
def test_help_has_examples(verb: str) -> None:
    """Every live verb documents itself with copy-pasteable examples."""
    result = CliRunner().invoke(live_cli(), [verb, "-h"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"daydreamctl {verb}" in result.stdout
