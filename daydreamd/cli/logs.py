"""``daydreamctl logs``: read the service's JSON-lines log as readable, filtered, coloured lines.

The log is ``paths.log_file`` (see :mod:`daydreamd.daemon.logconfig`), or standard input with
``--file -`` so the journal works too (``journalctl -u daydreamd -o cat | daydreamctl logs --file -``).
Parsing, filtering and formatting are pure (:mod:`daydreamd.cli.logview`); this module reads files:
the last lines from the end backwards in blocks (a large log is not read whole), and, with
``-f``, whatever is appended, through logrotate's rename-and-create and copytruncate alike.
The only verb here is ``logs``; ``daydreamd.cli.main`` imports this module when it is run and adds
it to its group with :func:`register`.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from daydreamd.cli.logview import (
    LEVELS,
    Entry,
    LogFilter,
    Selector,
    Tail,
    format_entry,
    parse_since,
    select_last,
)
from daydreamd.cli.options import CONTEXT, STAGE_CHOICE

if TYPE_CHECKING:
    from daydreamd.cli.common import Context

POLL_INTERVAL = 0.2
"""Seconds between looks at the file while following."""
BLOCK_SIZE = 1 << 16
READ_BLOCKS = 16
"""At most this many blocks are read per poll, so a large backlog is printed as it is read."""
FINGERPRINT = 64
"""Bytes remembered at the file's start and before the read position, to notice a file truncated and
written up to or past that position again before we looked (same inode, no shrink seen)."""
STDIN = "-"
NO_LOG_FILE = """no log file is configured: set paths.log_file in {config}, for example

  [paths]
  log_file = "state/daydreamd.log"

