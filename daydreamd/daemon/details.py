"""One generation in full, as ``GET /v1/generations/{gen_id}`` and ``daydreamctl show`` present it.

The run-state row with its attempts, the chain of its parents, the files it has on disk with
their sizes, how its reply was parsed (for a score: the line it came from) with every value a
re-parse replaced, and the end of its reply when it failed (what a person needs to see why).
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread

from daydreamd.core.stages import State
from daydreamd.storage.gens import GensStore
from daydreamd.storage.parse_state import ParseState
from daydreamd.storage.store import Store

PARENT_FIELDS = ("gen_id", "stage", "state", "template_id", "llm_model_id")
TAIL_LINES = 15
TAIL_CHARS = 2000


async def generation_detail(store: Store, gens: GensStore, gen_id: str) -> dict[str, Any] | None:
    """One generation with its attempts, files, parent chain, and the reply's tail if it failed."""
    row = await store.generation(gen_id)
    if row is None:
        return None
    parents = []
    parent_id = row["parent_gen_id"]
    while parent_id:
        parent = await store.generation(parent_id)
        if parent is None:
            break
        parents.append({k: parent[k] for k in PARENT_FIELDS})
        parent_id = parent["parent_gen_id"]
    files, tail = await anyio.to_thread.run_sync(_files_and_tail, gens, row)
    info = row.pop("parse_info", None)
    history = await ParseState(store).history(gen_id)
    parse = json.loads(info) if info else None
    return {
        **row,
        "parse": parse,
        "parse_history": history,
        "parents": parents,
        "files": files,
        "reply_tail": tail,
    }


def _files_and_tail(gens: GensStore, row: dict[str, Any]) -> tuple[dict[str, int], str | None]:
    """The generation's files with their sizes, and the end of its reply when it failed."""
    directory = gens.directory(row["stage"], row["gen_id"])
    files = (
        {
            gens.relative_file(row["stage"], row["gen_id"], p.name): p.stat().st_size
            for p in sorted(directory.glob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
        if directory.is_dir()
        else {}
    )
    tail = None
    if row["state"] == State.FAILED:
        raw = gens.read_text(row["stage"], row["gen_id"], "raw.txt")
        if raw is not None:
            tail = "\n".join(raw.rstrip("\n").splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]
    return files, tail
