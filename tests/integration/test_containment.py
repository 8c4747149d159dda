"""The attacks of the security review, replayed against the real service and CLI: each fails safely.

* a draft template that is a link to ``/proc/self/environ`` (the service's environment, with its
  API key): refused and reported naming the file; nothing of it reaches a prompt or the provider;
* a template folder that is a link out of ``1_raw``: refused, nothing read from it;
* a FIFO in ``templates/``: refused, and neither the service nor ``validate`` blocks on it;
* a 4 GB sparse file in ``1_raw``: refused from its size, never read (it killed the service);
* ``DD_COHORT=../../../x`` (or ``experiment.cohort``, or ``--cohort``): an error naming the
  setting, nothing written outside ``data/``;
* a symbolic link at the lock file's path: refused, its target untouched;
* files the service creates (run state, log, lock, generations, cohorts) are not world-readable,
  whatever umask it was started with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from daydreamd.cli.client import ServiceError
from daydreamd.daemon.lifecycle import tighten_umask
from tests.fakellm import FakeLlm
from tests.integration.daemon import API_KEY, Daemon, ctl, fast_config, make

SEEN_S = 10.0
"""How soon an edit to 1_raw must show in the status."""
LEAK = "1_raw/templates/draft/leak.txt"
LEAK_ROW = "leak,Leak,reads the environment,,llm,True\n"


def errors(status: dict[str, Any] | None) -> dict[str, str]:
    """file -> message of each error in the status."""
    return {e["file"]: e["message"] for e in (status or {}).get("errors", []) if e["level"] == "error"}


def has_error(file: str, word: str) -> Any:
    return lambda s: s is not None and word in errors(s).get(file, "")


def add_leak(raw: Path) -> str:
    """The reported attack: a draft template that is a link to the environment; the old CSV text."""
    (raw / "templates/draft/leak.txt").symlink_to("/proc/self/environ")
    csv = raw / "draft_templates.csv"
    before = csv.read_text()
    csv.write_text(before + LEAK_ROW)
    return before


def remove_leak(raw: Path, csv_text: str) -> None:
    (raw / "templates/draft/leak.txt").unlink()
    (raw / "draft_templates.csv").write_text(csv_text)


def files_under(folder: Path) -> Iterator[Path]:
    return (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def assert_no_secret_anywhere(daemon: Daemon, fake: FakeLlm | None = None) -> None:
    """The API key (in the daemon's environment) is in no file it wrote and no prompt it sent."""
    for path in files_under(daemon.data / "gens"):
        data = path.read_bytes()
        assert API_KEY.encode() not in data and b"DD_TEST_KEY" not in data, path
    for request in fake.requests if fake else ():
        assert API_KEY not in request.prompt and "DD_TEST_KEY" not in request.prompt, request.prompt


async def run_ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: ctl(daemon, *args))