and restart the service. Under systemd the service's output is in the journal as JSON lines:

  journalctl -u daydreamd -o cat | daydreamctl logs --file - --level warning
  journalctl -u daydreamd -o cat -f | daydreamctl logs --file - -f"""


def register(cli: click.Group) -> None:
    """Add ``logs`` to ``cli`` (the ``daydreamctl`` group); calling it twice changes nothing."""
    cli.add_command(logs)


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class View:
    """What to show and how: the filter, how many lines from the end, raw JSON or readable text."""

    log_filter: LogFilter
    count: int = 50
    as_json: bool = False
    color: bool = False


# -- the verb ----------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are logged (Ctrl-C stops).")
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Print the last N matching lines (with -f: before following).",
)
@click.option(
    "--level",
    type=click.Choice(LEVELS, case_sensitive=False),
    help="Only this level and above (debug < info < warning < error < critical).",
)
@click.option("--stage", type=STAGE_CHOICE, help="Only records of this stage.")
@click.option("--gen-id", help="Only records of this generation (a prefix of the id is enough).")
@click.option("--model", help="Only records of this model id.")
@click.option(
    "--since", metavar="WHEN", help="Only records since WHEN: 30s, 10m, 2h, 1d, or an ISO time (UTC)."
)
@click.option(
    "--file",
    "source",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read this file instead of paths.log_file; - reads JSON lines from standard input.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the matching JSON lines unchanged (for jq).")
@click.pass_obj
def logs(
    obj: Context,
    follow: bool,
    count: int,
    level: str | None,
    stage: str | None,
    gen_id: str | None,
    model: str | None,
    since: str | None,
    source: str | None,
    as_json: bool,
) -> None:
    """Show the service's log (paths.log_file) as readable lines, newest last.

    One line per record: time (UTC), level, event, then gen_id, stage and model, then the other
    keys as key=value (long values cut short; --json shows them whole). Tracebacks follow their
    record, indented. Lines that are not JSON are shown as they are, with the record they follow.
    Colours only on a terminal. With -f, follows the file through log rotation.

    Under systemd the same records are in the journal: `journalctl -u daydreamd -o cat`
    prints them, and `--file -` reads them from a pipe (with -f, every matching line as it
    comes in; without, the last N once the pipe ends).

    \b
    Examples:
      daydreamctl logs                          the last 50 lines
      daydreamctl logs -f --level warning       warnings and errors as they happen
      daydreamctl logs --gen-id e_3f2a9c1d --since 2h
      daydreamctl logs --stage essay --model openai/gpt-4o-mini -n 200
      daydreamctl logs --json --since 1d | jq -r .error_type | sort | uniq -c
      journalctl -u daydreamd -o cat | daydreamctl logs --file - --level warning
    """
    try:
        start = parse_since(since, datetime.now(UTC)) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from exc
    log_filter = LogFilter(min_level=level, stage=stage, gen_id=gen_id, model=model, since=start)
    view = View(log_filter=log_filter, count=count, as_json=as_json, color=_use_color())
    if source is None:
        settings = obj.settings()
        if settings.paths.log_file is None:
            config = settings.config_path or "the config file (--config, default ./config.toml)"
            raise click.ClickException(NO_LOG_FILE.format(config=config))
        source = str(settings.paths.log_file)
    try:
        show_logs(source, view, follow=follow, echo=click.echo)
    except KeyboardInterrupt:
        if not follow:
            raise
    except BrokenPipeError:
        _quiet_stdout()


def _use_color() -> bool:
    """Colours when stdout is a terminal, unless NO_COLOR is set or click was told otherwise."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.color is not None:
        return ctx.color
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def _quiet_stdout() -> None:
    """The reader went away (``| head``): point stdout at /dev/null so exiting does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# -- reading -----------------------------------------------------------------------------------


def show_logs(
    source: str | Path,
    view: View,
    *,
    follow: bool,
    echo: Callable[[str], None],
    stdin: BinaryIO | None = None,
    poll_interval: float = POLL_INTERVAL,
    should_stop: Callable[[], bool] = _never,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the last ``view.count`` matching lines of ``source`` and, with ``follow``, every new one.

    ``source`` ``-`` is ``stdin`` (default: the process's standard input): without ``follow``
    it is read to its end and the last lines printed, with ``follow`` each matching line is
    printed as it arrives. Following a file returns when ``should_stop()`` is true (checked at
    least every ``poll_interval`` seconds); a missing file is waited for.
    """

    def emit(entry: Entry) -> None:
        if not view.as_json:
            echo(format_entry(entry, color=view.color))
        elif entry.record is not None:
            echo(entry.raw)

    if str(source) == STDIN:
        _show_stream(stdin or sys.stdin.buffer, view, follow, emit, should_stop)
        return
    path = Path(source)
    handle = _open(path)
    if handle is None and not follow:
        raise click.ClickException(f"{path} does not exist (yet): the service creates it when it starts")
    offset = 0
    tail = Tail(entries=[], last_shown=None)
    if handle is not None:
        try:
            size = os.fstat(handle.fileno()).st_size
            offset = complete_end(handle, size) if follow else size
            tail = select_last(lines_backwards(handle, offset), view.log_filter, view.count)
            for entry in tail.entries:
                emit(entry)
        finally:
            if not follow:
                handle.close()
    if not follow:
        return
    if handle is None:
        click.echo(f"waiting for {path} to appear (Ctrl-C to stop)", err=True)
    selector = Selector(view.log_filter, previous=tail.last_shown)
    lines = follow_lines(
        path, handle=handle, offset=offset, poll_interval=poll_interval, should_stop=should_stop, sleep=sleep
    )
    for line in lines:
        if (followed := selector.feed(line)) is not None:
            emit(followed)


def _show_stream(
    stream: BinaryIO,
    view: View,
    follow: bool,
    emit: Callable[[Entry], None],
    should_stop: Callable[[], bool],
) -> None:
    selector = Selector(view.log_filter)
    last: deque[Entry] = deque(maxlen=view.count)
    for line in stream:
        entry = selector.feed(_decode(line))
        if entry is not None:
            if follow:
                emit(entry)
            else:
                last.append(entry)
        if should_stop():
            break
    for entry in last:
        emit(entry)


