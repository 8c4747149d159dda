"""A real daydreamd process for integration tests: its config, its socket, its lifecycle.

The daemon runs as a subprocess (a real process, a real SQLite file, a real Unix socket);
tests talk to it with the same stdlib client ``daydreamctl`` uses. Waiting is always on a
condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from daydreamd.cli.client import ServiceClient, ServiceUnavailable

ROOT = Path(__file__).parents[2]
EXAMPLE_RAW = ROOT / "data" / "1_raw"
API_KEY = "sk-test-daydreamd-integration-0123456789"


def fast_config(base_url: str | None, *, provider: str = "openai", extra: str = "") -> str:
    """A config for tests: short debounce, quick retries, the fake server as the API."""
    llm = f'provider = "{provider}"\napi_key_env = "DD_TEST_KEY"\ntimeout_s = 10.0\n'
    if base_url:
        llm += f'base_url = "{base_url}"\n'
    return (
        '[paths]\ndata_dir = "data"\nstate_db = "state/dd.sqlite"\nlog_file = "state/dd.log"\n'
        f'socket = "{{socket}}"\n[watch]\ndebounce_ms = 50\n[llm]\n{llm}'
        "[retry]\nrate_limit_base_s = 0.05\nrate_limit_cap_s = 0.5\ntransient_base_s = 0.05\n"
        "transient_cap_s = 0.2\n"
        "[pool]\nconcurrency = 8\nmodel_concurrency = 4\nrequests_per_minute = 6000\ngrace_s = 5.0\n"
        f"{extra}"
    )


class Daemon:
    """One daydreamd process on a private copy of the example experiment."""

    def __init__(self, root: Path, config_text: str) -> None:
        self.root = root
        self.data = root / "data"
        self.raw = self.data / "1_raw"
        # AF_UNIX paths are short (about 107 bytes): the socket lives in its own short folder.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="dd", dir="/tmp"))
        self.socket = self.socket_dir / "d.sock"
        self.config = root / "config.toml"
        self.config.write_text(config_text.replace("{socket}", str(self.socket)))
        if not self.raw.exists():
            shutil.copytree(EXAMPLE_RAW, self.raw)
        self.process: subprocess.Popen[bytes] | None = None
        self.client = ServiceClient(self.socket, timeout=10.0)
        self.stdout = root / "daemon.out"
        self.env: dict[str, str] = {}
        """More environment variables for the process (more API keys, say)."""

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        """Start the process (without waiting for it to be ready); ``args`` go to ``daydreamd``."""
        env = {**os.environ, "DD_TEST_KEY": API_KEY, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("DD_COHORT", None)
        out = self.stdout.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daydreamd", "--config", str(self.config), *args],
            cwd=self.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        return self.process

    async def start(self, *args: str, deadline_s: float = 20.0) -> dict[str, Any]:
        """Start and wait until the socket answers ``/v1/status`` with no cohort being built."""
        self.spawn(*args)
        return await self.wait_for(
            lambda s: s is not None and not s.get("cohort_progress"),
            deadline_s=deadline_s,
            what="the service to answer",
        )

    async def get(self, path: str, **params: object) -> Any:
        return await anyio.to_thread.run_sync(lambda: self.client.get(path, params))

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await anyio.to_thread.run_sync(lambda: self.client.post(path, body))

    async def status(self) -> dict[str, Any] | None:
        """The status, or None while the service is not answering."""
        try:
            return await self.get("/v1/status")
        except ServiceUnavailable:
            return None

    async def approve(self, stage: str, **scope: Any) -> dict[str, Any]:
        return await self.post("/v1/approvals", {"stage": stage, "requested_by": "test", **scope})

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        deadline_s: float = 30.0,
        what: str = "condition",
        poll_s: float = 0.05,
    ) -> dict[str, Any]:
        """Poll the status until ``predicate`` holds; fail with the last status and the log tail."""
        deadline = time.monotonic() + deadline_s
        status = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daydreamd exited with {self.process.returncode}:\n{self.log_tail()}")
            status = await self.status()
            if predicate(status):
                assert status is not None or predicate(None)
                return status or {}
            await anyio.sleep(poll_s)
        raise AssertionError(f"timed out waiting for {what}; last status: {status}\n{self.log_tail()}")

    async def wait_stage(
        self, stage: str, *, done: int, failed: int = 0, deadline_s: float = 30.0, poll_s: float = 0.05
    ) -> dict[str, Any]:
        """Wait until ``stage`` has exactly these done and failed counts and nothing queued or running."""

        def settled(s: dict[str, Any] | None) -> bool:
            if s is None:
                return False
            counts = s["stages"][stage]
            return (counts["done"], counts["failed"], counts["queued"], counts["running"]) == (
                done,
                failed,
                0,
                0,
            )

        return await self.wait_for(
            settled, deadline_s=deadline_s, what=f"{stage}: {done} done, {failed} failed"
        )

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, signum: int = signal.SIGTERM, deadline_s: float = 20.0) -> int:
        """Send ``signum`` and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        process = self.process
        return await anyio.to_thread.run_sync(lambda: process.wait(timeout=deadline_s))

    def kill(self) -> None:
        """kill -9, no cleanup."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.stdout.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"

    def close(self) -> None:
        """Make sure nothing is left running and the socket folder is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


async def holds(
    daemon: Daemon, predicate: Callable[[dict[str, Any] | None], bool], *, for_s: float, what: str
) -> None:
    """``predicate`` holds at every poll for ``for_s`` seconds: the check that nothing happens."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        status = await daemon.status()
        assert predicate(status), f"{what} stopped holding: {status}\n{daemon.log_tail()}"
        await anyio.sleep(0.05)


def make(daemons: list[Daemon], root: Path, config: str) -> Daemon:
    """A daemon (not started) that the ``daemons`` fixture cleans up, whatever happens."""
    daemon = Daemon(root, config)
    daemons.append(daemon)
    return daemon


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``daydreamctl ARGS`` against this daemon's config (a real process; blocking: run it in a thread)."""
    return subprocess.run(
        [sys.executable, "-m", "daydreamd.cli.main", "--config", str(daemon.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=daemon.root,
    )
