"""``data/1_raw`` left alone for weeks: odd file names, the folder replaced, a restart while it is broken.

Each test runs the real daemon (mock provider) and checks through ``/v1/status`` that the service
stays up, keeps seeing edits within a few seconds, and keeps serving the last good cohort.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

from tests.core.test_snapshot import touch
from tests.integration.daemon import EXAMPLE_RAW, Daemon, fast_config

SEEN_S = 5.0
"""How soon an edit must show in the status ("within a few seconds")."""
MODELS = "1_raw/llm_models.csv"


def make(daemons: list[Daemon], root: Path) -> Daemon:
    daemon = Daemon(root, fast_config(None, provider="mock"))
    daemons.append(daemon)
    return daemon


def _errors(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [e for e in (status or {}).get("errors", []) if e["level"] == "error"]


def _has_error(file: str, word: str) -> Any:
    return lambda s: s is not None and any(e["file"] == file and word in e["message"] for e in _errors(s))


def _no_errors(s: dict[str, Any] | None) -> bool:
    return s is not None and not _errors(s)


def _remove(path: bytes) -> None:
    Path(os.fsdecode(path)).unlink()


async def _edits_are_seen(daemon: Daemon, raw: Path, what: str) -> None:
    """Break ``llm_models.csv`` under ``raw``: the status shows it; mend it: the error goes."""
    models = raw / "llm_models.csv"
    good = models.read_text()
    models.write_text(good.replace("true", "maybe", 1))
    await daemon.wait_for(_has_error(MODELS, "maybe"), deadline_s=SEEN_S, what=f"{what}: the broken CSV")
    models.write_text(good)
    await daemon.wait_for(
        lambda s: s is not None and not any(e["file"] == MODELS for e in _errors(s)),
        deadline_s=SEEN_S,
        what=f"{what}: the mended CSV",
    )


async def test_a_file_name_that_is_not_utf8_is_an_error_not_a_crash(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The service reports the name (escaped) and how to fix it, keeps watching, and starts with it there."""
    daemon = make(daemons, tmp_path)
    before = await daemon.start()
    bad = os.fsencode(daemon.raw) + b"/bad\xff.csv"
    touch(bad)
    status = await daemon.wait_for(
        _has_error("1_raw/bad\\xff.csv", "rename"), deadline_s=SEEN_S, what="the bad name"
    )
    assert status["cohort_id"] == before["cohort_id"]  # the last good cohort stays in force
    await _edits_are_seen(daemon, daemon.raw, "after the bad name")
    touch(bad, b"edited")  # every event on that name breaks a watch: it is re-armed each time
    await _edits_are_seen(daemon, daemon.raw, "after editing the bad file")
    _remove(bad)
    await daemon.wait_for(_no_errors, deadline_s=SEEN_S, what="the bad name to go")
    assert await daemon.stop() == 0

    touch(bad)
    restarted = make(daemons, tmp_path)
    status = await restarted.start()
    assert _has_error("1_raw/bad\\xff.csv", "UTF-8")(status), status["errors"]
    assert status["cohort_id"] == before["cohort_id"]
    await _edits_are_seen(restarted, restarted.raw, "after a restart with the bad name")
    assert await restarted.stop() == 0


async def test_the_watch_survives_the_folder_being_replaced(tmp_path: Path, daemons: list[Daemon]) -> None:
    """rm -rf and a fresh copy; moved away and copied anew; moved away and back: edits are still seen."""
    daemon = make(daemons, tmp_path)
    await daemon.start()

    shutil.rmtree(daemon.raw)
    shutil.copytree(EXAMPLE_RAW, daemon.raw)
    await _edits_are_seen(daemon, daemon.raw, "rm -rf and copy")

    moved = daemon.data / "moved"
    daemon.raw.rename(moved)
    await daemon.wait_for(_has_error("1_raw/", "does not exist"), deadline_s=SEEN_S, what="the folder gone")
    shutil.copytree(moved, daemon.raw)
    await daemon.wait_for(_no_errors, deadline_s=SEEN_S, what="the new copy")
    await _edits_are_seen(daemon, daemon.raw, "moved away, copied anew")

    shutil.rmtree(daemon.raw)
    moved.rename(daemon.raw)
    await _edits_are_seen(daemon, daemon.raw, "moved back")
    assert await daemon.stop() == 0


async def test_the_watch_follows_a_swapped_symlink(tmp_path: Path, daemons: list[Daemon]) -> None:
    """1_raw is a symlink; pointing it at another folder switches the experiment, and edits there are seen."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(EXAMPLE_RAW, data / "raw-a")
    shutil.copytree(EXAMPLE_RAW, data / "raw-b")
    template = data / "raw-b" / "templates" / "evaluation" / "rigor-judge.txt"
    template.write_text(template.read_text() + "\nBe brief.\n")
    (data / "1_raw").symlink_to("raw-a")
    daemon = make(daemons, tmp_path)
    before = await daemon.start()

    (data / ".1_raw.new").symlink_to("raw-b")
    (data / ".1_raw.new").replace(data / "1_raw")  # what `ln -sfn` does, atomically
    after = await daemon.wait_for(
        lambda s: s is not None and s["cohort_id"] != before["cohort_id"],
        deadline_s=SEEN_S,
        what="the cohort of the folder the link now points at",
    )
    assert after["stages"]["evaluation"]["pending"] == 36 and after["stages"]["evaluation"]["retired"] == 18
    await _edits_are_seen(daemon, data / "raw-b", "after the swap")
    assert await daemon.stop() == 0


async def test_a_restart_while_1_raw_is_broken_keeps_the_last_good_cohort(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Approvals, status and queued work go on from the last good cohort; the status shows the errors."""
    daemon = make(daemons, tmp_path)
    before = await daemon.start()
    await daemon.approve("essay")  # queued: they wait for their drafts
    await daemon.wait_for(
        lambda s: s is not None and s["stages"]["essay"]["queued"] == 18, what="essays queued"
    )
    assert await daemon.stop() == 0
    models = daemon.raw / "llm_models.csv"
    good = models.read_text()
    models.write_text(good.replace("true", "maybe", 1))

    restarted = make(daemons, tmp_path)
    status = await restarted.start()
    assert _has_error(MODELS, "maybe")(status), status["errors"]
    assert status["cohort_id"] == before["cohort_id"]
    assert status["stages"]["essay"]["queued"] == 18
    assert status["stages"]["draft"]["pending"] == 9

    assert (await restarted.approve("draft"))["matched"] == 9
    await restarted.wait_stage("essay", done=18)
    done = await restarted.wait_stage("draft", done=9)
    assert done["cohort_id"] == before["cohort_id"] and _has_error(MODELS, "maybe")(done)

    restarted.send(signal.SIGHUP)  # a reload rebuilds under the new settings: from the kept copy too
    reloaded = await restarted.wait_for(
        lambda s: s is not None and "reload" in (s["last_rebuild"] or {}).get("reason", ""), what="the reload"
    )
    assert reloaded["cohort_id"] == before["cohort_id"] and _has_error(MODELS, "maybe")(reloaded)
    assert (await restarted.approve("evaluation"))["matched"] == 36
    await restarted.wait_stage("evaluation", done=36)
    models.write_text(good)
    fixed = await restarted.wait_for(_no_errors, deadline_s=SEEN_S, what="the errors to clear")
    assert fixed["cohort_id"] == before["cohort_id"]
    assert await restarted.stop() == 0