def _open(path: Path) -> BinaryIO | None:
    """``path`` opened for reading, None if it does not exist; other failures are CLI errors."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc


def _decode(line: bytes) -> str:
    """A line as text: undecodable bytes replaced, no line end, no NULs (the hole a writer without
    O_APPEND leaves after copytruncate)."""
    return line.decode("utf-8", "replace").rstrip("\r\n").lstrip("\x00")


def lines_backwards(handle: BinaryIO, end: int, block_size: int = BLOCK_SIZE) -> Iterator[str]:
    """The lines of ``handle`` before byte ``end``, last first, reading blocks from the end backwards."""
    fd = handle.fileno()
    pos = end
    carry = b""
    while pos > 0:
        start = max(0, pos - block_size)
        pieces = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        pos = start
        carry = pieces[0]
        for piece in reversed(pieces[1:]):
            yield _decode(piece)
    if end > 0:
        yield _decode(carry)


def complete_end(handle: BinaryIO, size: int, block_size: int = BLOCK_SIZE) -> int:
    """The offset just after the last newline before ``size`` (0 if none): where whole lines end."""
    fd = handle.fileno()
    pos = size
    while pos > 0:
        start = max(0, pos - block_size)
        newline = os.pread(fd, pos - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        pos = start
    return 0


# -- following ---------------------------------------------------------------------------------


def follow_lines(
    path: Path,
    *,
    handle: BinaryIO | None = None,
    offset: int = 0,
    poll_interval: float = POLL_INTERVAL,
    should_stop: Callable[[], bool] = _never,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Each line written to ``path`` after ``offset`` of ``handle`` (its start if None), as it comes.

    Survives rotation: when ``path`` names another file (logrotate renamed it and a new one was
    created) the old file is read to its end, then the new one from its start; when the file
    shrinks (copytruncate) it is read again from its start. Polls every ``poll_interval``
    seconds while nothing is new; stops when ``should_stop()`` is true.
    """
    follower = Follower(path, handle=handle, offset=offset)
    try:
        while not should_stop():
            lines = follower.poll()
            if lines:
                yield from lines
            else:
                sleep(poll_interval)
    finally:
        follower.close()


class Follower:
    """Reads what is appended to a path, reopening it when rotation replaces or truncates it."""

    def __init__(self, path: Path, *, handle: BinaryIO | None = None, offset: int = 0) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        self.identity: tuple[int, int] | None = None
        self.pos = 0
        self.partial = b""
        self.head = b""
        self.fingerprint = b""
        if handle is not None:
            self._attach(handle, offset)

    def poll(self) -> list[str]:
        """The complete lines added since the last poll (none: nothing new, or no file yet)."""
        if self.handle is None:
            handle = _open(self.path)
            if handle is None:
                return []
            self._attach(handle, 0)
        lines = self._read()
        if lines:
            return lines
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != self.identity:
            lines = self._read()  # what the writer added to the old file before it moved on
            if self.partial:
                lines.append(_decode(self.partial))  # the old file is finished: its last line too
            self.close()
            return lines + (self.poll() if stat is not None else [])
        return lines

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle = None
        self.identity = None
        self.partial = b""
        self.head = b""
        self.fingerprint = b""

    def _attach(self, handle: BinaryIO, offset: int) -> None:
        stat = os.fstat(handle.fileno())
        self.handle = handle
        self.identity = (stat.st_dev, stat.st_ino)
        self.pos = offset
        self.partial = b""
        start = max(0, offset - FINGERPRINT)
        self.head = os.pread(handle.fileno(), min(offset, FINGERPRINT), 0)
        self.fingerprint = os.pread(handle.fileno(), offset - start, start)

    def _read(self) -> list[str]:
        assert self.handle is not None
        fd = self.handle.fileno()
        size = os.fstat(fd).st_size
        lines: list[str] = []
        if size < self.pos or not self._same_before():
            # Truncated (copytruncate), perhaps already written up to or past where we were: start over.
            if self.partial:
                lines.append(_decode(self.partial))
            self.pos, self.partial, self.head, self.fingerprint = 0, b"", b"", b""
        for _ in range(READ_BLOCKS):
            chunk = os.pread(fd, BLOCK_SIZE, self.pos)
            if not chunk:
                break
            if self.pos < FINGERPRINT:
                self.head += chunk[: FINGERPRINT - self.pos]
            self.pos += len(chunk)
            self.fingerprint = (self.fingerprint + chunk)[-FINGERPRINT:]
            *complete, self.partial = (self.partial + chunk).split(b"\n")
            lines.extend(_decode(line) for line in complete)
        return lines

    def _same_before(self) -> bool:
        """Whether the file's first bytes and those just before the read position are still the ones read."""
        assert self.handle is not None
        fd = self.handle.fileno()
        size = len(self.fingerprint)
        if size and os.pread(fd, size, self.pos - size) != self.fingerprint:
            return False
        return not self.head or os.pread(fd, len(self.head), 0) == self.head
