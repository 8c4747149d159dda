"""Rendering in child processes that can be killed: the time and memory limits of ``[render]``.

A template is code. Inside the service a loop like ``{% for i in range(100000) %}`` nested three
deep would hold a worker thread (and the GIL) for hours, and no thread can be stopped from the
outside. So prompts are rendered by a few child processes (``render.workers``), each running
:class:`~daydreamd.core.templates.Renderer` (which enforces the size limits itself) under an
address-space cap. The calling thread waits ``render.timeout_s`` for the answer; past it the
child is killed, the render fails as a :class:`TemplateLimitError`, and a new child starts on
the next render. A template that hits a limit twice is not rendered again until its text
changes, so a thousand generations of a runaway template cost seconds, not a thousand timeouts.

Children get a minimal environment (never the API key) and talk JSON, not pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from daydreamd.core.errors import DaydreamError, TemplateError, TemplateLimitError
from daydreamd.core.templates import RenderLimits

START_TIMEOUT_S = 60.0
"""How long a new child may take to import Jinja2 and say it is ready (a loaded machine is slow)."""
STRIKES = 2
"""Limit hits after which a template text is refused without rendering."""
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE")
"""The only variables a child inherits; PYTHONPATH is set to find this package."""
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``daydreamd`` package, whether installed or run from a checkout."""


class RenderUnavailableError(DaydreamError):
    """No rendering process could be started, or the renderer was closed (not the template's fault)."""


class _Child:
    """One rendering process and the socket to it; used by one thread at a time."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.process: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None

    def ask(self, request: bytes) -> dict[str, Any] | None:
        """The child's answer to ``request``; None when it took longer than the time limit."""
        conn = self._connection()
        conn.send_bytes(request)
        if not conn.poll(self.limits.timeout_s):
            self.stop()
            return None
        answer: dict[str, Any] = json.loads(conn.recv_bytes())
        return answer

    def _connection(self) -> Connection:
        if self.conn is None or self.process is None or self.process.poll() is not None:
            self.stop()
            self._start()
        assert self.conn is not None
        return self.conn

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV}
        env["PYTHONPATH"] = str(_PACKAGE_ROOT)
        command = [
            sys.executable,
            "-m",
            "daydreamd.sandbox.render_child",
            str(theirs.fileno()),
            json.dumps(asdict(self.limits)),
        ]
        try:
            self.process = subprocess.Popen(
                command, env=env, cwd="/", pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            ours.close()
            raise RenderUnavailableError(f"cannot start a rendering process: {exc}") from exc
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        if not self.conn.poll(START_TIMEOUT_S):
            self.stop()
            raise RenderUnavailableError(f"a rendering process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            self.conn.recv_bytes()
        except EOFError:
            code = self.stop()
            raise RenderUnavailableError(f"a rendering process exited at start (code {code})") from None

    def stop(self) -> int | None:
        """Kill the child (if any) and reap it; its exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            code = self.process.wait()
            self.process = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code


class RenderProcess:
    """Renders prompts in killable child processes; thread-safe; a context manager.

    Drop-in for :class:`~daydreamd.core.templates.Renderer` (the ``PromptRenderer`` protocol).
    Children start on first use and stop on :meth:`close`.
    """

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._children = [_Child(self.limits) for _ in range(max(1, self.limits.workers))]
        for child in self._children:
            self._idle.put(child)
        self._strikes: dict[str, tuple[int, str]] = {}
        """Template text -> (limit hits, the last reason): an edited template starts afresh."""
        self._lock = threading.Lock()
        self._closed = False

    def render(self, text: str, variables: Mapping[str, Any], *, template_id: str, stage: str) -> str:
        """Render ``text``; raise TemplateError (TemplateLimitError past a limit) naming the template."""
        with self._lock:
            strikes, reason = self._strikes.get(text, (0, ""))
        if strikes >= STRIKES:
            raise TemplateLimitError(
                f"template {stage}/{template_id}: not rendered: it went past a render limit "
                f"{strikes} times ({reason}); fix the template, then retry its generations",
                template_id=template_id,
                stage=stage,
            )
        request = json.dumps(
            {"text": text, "variables": dict(variables), "template_id": template_id, "stage": stage}
        ).encode()
        answer = self._ask(request, template_id=template_id, stage=stage)
        if "prompt" in answer:
            prompt: str = answer["prompt"]
            return prompt
        message: str = answer["error"]
        if answer.get("limit"):
            self._strike(text, message)
            raise TemplateLimitError(message, template_id=template_id, stage=stage)
        raise TemplateError(message, template_id=template_id, stage=stage)

    def _ask(self, request: bytes, *, template_id: str, stage: str) -> dict[str, Any]:
        if self._closed:
            raise RenderUnavailableError("the renderer is closed (the service is stopping)")
        child = self._idle.get()
        try:
            answer = child.ask(request)
            why = f"rendering took longer than {self.limits.timeout_s:g} s (render.timeout_s)"
        except (EOFError, OSError):
            child.stop()  # before another thread can take it
            answer = None
            why = "the rendering process died while rendering (most likely out of memory: render.memory_mb)"
        finally:
            self._idle.put(child)
        if self._closed:
            raise RenderUnavailableError("the renderer is closed (the service is stopping)")
        if answer is not None:
            return answer
        return {"error": f"template {stage}/{template_id}: {why}; check the template's loops", "limit": True}

    def _strike(self, text: str, reason: str) -> None:
        with self._lock:
            count, _ = self._strikes.get(text, (0, ""))
            self._strikes[text] = (count + 1, reason.split(": ", 1)[-1])

    def pids(self) -> list[int]:
        """The process ids of the children running now (for diagnostics and tests)."""
        return [c.process.pid for c in self._children if c.process is not None and c.process.poll() is None]

    def close(self) -> None:
        """Stop every child; renders still waiting fail with RenderUnavailableError."""
        self._closed = True
        for child in self._children:
            with contextlib.suppress(OSError):
                child.stop()

    def __enter__(self) -> RenderProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