def spawn_with(daemon: Daemon, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``daydreamd`` as the harness does, but with ``env`` added (the harness drops DD_COHORT)."""
    with (daemon.root / "daemon.out").open("ab") as out:
        daemon.process = subprocess.Popen(  # killed by the fixture whatever happens
            [sys.executable, "-m", "daydreamd", "--config", str(daemon.config)],
            cwd=daemon.root,
            env={**os.environ, "DD_TEST_KEY": API_KEY, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return daemon.process


async def exits(daemon: Daemon, env: dict[str, str] | None = None, timeout_s: float = 30.0) -> int:
    """Start ``daydreamd`` (with ``env`` added) expecting it to refuse to start; its exit code."""
    process = spawn_with(daemon, env or {})
    return await anyio.to_thread.run_sync(lambda: process.wait(timeout=timeout_s))


def manifests(folder: Path) -> list[Path]:
    return list(folder.rglob("manifest.json"))


# ---- 1_raw: links out, linked folders, FIFOs ------------------------------------------------------


async def test_a_template_linked_to_proc_self_environ_never_reaches_a_prompt(
    tmp_path: Path, fake: FakeLlm, daemons: list[Daemon]
) -> None:
    """Present at startup: no cohort, nothing can be approved, no call. Added later: the last good
    cohort stays in force and runs; the linked template is in no generation, prompt or request."""
    daemon = make(daemons, tmp_path, fast_config(fake.base_url))
    csv_text = add_leak(daemon.raw)
    status = await daemon.start()
    assert "outside 1_raw/" in errors(status).get(LEAK, ""), status
    assert "/proc/self/environ" in errors(status)[LEAK]
    assert status["cohort_id"] is None
    with pytest.raises(ServiceError):
        await daemon.approve("draft")
    assert fake.request_count == 0

    remove_leak(daemon.raw, csv_text)
    good = await daemon.wait_for(lambda s: s is not None and bool(s["cohort_id"]), what="a cohort")
    add_leak(daemon.raw)
    status = await daemon.wait_for(has_error(LEAK, "outside 1_raw/"), deadline_s=SEEN_S, what="the refusal")
    assert status["cohort_id"] == good["cohort_id"]  # the last good cohort stays in force

    assert (await daemon.approve("draft"))["matched"] == 9  # not the 3 of the leak template
    await daemon.wait_stage("draft", done=9)
    rows = (await daemon.get("/v1/generations", stage="draft", limit=100))["generations"]
    assert rows and not any(row["template_id"] == "leak" for row in rows)
    assert fake.request_count == 9
    assert_no_secret_anywhere(daemon, fake)

    validated = await run_ctl(daemon, "validate")
    assert validated.returncode == 1
    assert f"{LEAK}: error: refused" in validated.stdout + validated.stderr
    assert await daemon.stop() == 0


async def test_a_template_folder_linked_out_of_1_raw_is_refused(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """``templates/draft -> /somewhere/else``: one error naming the folder; nothing in it is read."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    before = await daemon.start()
    outside = tmp_path / "elsewhere"
    shutil.copytree(daemon.raw / "templates/draft", outside)
    for template in outside.iterdir():
        template.write_text("MARKER-FROM-OUTSIDE\n" + template.read_text())
    shutil.rmtree(daemon.raw / "templates/draft")
    (daemon.raw / "templates/draft").symlink_to(outside, target_is_directory=True)

    status = await daemon.wait_for(
        has_error("1_raw/templates/draft", "outside 1_raw/"), deadline_s=SEEN_S, what="the refusal"
    )
    assert status["cohort_id"] == before["cohort_id"]
    assert list(errors(status)) == ["1_raw/templates/draft"]  # its templates are not also "missing"
    await daemon.approve("draft")
    await daemon.wait_stage("draft", done=9)
    for prompt in (daemon.data / "gens/draft").glob("*/prompt.txt"):
        assert "MARKER-FROM-OUTSIDE" not in prompt.read_text()

    (daemon.raw / "concepts/descriptions-etc").symlink_to("/etc", target_is_directory=True)
    validated = await run_ctl(daemon, "validate")
    assert validated.returncode == 1
    out = validated.stdout + validated.stderr
    assert "1_raw/templates/draft: error: refused" in out and "1_raw/concepts/descriptions-etc" in out
    assert await daemon.stop() == 0


async def test_a_fifo_in_templates_blocks_neither_the_service_nor_validate(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Opening a FIFO to read blocks until someone writes: the service and the CLI never open one."""
    with anyio.fail_after(120):
        daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
        with (daemon.raw / "draft_templates.csv").open("a") as f:
            f.write("piped,Piped,a FIFO,,llm,True\n")
        os.mkfifo(daemon.raw / "templates/draft/piped.txt")
        status = await daemon.start()  # the first check of 1_raw did not hang on it
        assert "FIFO" in errors(status).get("1_raw/templates/draft/piped.txt", ""), status

        (daemon.raw / "templates/draft/piped.txt").unlink()
        (daemon.raw / "templates/draft/piped.txt").write_text("{{ concepts }}\n")
        await daemon.wait_for(lambda s: s is not None and not errors(s), deadline_s=SEEN_S, what="mended")
        judge = daemon.raw / "templates/evaluation/rigor-judge.txt"
        judge.unlink()
        os.mkfifo(judge)  # while it runs
        status = await daemon.wait_for(
            has_error("1_raw/templates/evaluation/rigor-judge.txt", "FIFO"), deadline_s=SEEN_S, what="refusal"
        )
        assert status["cohort_id"]  # it kept answering, on the last good cohort

        validated = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "daydreamd.cli.main", "--config", str(daemon.config), "validate"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=daemon.root,
            )
        )
        assert validated.returncode == 1
        assert "rigor-judge.txt: error: refused: it is a FIFO" in validated.stdout + validated.stderr
        assert await daemon.stop() == 0


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident size (``VmHWM``), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


async def test_a_huge_sparse_file_in_1_raw_is_refused_without_being_read(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The review's 4 GB sparse ``notes.txt`` killed the service at startup (MemoryError): now it is
    refused from its size, an error naming it and the limit, and the service stays small."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    with (daemon.raw / "notes.txt").open("wb") as f:
        f.truncate(4 * 1024**3)
    status = await daemon.start()
    message = errors(status).get("1_raw/notes.txt", "")
    assert f"{4 * 1024**3:,} bytes" in message and "16 MiB" in message, status
    assert daemon.process is not None
    peak_kib = peak_rss_kib(daemon.process.pid)
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib} KiB"

    (daemon.raw / "notes.txt").unlink()
    await daemon.wait_for(lambda s: s is not None and not errors(s), deadline_s=SEEN_S, what="mended")
    assert await daemon.stop() == 0


# ---- cohort ids: nothing written outside data/ ----------------------------------------------------


async def test_a_cohort_id_that_escapes_data_is_refused_everywhere(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """``DD_COHORT=../../../x``: the service does not start, the CLI refuses, nothing lands outside."""
    root = tmp_path / "experiment"
    root.mkdir()
    name = f"escaped-{uuid.uuid4().hex[:8]}"
    escape = f"../../../{name}"
    target = root.parent / name  # where data/cohorts/../../../<name> points
    daemon = make(daemons, root, fast_config(None, provider="mock"))

    assert await exits(daemon, {"DD_COHORT": escape}) == 2
    out = (root / "daemon.out").read_text()
    assert "DD_COHORT" in out and "not a valid cohort id" in out and "[A-Za-z0-9]" in out

    saved = dict(os.environ)
    os.environ["DD_COHORT"] = escape
    try:
        written = await run_ctl(daemon, "cohort", "--write")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert written.returncode != 0 and "DD_COHORT" in written.stderr

    report = await run_ctl(daemon, "report", "--cohort", escape, "--from-files")
    assert report.returncode == 2 and "--cohort" in report.stderr and "not a valid cohort id" in report.stderr

    daemon.config.write_text(daemon.config.read_text() + f'\n[experiment]\ncohort = "{escape}"\n')
    assert await exits(daemon) == 2
    assert "experiment.cohort" in (root / "daemon.out").read_text()

    assert not target.exists()
    assert not manifests(tmp_path)
    assert not (root / "data" / "cohorts").exists()


# ---- the lock file ---------------------------------------------------------------------------------


async def test_a_link_at_the_lock_path_is_refused_and_its_target_untouched(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious contents\n")
    victim.chmod(0o600)
    (tmp_path / "root").mkdir()
    daemon = make(daemons, tmp_path / "root", fast_config(None, provider="mock"))
    (daemon.root / "state").mkdir()
    lock = daemon.root / "state" / "dd.sqlite.lock"
    lock.symlink_to(victim)

    assert await exits(daemon) == 2

    assert victim.read_text() == "precious contents\n"
    assert lock.is_symlink()
    out = (daemon.root / "daemon.out").read_text()
    assert "lock file" in out and "symbolic link" in out
    assert not (daemon.root / "state" / "dd.sqlite").exists()  # refused before the run state is opened

    lock.unlink()  # the way out the message gives
    await daemon.start()
    assert daemon.process is not None
    assert not lock.is_symlink() and lock.read_text().strip() == str(daemon.process.pid)
    assert await daemon.stop() == 0


def test_a_special_file_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    """A FIFO there is neither blocked on nor written to."""
    from daydreamd.daemon.lock import LockFileError, instance_lock

    os.mkfifo(tmp_path / "dd.sqlite.lock")
    with pytest.raises(LockFileError, match="not a regular file"), instance_lock(tmp_path / "dd.sqlite"):
        pass


# ---- umask ------------------------------------------------------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


async def test_files_the_service_creates_are_not_world_readable(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Started from a shell with the usual umask 022 (not under systemd), the run state, its log,
    the lock, the cohort and every generation's files are still closed to other users."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    with umask(0o022):
        daemon.spawn()
    await daemon.wait_for(lambda s: s is not None and bool(s["cohort_id"]), what="the service")
    await daemon.approve("draft")
    await daemon.wait_stage("draft", done=9)
    assert await daemon.stop() == 0

    state = daemon.root / "state"
    created = [state / "dd.sqlite", state / "dd.log", state / "dd.sqlite.lock"]
    created += list(files_under(daemon.data / "gens")) + list(files_under(daemon.data / "cohorts"))
    created += [daemon.data / "gens", daemon.data / "gens" / "draft", daemon.data / "cohorts"]
    assert len(created) > 9 * 3
    loose = {str(p.relative_to(daemon.root)): oct(p.stat().st_mode & 0o777) for p in created}
    assert {p: mode for p, mode in loose.items() if int(mode, 8) & 0o007} == {}


def test_the_umask_is_only_ever_tightened() -> None:
    """0o007 is added to what the service inherits; a stricter umask (systemd's 0027, 077) is kept."""
    with umask(0o022):
        assert tighten_umask() == 0o027
        assert os.umask(0o022) == 0o027
    with umask(0o077):
        assert tighten_umask() == 0o077
        assert os.umask(0o077) == 0o077
    with umask(0o027):
        assert tighten_umask() == 0o027
