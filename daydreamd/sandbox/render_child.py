"""The rendering process: renders templates it is sent, one at a time, under hard limits.

Started by :class:`daydreamd.sandbox.render_process.RenderProcess` as
``python -m daydreamd.sandbox.render_child FD LIMITS_JSON`` with a minimal environment (no API
key: a template that escaped the Jinja2 sandbox would find nothing to steal). It speaks JSON,
never pickle, over the socket ``FD``, so a compromised child cannot run code in the service.

Its own limits are the second line behind the service's timer: an address-space cap turns a
runaway allocation into a ``MemoryError`` answered as a render error, and an alarm whose default
action ends the process fires a second after the time limit, so a child left rendering forever
(its service gone, say) cannot outlive that render.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from daydreamd.core.errors import TemplateError, TemplateLimitError
from daydreamd.core.templates import Renderer, RenderLimits

ALARM_MARGIN_S = 1.0
"""How long after ``timeout_s`` the child's own alarm ends it, should the service not have."""


def main(argv: list[str]) -> int:
    """Serve render requests on the inherited socket until it closes."""
    fd = int(argv[1])
    limits = RenderLimits(**json.loads(argv[2]))
    conn = Connection(fd)
    renderer = Renderer(limits)
    _limit_resources(limits)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm kills; nothing may catch it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the service's to handle
    conn.send_bytes(b'{"ready": true}')
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except EOFError:
            return 0
        signal.setitimer(signal.ITIMER_REAL, limits.timeout_s + ALARM_MARGIN_S)
        try:
            answer = _render(renderer, request)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send_bytes(json.dumps(answer).encode())


def _render(renderer: Renderer, request: dict[str, Any]) -> dict[str, Any]:
    template_id, stage = request["template_id"], request["stage"]
    try:
        prompt = renderer.render(request["text"], request["variables"], template_id=template_id, stage=stage)
    except TemplateLimitError as exc:
        return {"error": str(exc), "limit": True}
    except TemplateError as exc:
        return {"error": str(exc), "limit": False}
    except MemoryError:
        limit = renderer.limits.memory_mb
        message = (
            f"template {stage}/{template_id}: rendering needed more than {limit} MB of memory "
            "(render.memory_mb); check the template's loops and repetitions"
        )
        return {"error": message, "limit": True}
    except Exception as exc:  # anything else a template provokes is still the template's fault
        return {"error": f"template {stage}/{template_id}: {type(exc).__name__}: {exc}", "limit": False}
    return {"prompt": prompt}


def _limit_resources(limits: RenderLimits) -> None:
    """Cap memory; no core dumps (a dump would hold the rendered inputs)."""
    cap = limits.memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o077)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
