"""systemd's ``sd_notify`` protocol, in a few lines over a datagram socket (async shell).

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The service sends newline-separated
``KEY=value`` datagrams there: ``READY=1`` once the socket is bound and the files are checked,
``STATUS=`` one-line summaries for ``systemctl status``, ``WATCHDOG=1`` pings from the event
loop (a wedged loop stops pinging and systemd restarts the service), ``RELOADING=1`` with
``MONOTONIC_USEC=`` on SIGHUP followed by ``READY=1``, and ``STOPPING=1`` on shutdown.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. A send never raises and logs
nothing: a missing or full socket returns False, it must not take the service down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from daydreamd.core.stages import LIVE_STATES, State
from daydreamd.core.status import ProblemStatus, ServiceStatus, StageCounts

STATES_COUNTED: tuple[State, ...] = LIVE_STATES
"""The states that make up a stage's total in :func:`status_line` (``retired`` rows are not counted)."""


class Notifier:
    """Sends notifications to the service manager; a no-op when there is none.

    Build it with :meth:`from_env`. Each method returns True when the datagram was sent.
    """

    __slots__ = ("address", "last_status", "watchdog_pid", "watchdog_usec")

    def __init__(
        self, address: str | None, *, watchdog_usec: str | None = None, watchdog_pid: str | None = None
    ) -> None:
        self.address = _socket_address(address)
        """The ``AF_UNIX`` address to send to (a leading NUL for the abstract namespace), or None."""
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self.last_status: str | None = None
        """The last ``STATUS=`` text sent, so periodic updates only send changes."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``env``."""
        return cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to talk to."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one datagram; False when disabled or when sending failed."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue on the manager's side must not block the loop
                sock.sendto(message, self.address)
        except (OSError, ValueError):
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup (or a reload) is complete; with an optional status line."""
        return self.send("READY=1", *self._status_fields(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: a one-line summary shown by ``systemctl status``."""
        return self.send(*self._status_fields(text))

    def reloading(self) -> bool:
        """``RELOADING=1`` with the ``CLOCK_MONOTONIC`` time in µs; send :meth:`ready` when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun (in-flight work is draining)."""
        return self.send("STOPPING=1", *self._status_fields(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds systemd waits for a ping (``WATCHDOG_USEC``), or None when no watchdog is meant for us.

        None when there is no notify socket, ``WATCHDOG_USEC`` is unset, not a positive integer,
        or ``WATCHDOG_PID`` names another process (the variables were inherited from a parent).
        """
        if self.address is None or not self.watchdog_usec:
            return None
        if self.watchdog_pid:
            try:
                if int(self.watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self.watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def _status_fields(self, text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        line = one_line(text)
        self.last_status = line
        return (f"STATUS={line}",)


def _socket_address(value: str | None) -> str | None:
    """``NOTIFY_SOCKET`` as an ``AF_UNIX`` address: ``/path`` as is, ``@name`` in the abstract namespace.

    Anything else (unset, empty, a relative path, ``vsock:`` which this service does not speak)
    means there is no manager to notify, as ``sd_notify`` does.
    """
    if not value or len(value) < 2:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def one_line(text: str) -> str:
    """``text`` on a single line: line breaks and NULs become spaces (a newline would start a new field)."""
    return " ".join(text.replace("\0", " ").splitlines()).strip()


async def watchdog_loop(notifier: Notifier, interval_s: float | None) -> None:
    """Ping every ``interval_s / 2`` from the event loop until cancelled; return at once without a watchdog.

    The pings come from the loop itself, not a thread: a loop blocked by synchronous work stops
    pinging, and systemd kills and restarts the service after ``WatchdogSec``.
    """
    if interval_s is None or interval_s <= 0 or not notifier.enabled:
        return
    period = interval_s / 2
    while True:
        notifier.watchdog()
        await anyio.sleep(period)


async def status_loop(
    notifier: Notifier,
    fetch: Callable[[], Awaitable[ServiceStatus | Mapping[str, Any]]],
    interval_s: float = 5.0,
) -> None:
    """Every ``interval_s``, send :func:`status_line` of ``await fetch()`` when it changed; until cancelled.

    Returns at once when there is no manager (no status is fetched for nobody). A failed fetch
    skips one update: the status line is a courtesy, never a reason to stop the service.
    """
    if not notifier.enabled:
        return
    while True:
        await anyio.sleep(interval_s)
        try:
            line = status_line(await fetch())
        except Exception:  # the next round tries again
            continue
        if line != notifier.last_status:
            notifier.status(line)


def status_line(status: ServiceStatus | Mapping[str, Any]) -> str:
    """A one-line summary of a ``/v1/status`` answer (or its JSON), for ``systemctl status`` (pure).

    ``cohort c_ab12 | draft 9/9 done | essay 3/18 (2 running) | evaluation 0/36 | 1 error in 1_raw
    | parked``: per stage done/total (total = every state but retired) with running, queued and
    failed counts when not zero; problems in ``1_raw``; whether the pool (or some models) is
    paused, or parked after a quota failure; the money spent since startup, when any.
    """
    status = ServiceStatus.coerce(status)
    cohort = status.cohort_id
    parts = [f"cohort {cohort}" if cohort else "no cohort"]
    if status.cohort_progress is not None:
        parts.append(status.cohort_progress.describe())
    for stage, counts in status.stages.items():
        parts.append(_stage_summary(stage, counts))
    problems = _problems_summary(status.errors)
    if problems:
        parts.append(problems)
    pool = status.pool
    if pool.paused:
        parts.append("paused")
    elif pool.paused_models:
        parts.append(f"{_plural(len(pool.paused_models), 'model')} paused")
    if pool.parked:
        parts.append("parked")
    parts.extend(trouble.what.replace("_", " ") for trouble in pool.troubles)
    if status.spent_usd > 0:
        parts.append(f"${status.spent_usd:.2f} spent")
    return one_line(" | ".join(parts))


def _stage_summary(stage: str, counts: StageCounts) -> str:
    total = sum(counts.count(state) for state in STATES_COUNTED)
    done = counts.done
    text = f"{stage} {done}/{total}"
    if total and done == total:
        text += " done"
    details = [
        f"{counts.count(state)} {state}"
        for state in (State.RUNNING, State.QUEUED, State.FAILED)
        if counts.count(state)
    ]
    if details:
        text += f" ({', '.join(details)})"
    return text


def _problems_summary(errors: Sequence[ProblemStatus]) -> str:
    n_errors = sum(1 for e in errors if e.is_error)
    n_warnings = len(errors) - n_errors
    found = [_plural(n_errors, "error"), _plural(n_warnings, "warning")]
    found = [f for f in found if f]
    return f"{', '.join(found)} in 1_raw" if found else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}" if n else ""
