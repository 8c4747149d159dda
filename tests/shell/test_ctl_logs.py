"""``daydreamctl logs`` on real files: the last lines, filters, --json, stdin, and following through rotation.

The verb runs through a copy of the ``daydreamctl`` group with it registered (the module's
group is left alone). Following runs :func:`show_logs` in a thread with a short poll interval
and a stop event, while the test writes, rotates and truncates the file like the service and
logrotate do; waits poll the output with a deadline, never sleep a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from daydreamd.cli.logs import (
    Follower,
    View,
    complete_end,
    follow_lines,
    lines_backwards,
    register,
    show_logs,
)
from daydreamd.cli.logview import LogFilter
from daydreamd.cli.main import cli as base_cli

ROOT = Path(__file__).parents[2]
DEADLINE = 5.0


def logs_cli() -> click.Group:
    """A copy of ``daydreamctl`` with ``logs`` registered."""
    group = click.Group(
        name="daydreamctl",
        callback=base_cli.callback,
        params=list(base_cli.params),
        commands=dict(base_cli.commands),
        context_settings=base_cli.context_settings,
    )
    register(group)
    return group


def rec(event: str, level: str = "info", when: datetime | None = None, **fields: Any) -> str:
    """One JSON line as the service writes it (keys first, then event, level, timestamp)."""
    stamp = (when or datetime(2026, 11, 22, 3, 1, 2, 123456, tzinfo=UTC)).isoformat().replace("+00:00", "Z")
    return json.dumps({**fields, "event": event, "level": level, "timestamp": stamp})


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    """A config whose paths.log_file is ``logs/daydreamd.log`` beside it (the file is not created)."""
    (tmp_path / "config.toml").write_text('[paths]\nlog_file = "logs/daydreamd.log"\n')
    (tmp_path / "logs").mkdir()
    return tmp_path / "config.toml"


def log_of(config: Path) -> Path:
    return config.parent / "logs" / "daydreamd.log"


def write(path: Path, *lines: str, mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as f:
        f.writelines(text + "\n" for text in lines)


def run(config: Path | None, *args: str, stdin: bytes | str | None = None) -> tuple[int, str, str]:
    """``daydreamctl [--config CONFIG] logs ARGS...``: (exit code, stdout, stderr)."""
    prefix = ["--config", str(config)] if config else []
    result = CliRunner().invoke(logs_cli(), [*prefix, "logs", *args], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# ---- the last lines --------------------------------------------------------------------------

MIXED = [
    rec("service_ready", cohort_id="cohort_abc"),
    rec("generation_done", gen_id="d_ab12cd34ef567890", stage="draft", model="gemini", attempts=1),
    rec(
        "generation_failed",
        "warning",
        gen_id="e_0011223344556677",
        stage="essay",
        model="gpt",
        error_type="rate_limit",
        message="slow down",
    ),
    "Traceback (most recent call last):",
    '  File "pool.py", line 1, in <module>',
    rec("files_changed", "debug", changes=3),
    rec("rebuild_failed", "error", error="KeyError: 'x'", stage="draft", model="gpt"),
]


def test_default_prints_the_last_50_lines_readably(config: Path) -> None:
    write(log_of(config), *(rec(f"event_{i}", n=i) for i in range(120)))
    code, out, _ = run(config)
    lines = out.splitlines()
    assert code == 0
    assert len(lines) == 50
    assert lines[0] == "2026-11-22 03:01:02.123  INFO   event_70  n=70"
    assert lines[-1] == "2026-11-22 03:01:02.123  INFO   event_119  n=119"
    assert "\x1b[" not in out  # no colours when stdout is not a terminal


@pytest.mark.parametrize(("n", "expected"), [("0", 0), ("3", 3), ("500", 120)])
def test_lines_option(config: Path, n: str, expected: int) -> None:
    write(log_of(config), *(rec(f"event_{i}") for i in range(120)))
    code, out, _ = run(config, "-n", n)
    assert code == 0
    assert out.splitlines() == [
        f"2026-11-22 03:01:02.123  INFO   event_{i}" for i in range(120 - expected, 120)
    ]


@pytest.mark.parametrize(
    ("args", "events"),
    [
        ([], ["service_ready", "generation_done", "generation_failed", "files_changed", "rebuild_failed"]),
        (["--level", "warning"], ["generation_failed", "rebuild_failed"]),
        (["--level", "ERROR"], ["rebuild_failed"]),
        (
            ["--level", "debug"],
            ["service_ready", "generation_done", "generation_failed", "files_changed", "rebuild_failed"],
        ),
        (["--stage", "draft"], ["generation_done", "rebuild_failed"]),
        (["--model", "gpt"], ["generation_failed", "rebuild_failed"]),
        (["--gen-id", "e_0011"], ["generation_failed"]),
        (["--gen-id", "d_ab12cd34ef567890"], ["generation_done"]),
        (["--stage", "draft", "--model", "gpt"], ["rebuild_failed"]),
        (["--level", "warning", "-n", "1"], ["rebuild_failed"]),
    ],
)
def test_filters(config: Path, args: list[str], events: list[str]) -> None:
    """--json prints the matching records unchanged: the events say which matched."""
    write(log_of(config), *MIXED)
    code, out, _ = run(config, "--json", *args)
    assert code == 0
    assert [json.loads(text)["event"] for text in out.splitlines()] == events


def test_json_passes_the_lines_through_unchanged_and_drops_plain_text(config: Path) -> None:
    odd = '{"z": 1,   "event":"odd_spacing", "level": "warning", "a": "é"}'
    write(log_of(config), *MIXED, odd)
    code, out, _ = run(config, "--json", "--level", "warning")
    assert code == 0
    assert out.splitlines() == [MIXED[2], MIXED[6], odd]


def test_plain_lines_are_shown_with_their_record(config: Path) -> None:
    """A traceback printed into the file appears as it is, after the record it follows."""
    write(log_of(config), *MIXED)
    code, out, _ = run(config, "--level", "warning")
    assert code == 0
    assert out.splitlines() == [
        "2026-11-22 03:01:02.123  WARN   generation_failed  e_0011223344556677 essay gpt"
        '  error_type=rate_limit message="slow down"',
        "Traceback (most recent call last):",
        '  File "pool.py", line 1, in <module>',
        "2026-11-22 03:01:02.123  ERROR  rebuild_failed  draft gpt  error=\"KeyError: 'x'\"",
    ]


def test_garbage_never_crashes(config: Path) -> None:
    """Bad UTF-8, NULs, CRLF, a half-written last line and JSON that is not an object are shown as text."""
    log_of(config).write_bytes(
        b"\xff\xfe not utf-8\n\x00\x00" + rec("after_nuls").encode() + b"\r\n[1, 2]\n\n" + b'{"event": "half'
    )
    code, out, _ = run(config)
    assert code == 0
    assert out.splitlines() == [
        "\ufffd\ufffd not utf-8",
        "2026-11-22 03:01:02.123  INFO   after_nuls",
        "[1, 2]",
        '{"event": "half',
    ]


def test_since(config: Path) -> None:
    now = datetime.now(UTC)
    write(
        log_of(config),
        rec("three_hours_ago", when=now - timedelta(hours=3)),
        rec("ten_minutes_ago", when=now - timedelta(minutes=10)),
        rec("just_now", when=now),
    )
    for since, events in [
        ("1h", ["ten_minutes_ago", "just_now"]),
        ("5m", ["just_now"]),
        ("1d", ["three_hours_ago", "ten_minutes_ago", "just_now"]),
        ((now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), ["ten_minutes_ago", "just_now"]),
    ]:
        code, out, _ = run(config, "--json", "--since", since)
        assert code == 0
        assert [json.loads(text)["event"] for text in out.splitlines()] == events, since


def test_bad_since_is_a_usage_error(config: Path) -> None:
    write(log_of(config), *MIXED)
    code, _, err = run(config, "--since", "yesterday")
    assert code == 2
    assert "--since" in err and "neither a duration" in err


def test_no_log_file_configured_says_what_to_do(tmp_path: Path) -> None:
    """Exit 1, naming the config key and the journal as the alternative."""
    (tmp_path / "config.toml").write_text('[paths]\ndata_dir = "data"\n')
    code, out, err = run(tmp_path / "config.toml")
    assert code == 1
    assert out == ""
    assert "paths.log_file" in err
    assert str(tmp_path / "config.toml") in err
    assert "journalctl -u daydreamd -o cat | daydreamctl logs --file -" in err


def test_missing_log_file(config: Path) -> None:
    code, _, err = run(config)
    assert code == 1
    assert f"{log_of(config)} does not exist" in err


def test_file_option_reads_another_file_without_a_config(tmp_path: Path) -> None:
    path = tmp_path / "rotated.log.1"
    write(path, *MIXED)
    code, out, _ = run(None, "--file", str(path), "--json", "--gen-id", "d_")
    assert code == 0
    assert out.splitlines() == [MIXED[1]]


def test_stdin(config: Path) -> None:
    """journalctl -u daydreamd -o cat | daydreamctl logs --file - --level warning (no log_file needed)."""
    (config.parent / "config.toml").write_text("")
    code, out, _ = run(config, "--file", "-", "--level", "warning", "-n", "3", stdin="\n".join(MIXED) + "\n")
    assert code == 0
    assert out.splitlines() == [
        "Traceback (most recent call last):",
        '  File "pool.py", line 1, in <module>',
        "2026-11-22 03:01:02.123  ERROR  rebuild_failed  draft gpt  error=\"KeyError: 'x'\"",
    ]


def test_stdin_follow_prints_every_match(config: Path) -> None:
    lines = [rec(f"e{i}", "warning") for i in range(80)]
    code, out, _ = run(None, "--file", "-", "-f", "--json", stdin="\n".join(lines))
    assert code == 0
    assert out.splitlines() == lines


# ---- reading backwards -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"one",
        b"one\n",
        b"one\ntwo\nthree\n",
        b"one\ntwo\nthree",
        b"\n\nx\n\n",
        b"a" * 40 + b"\n" + b"b" * 3 + b"\n" + b"c" * 25,
    ],
)
@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 64])
def test_lines_backwards_and_complete_end(tmp_path: Path, content: bytes, block_size: int) -> None:
    """Any block size gives the lines in reverse; complete_end is just after the last newline."""
    path = tmp_path / "f"
    path.write_bytes(content)
    with path.open("rb") as handle:
        back = list(lines_backwards(handle, len(content), block_size=block_size))
        end = complete_end(handle, len(content), block_size=block_size)
    assert back == ([text.decode() for text in content.split(b"\n")][::-1] if content else [])
    assert end == content.rfind(b"\n") + 1


def test_a_large_file_is_read_from_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Printing the last lines of a 20 MB log reads a block or two, not the file."""
    path = tmp_path / "big.log"
    filler = (rec("filler", padding="x" * 900) + "\n").encode()
    with path.open("wb") as f:
        f.write(filler * 20_000)
        f.write(("\n".join(rec(f"last_{i}") for i in range(5)) + "\n").encode())
    read = 0
    pread = os.pread

    def counting_pread(fd: int, size: int, offset: int) -> bytes:
        nonlocal read
        read += size
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting_pread)
    out: list[str] = []
    show_logs(path, View(log_filter=LogFilter(), count=5, as_json=True), follow=False, echo=out.append)
    assert [json.loads(text)["event"] for text in out] == [f"last_{i}" for i in range(5)]
    assert read <= 2 * 65536


