"""Does the control socket stay usable, and the log small, while clients abuse it?

A real daemon (mock provider, the example experiment, the socket's default limits: 256
connections, 5 s header and keep-alive timeouts) is attacked by a separate process that:

* opens ``--idle`` (default 10,000) connections that never send a byte, and with ``--churn`` (the
  default) opens a new one for each the daemon closes, so the pressure lasts the whole run;
* runs ``--slowloris`` (default 50) clients that send a request line, then one header byte every
  ``--trickle-s`` (default 0.5 s), each replaced by a new one when the daemon closes it.

Meanwhile two well-behaved clients, one connection per request, ask for ``/v1/status``
``--samples`` times each (default 50), 0.1 s apart, after a baseline of the same without the
attack: the stdlib client ``daydreamctl`` uses (``ServiceClient``: its socket has a timeout, so its
connect gives up at once when the listen backlog is full) and one whose connect waits for room in
the backlog. Reported: status latency p50, p99 and max with and without the attack (and the failed
requests), the daemon's open descriptors (``/proc/<pid>/fd``) during the attack, what the attacker
saw (connections made, refused with EAGAIN by a full backlog, closed by the daemon; how long
slowloris clients lasted), the growth of the daemon's log (its JSON log file and its stdout) during
the attack, whether it is still alive, and its exit code on SIGTERM.

The attacker raises its soft RLIMIT_NOFILE to the hard limit; if the hard limit is too low for
``--idle`` + ``--slowloris`` connections, it opens what it can and the JSON says so
(``attacker.open_files``).

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/socket_abuse.py [--idle 10000] [--slowloris 50] [--samples 50]

It prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine
from bench.workdir import bench_root
from daydreamd.cli.client import ServiceClient, ServiceError, ServiceUnavailable
from tests.integration.daemon import Daemon, fast_config

SLOWLORIS_REQUEST_LINE = b"GET /v1/status HTTP/1.1\r\nHost: daydreamd\r\nX-Slow: "
HEADROOM_FDS = 64
"""Descriptors the attacker keeps for itself beyond its connections."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"samples": 0}
    ms = [value * 1000 for value in latencies]
    return {
        "samples": len(ms),
        "p50_ms": round(_percentile(ms, 0.5), 1),
        "p99_ms": round(_percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


# -- the attacker (its own process) -----------------------------------------------------------


def _raise_own_limit(wanted: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    usable = soft - HEADROOM_FDS
    return {
        "soft": soft,
        "hard": "unlimited" if hard == resource.RLIM_INFINITY else hard,
        "wanted": wanted + HEADROOM_FDS,
        "too_low": usable < wanted,
        "connections_possible": min(wanted, usable),
    }


class _Attack:
    """Idle and slowloris connections on one epoll, re-opened as the daemon closes them."""

    def __init__(self, path: str, idle: int, slowloris: int, churn: bool) -> None:
        self.path, self.idle_target, self.slow_target, self.churn = path, idle, slowloris, churn
        self.epoll = select.epoll()
        self.idle: dict[int, socket.socket] = {}
        self.slow: dict[int, tuple[socket.socket, float]] = {}
        self.counts = {
            "connects": 0,
            "eagain": 0,
            "closed_by_daemon_idle": 0,
            "closed_by_daemon_slowloris": 0,
            "answered_503": 0,
        }
        self.slow_lifetimes: list[float] = []
        self.idle_opened_once = 0

    def connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except BlockingIOError:  # the listen backlog is full
            sock.close()
            self.counts["eagain"] += 1
            return None
        except OSError:
            sock.close()
            raise
        self.counts["connects"] += 1
        self.epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return sock

    def top_up(self, deadline: float) -> None:
        """Open connections until the targets are met, the backlog is full or ``deadline`` passes."""
        while len(self.slow) < self.slow_target and time.monotonic() < deadline:
            sock = self.connect()
            if sock is None:
                return
            with contextlib.suppress(OSError):
                sock.send(SLOWLORIS_REQUEST_LINE)
            self.slow[sock.fileno()] = (sock, time.monotonic())
        while time.monotonic() < deadline:
            if len(self.idle) >= self.idle_target or (
                not self.churn and self.idle_opened_once >= self.idle_target
            ):
                return
            sock = self.connect()
            if sock is None:
                return
            self.idle[sock.fileno()] = sock
            self.idle_opened_once += 1

    def reap(self, timeout_s: float) -> None:
        """Close what the daemon closed (recording it)."""
        for fd, _ in self.epoll.poll(timeout_s):
            sock = self.idle.get(fd) or (self.slow[fd][0] if fd in self.slow else None)
            if sock is None:
                continue
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                self.counts["answered_503"] += 1
            elif data:
                continue
            self.epoll.unregister(fd)
            sock.close()
            if fd in self.idle:
                del self.idle[fd]
                self.counts["closed_by_daemon_idle"] += 1
            else:
                _, opened = self.slow.pop(fd)
                self.slow_lifetimes.append(time.monotonic() - opened)
                self.counts["closed_by_daemon_slowloris"] += 1

    def trickle(self) -> None:
        for sock, _ in list(self.slow.values()):
            with contextlib.suppress(OSError):  # closed: reap() sees it
                sock.send(b"a")

    def close(self) -> None:
        for sock in list(self.idle.values()) + [s for s, _ in self.slow.values()]:
            sock.close()
        self.epoll.close()


def _attacker(
    path: str, idle: int, slowloris: int, churn: bool, trickle_s: float, stop: Event, report: Connection
) -> None:
    limit = _raise_own_limit(idle + slowloris)
    possible = limit["connections_possible"]
    idle = max(0, min(idle, possible - slowloris))
    attack = _Attack(path, idle, slowloris, churn)
    report.send({"phase": "started"})
    started = time.monotonic()
    opened_all_s: float | None = None
    next_trickle = started
    held: list[int] = []
    while not stop.is_set():
        attack.reap(0 if opened_all_s is None else 0.02)
        attack.top_up(time.monotonic() + 0.02)
        if opened_all_s is None and attack.idle_opened_once >= idle:
            opened_all_s = round(time.monotonic() - started, 2)
        if time.monotonic() >= next_trickle:
            attack.trickle()
            held.append(len(attack.idle) + len(attack.slow))
            next_trickle += trickle_s
    lifetimes = attack.slow_lifetimes
    report.send(
        {
            "phase": "done",
            "open_files": limit,
            "idle_target": idle,
            "slowloris_target": slowloris,
            "churn": churn,
            "seconds": round(time.monotonic() - started, 2),
            "opened_all_idle_after_s": opened_all_s,
            **attack.counts,
            "client_side_open_median": int(statistics.median(held)) if held else None,
            "slowloris_lifetime_s": {
                "closed": len(lifetimes),
                "min": round(min(lifetimes), 2) if lifetimes else None,
                "median": round(statistics.median(lifetimes), 2) if lifetimes else None,
                "max": round(max(lifetimes), 2) if lifetimes else None,
            },
        }
    )
    attack.close()


# -- the measurement --------------------------------------------------------------------------


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _soft_nofile(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def _blocking_connect_status(path: Path) -> None:
    """``GET /v1/status`` whose connect waits for room in a full listen backlog (no timeout on it).

    ``daydreamctl``'s client sets a timeout on its socket, which makes connect() non-blocking: on a
    full backlog, AF_UNIX answers EAGAIN at once, and the client gives up. A blocking connect
    waits in the kernel until the daemon accepts.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
        sock.settimeout(10.0)
        connection = http.client.HTTPConnection("daydreamd")
        connection.sock = sock
        connection.request("GET", "/v1/status", headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {body[:200]!r}")
        json.loads(body)
    finally:
        sock.close()


Samples = dict[str, tuple[list[float], list[str]]]


def _status_samples(client: ServiceClient, samples: int, pid: int) -> tuple[Samples, list[int]]:
    """``samples`` rounds 0.1 s apart of one status request by each client; and the daemon's fds."""
    results: Samples = {"daydreamctl_client": ([], []), "blocking_connect": ([], [])}
    calls = {
        "daydreamctl_client": lambda: client.get("/v1/status"),
        "blocking_connect": lambda: _blocking_connect_status(client.socket_path),
    }
    fds: list[int] = []
    for _ in range(samples):
        for name, call in calls.items():
            latencies, failures = results[name]
            started = time.perf_counter()
            try:
                call()
                latencies.append(time.perf_counter() - started)
            except (ServiceUnavailable, ServiceError, OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        fds.append(_fds(pid))
        time.sleep(0.1)
    return results, fds


def _summaries(results: Samples) -> dict[str, Any]:
    return {
        name: {**_latency_summary(latencies), "failed": len(failures), "failures": sorted(set(failures))[:3]}
        for name, (latencies, failures) in results.items()
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dd-abuse-", dir=bench_root()))
    try:
        daemon = Daemon(root, fast_config(None, provider="mock"))
        try:
            await daemon.start(deadline_s=60)
            assert daemon.process is not None
            pid = daemon.process.pid
            client = ServiceClient(daemon.socket, timeout=10.0)
            baseline, base_fds = await anyio.to_thread.run_sync(_status_samples, client, args.samples, pid)
            log_file, stdout = root / "state" / "dd.log", daemon.stdout
            before = {"log": _size(log_file), "stdout": _size(stdout)}
            lines_before = {"log": _lines(log_file), "stdout": _lines(stdout)}

            stop = multiprocessing.Event()
            receive, send = multiprocessing.Pipe(duplex=False)
            attacker = multiprocessing.Process(
                target=_attacker,
                args=(
                    os.fspath(daemon.socket),
                    args.idle,
                    args.slowloris,
                    args.churn,
                    args.trickle_s,
                    stop,
                    send,
                ),
            )
            attacker.start()
            await anyio.to_thread.run_sync(receive.recv)  # started: sampling begins with the flood
            attacked, fds = await anyio.to_thread.run_sync(_status_samples, client, args.samples, pid)
            # Hold the attack past the header timeout, so slowloris clients meet it.
            await anyio.sleep(max(0.0, args.hold_s - args.samples * 0.1))
            stop.set()
            seen = await anyio.to_thread.run_sync(receive.recv)
            await anyio.to_thread.run_sync(attacker.join, 30)
            stopped = time.monotonic()
            after = await daemon.wait_for(
                lambda s: s is not None, deadline_s=30, what="status after the attack"
            )
            answered_after_s = round(time.monotonic() - stopped, 3)
            alive = daemon.process.poll() is None
            closes = [
                line
                for line in log_file.read_text(errors="replace").splitlines()[lines_before["log"] :]
                if "control_connection_closed" in line
            ]
            result: dict[str, Any] = {
                "status_without_attack": _summaries(baseline),
                "status_under_attack": _summaries(attacked),
                "daemon": {
                    "alive_after": alive,
                    "status_after_attack_s": answered_after_s if after else None,
                    "open_files_soft_limit": _soft_nofile(pid),
                    "fds_before_attack": base_fds[-1] if base_fds else None,
                    "fds_during_attack_max": max(fds) if fds else None,
                    "log_file_growth_bytes": _size(log_file) - before["log"],
                    "log_file_growth_lines": _lines(log_file) - lines_before["log"],
                    "stdout_growth_bytes": _size(stdout) - before["stdout"],
                    "connection_closed_log_lines": len(closes),
                },
                "attacker": seen,
            }
            result["daemon"]["exit_code_on_sigterm"] = await daemon.stop(signal.SIGTERM)
            return result
        finally:
            daemon.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections (default 10,000)")
    parser.add_argument("--slowloris", type=int, default=50, help="slowloris clients (default 50)")
    parser.add_argument("--samples", type=int, default=50, help="status requests, each phase (default 50)")
    parser.add_argument("--trickle-s", type=float, default=0.5, help="seconds between slowloris bytes")
    parser.add_argument(
        "--churn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-open every connection the daemon closes (default: yes)",
    )
    parser.add_argument(
        "--hold-s", type=float, default=8.0, help="the attack lasts at least this long (default 8 s)"
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    result = anyio.run(measure, args)
    result["machine"] = machine(load_before)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