# ---- following -------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Following:
    """show_logs(..., follow=True) in a thread; ``out`` fills as lines are printed."""

    def __init__(self, path: Path, view: View) -> None:
        self.out: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path, view), daemon=True)
        self.thread.start()

    def _run(self, path: Path, view: View) -> None:
        try:
            show_logs(
                path,
                view,
                follow=True,
                echo=self.out.append,
                poll_interval=0.01,
                should_stop=self.stop.is_set,
            )
        except BaseException as exc:
            self.error = exc

    def events(self) -> list[str]:
        return [json.loads(text)["event"] for text in list(self.out)]

    def wait_for(self, *events: str) -> None:
        wait_until(
            lambda: self.error is not None or self.events()[-len(events) :] == list(events), str(events)
        )
        assert self.error is None

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()
        assert self.error is None


@pytest.fixture(name="following")
def _following() -> Iterator[list[Following]]:
    started: list[Following] = []
    yield started
    for follower in started:
        follower.stop.set()
        follower.thread.join(DEADLINE)


def test_follow_through_rename_and_copytruncate_rotation(tmp_path: Path, following: list[Following]) -> None:
    """Tail, then new lines, a rename rotation and two copytruncates: every line once, in order."""
    path = tmp_path / "daydreamd.log"
    writer = path.open("a", encoding="utf-8")  # the service's handler: O_APPEND, line at a time

    def log(*events: str) -> None:
        writer.writelines(rec(event, "warning") + "\n" for event in events)
        writer.flush()

    log("old_1", "old_2", "old_3")
    writer.write(rec("half", "warning")[:20])  # a line being written as we start
    writer.flush()
    view = View(log_filter=LogFilter(min_level="warning"), count=2, as_json=True)
    follower = Following(path, view)
    following.append(follower)
    follower.wait_for("old_2", "old_3")

    writer.write(rec("half", "warning")[20:] + "\n")
    log("new_1")
    writer.write(rec("hidden") + "\n")  # info: filtered out
    log("new_2")
    follower.wait_for("half", "new_1", "new_2")

    # logrotate's default: rename, create; the service (WatchedFileHandler) then reopens by name.
    path.rename(tmp_path / "daydreamd.log.1")
    log("late_in_old_file")
    writer.close()
    writer = path.open("a", encoding="utf-8")
    log("rotated_1", "rotated_2")
    follower.wait_for("late_in_old_file", "rotated_1", "rotated_2")

    # copytruncate: copy, then truncate in place; the writer keeps its O_APPEND descriptor.
    shutil.copyfile(path, tmp_path / "daydreamd.log.2")
    os.truncate(path, 0)
    log("truncated_1")
    follower.wait_for("truncated_1")

    # Truncated and at once written past the old length: the bytes before our position changed.
    shutil.copyfile(path, tmp_path / "daydreamd.log.3")
    os.truncate(path, 0)
    log("truncated_2", "truncated_3", "truncated_4")
    follower.wait_for("truncated_2", "truncated_3", "truncated_4")

    writer.close()
    follower.finish()
    assert follower.events() == [
        "old_2",
        "old_3",
        "half",
        "new_1",
        "new_2",
        "late_in_old_file",
        "rotated_1",
        "rotated_2",
        "truncated_1",
        "truncated_2",
        "truncated_3",
        "truncated_4",
    ]


def test_follow_waits_for_a_missing_file(tmp_path: Path, following: list[Following]) -> None:
    path = tmp_path / "not-yet.log"
    follower = Following(path, View(log_filter=LogFilter(), count=10, as_json=True))
    following.append(follower)
    write(path, rec("first"))
    follower.wait_for("first")
    path.unlink()
    write(path, rec("recreated"))
    follower.wait_for("recreated")
    follower.finish()
    assert follower.events() == ["first", "recreated"]


def test_follow_readable_lines_and_plain_text(tmp_path: Path, following: list[Following]) -> None:
    """A traceback appended after a shown record is shown; after a hidden one it is not."""
    path = tmp_path / "d.log"
    write(path, rec("boot"))
    follower = Following(path, View(log_filter=LogFilter(min_level="error"), count=10))
    following.append(follower)
    write(path, rec("quiet"), "hidden traceback line", rec("broke", "error"), "shown traceback line")
    wait_until(lambda: len(follower.out) >= 2, "two lines")
    follower.finish()
    assert follower.out == ["2026-11-22 03:01:02.123  ERROR  broke", "shown traceback line"]


class TestFollowerStepByStep:
    """The rotation cases driven poll by poll, so the order of writes and reads is exact."""

    def test_partial_lines_wait_for_their_end(self, tmp_path: Path) -> None:
        path = tmp_path / "d.log"
        path.write_bytes(b"")
        follower = Follower(path)
        with path.open("ab") as f:
            f.write(b"hel")
            f.flush()
            assert follower.poll() == []
            f.write(b"lo\nwor")
            f.flush()
            assert follower.poll() == ["hello"]
            f.write(b"ld\n")
            f.flush()
            assert follower.poll() == ["world"]
            assert follower.poll() == []

    def test_rename_drains_the_old_file_including_its_unfinished_last_line(self, tmp_path: Path) -> None:
        path = tmp_path / "d.log"
        path.write_bytes(b"a\n")
        follower = Follower(path)
        assert follower.poll() == ["a"]
        path.rename(tmp_path / "d.log.1")
        with (tmp_path / "d.log.1").open("ab") as old:
            old.write(b"b\nc")
        assert follower.poll() == ["b"]
        assert follower.poll() == ["c"]  # no file at the path: the old one is finished, last line and all
        assert follower.poll() == []
        path.write_bytes(b"d\n")
        assert follower.poll() == ["d"]

    def test_rename_and_create_between_two_polls(self, tmp_path: Path) -> None:
        path = tmp_path / "d.log"
        path.write_bytes(b"a\n")
        follower = Follower(path)
        assert follower.poll() == ["a"]
        with path.open("ab") as old:
            old.write(b"b\n")
        path.rename(tmp_path / "d.log.1")
        path.write_bytes(b"c\n")
        assert follower.poll() == ["b"]  # new data in the old file is read first...
        assert follower.poll() == ["c"]  # ...then the rotation is noticed

    @pytest.mark.parametrize(
        ("rewrite", "expected"),
        [
            (b"x\n", ["x"]),  # shorter than before
            (b"0123456789\n", ["0123456789"]),  # exactly as long
            (b"a much longer line than before\n", ["a much longer line than before"]),
        ],
    )
    def test_truncate_then_rewrite(self, tmp_path: Path, rewrite: bytes, expected: list[str]) -> None:
        path = tmp_path / "d.log"
        path.write_bytes(b"0000000000\n")
        follower = Follower(path)
        assert follower.poll() == ["0000000000"]
        with path.open("r+b") as f:
            f.truncate(0)
            f.write(rewrite)
        assert follower.poll() == expected

    def test_writer_without_o_append_leaves_a_hole(self, tmp_path: Path) -> None:
        """After copytruncate such a writer goes on at its old offset; the NULs before are dropped."""
        path = tmp_path / "d.log"
        with path.open("wb") as writer:
            writer.write(b"first line\n")
            writer.flush()
            follower = Follower(path)
            assert follower.poll() == ["first line"]
            os.truncate(path, 0)
            writer.write(b"second\n")
            writer.flush()
            assert follower.poll() == ["second"]

    def test_follow_lines_stops_when_told(self, tmp_path: Path) -> None:
        """should_stop is checked between polls; sleep is injectable, so no time passes here."""
        path = tmp_path / "d.log"
        path.write_bytes(b"a\nb\n")
        polls: list[float] = []
        lines = list(
            follow_lines(path, poll_interval=0.2, should_stop=lambda: len(polls) >= 3, sleep=polls.append)
        )
        assert lines == ["a", "b"]
        assert polls == [0.2, 0.2, 0.2]


# ---- the real command, stopped with Ctrl-C ---------------------------------------------------

SCRIPT = (
    # A shell running the tests in the background makes its children ignore SIGINT; a terminal does not.
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from daydreamd.cli.main import cli; from daydreamd.cli.logs import register; "
    "register(cli); cli(prog_name='daydreamctl')"
)


def test_ctrl_c_stops_following_cleanly(config: Path) -> None:
    """daydreamctl logs -f in a process: prints appended lines, exits 0 on SIGINT without a traceback."""
    path = log_of(config)
    write(path, rec("before"))
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "--config", str(config), "logs", "-f", "-n", "1", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: len(out) >= 1 or process.poll() is not None, "the tail")
        write(path, rec("after"))
        wait_until(lambda: len(out) >= 2 or process.poll() is not None, "the appended line")
        process.send_signal(signal.SIGINT)
        code = process.wait(DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(DEADLINE)
    err = process.stderr.read()  # type: ignore[union-attr]
    assert code == 0, err
    assert "Traceback" not in err
    assert [json.loads(text)["event"] for text in out] == ["before", "after"]
