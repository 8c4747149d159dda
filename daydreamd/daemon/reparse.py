"""Re-parsing saved replies when the way they are parsed changes: no call, nothing paid again.

A template's generations depend on its parser, that parser's version and, for evaluations, the
verdict label and scale (together, the *parse key*). After every rebuild the re-parser compares
each LLM template's key with the one last applied (:class:`~daydreamd.storage.parse_state.
ParseState`); for the templates whose key moved it reads each finished generation's ``raw.txt``
again, rewrites ``parsed.txt`` and ``metadata.json`` (the old value goes into
``parse_history``), updates the run state, logs every changed value and publishes one
``reparsed`` event. A reply the new parser cannot read fails as ``parse_error``; a failed parse
that now succeeds becomes ``done``. Children made from a draft whose parsed text changed are
flagged (``parent_changed``), not re-run: that needs an approval.

``daydreamctl reparse`` runs the same thing on demand, for every finished generation of the
templates it names, whatever their key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.to_thread
import structlog

from daydreamd.core.errors import ParseError
from daydreamd.core.experiment import Experiment, Generator, Template
from daydreamd.core.parsers import failure_provenance, parse_saved, template_parse_key
from daydreamd.core.prompts import normalize_newlines
from daydreamd.core.stages import State
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.events import EventBus
from daydreamd.storage.gens import METADATA, PARSED, RAW, GensStore
from daydreamd.storage.parse_state import ParseState, Reparsed, ReparseRow
from daydreamd.storage.store import Store

log = structlog.get_logger("daydreamd.daemon.reparse")

BATCH = 500
"""Generations read, parsed and recorded per step (one transaction each)."""
_SHOWN = 5


@dataclass(slots=True)
class ReparseSummary:
    """What one re-parse pass did."""

    templates: int = 0
    checked: int = 0
    changed: int = 0
    now_failed: int = 0
    now_done: int = 0
    no_reply: int = 0
    """Finished generations without a saved ``raw.txt`` (nothing to re-parse)."""

    def to_json(self) -> dict[str, int]:
        """The counts, as the control API and the event carry them."""
        return asdict(self)


def reparsable(experiment: Experiment) -> list[Template]:
    """The templates whose generations have a saved reply to parse (LLM templates)."""
    return [t for t in experiment.templates if t.generator is Generator.LLM]


def _slot(template: Template) -> tuple[str, str]:
    return str(template.stage), template.template_id


def reparse_one(gens: GensStore, template: Template, row: ReparseRow, now: str) -> Reparsed | None:
    """Parse one saved reply again and rewrite its files; None when no reply is saved."""
    stage, gen_id = str(template.stage), row.gen_id
    raw = gens.try_read_text(stage, gen_id, RAW)
    if raw is None:
        return None
    metadata = gens.try_read_metadata(stage, gen_id) or {}
    old_parsed = gens.try_read_text(stage, gen_id, PARSED) if row.state is State.DONE else None
    key = template_parse_key(template)
    try:
        parsed = parse_saved(stage, template.parser, normalize_newlines(raw), template.verdict)
        new_state, text, info, error = State.DONE, parsed.text, parsed.provenance, None
    except ParseError as exc:
        new_state, text, error = State.FAILED, None, str(exc)
        info = failure_provenance(stage, template.parser, template.verdict, exc)
    result = Reparsed(
        gen_id=gen_id,
        old_state=row.state,
        new_state=new_state,
        old_key=row.parse_key,
        new_key=key,
        old_parsed=old_parsed,
        new_parsed=text,
        old_score=row.score,
        new_score=parsed.score if new_state is State.DONE else None,
        parse_info=json.dumps(info, separators=(",", ":")),
        error_message=error,
    )
    _rewrite(gens, stage, gen_id, metadata, result, info, now)
    return result


def _rewrite(
    gens: GensStore,
    stage: str,
    gen_id: str,
    metadata: dict[str, Any],
    result: Reparsed,
    info: dict[str, object],
    now: str,
) -> None:
    """parsed.txt (or its removal), then metadata.json with the replaced value in its history."""
    if result.changed:
        history = list(metadata.get("parse_history") or [])
        history.append(
            {
                "at": now,
                "key": result.old_key,
                "status": str(result.old_state),
                "parsed": result.old_parsed,
                "error": metadata.get("error"),
            }
        )
        metadata["parse_history"] = history
    metadata["parse"] = info
    metadata["status"] = str(result.new_state)
    metadata["error"] = (
        None if result.new_state is State.DONE else {"kind": "parse_error", "message": result.error_message}
    )
    files: list[tuple[str, str | dict[str, Any]]] = [(METADATA, metadata)]
    if result.new_parsed is None:
        gens.remove_parsed(stage, gen_id)
    elif result.new_parsed != result.old_parsed:
        files.insert(0, (PARSED, result.new_parsed))
    gens.save(stage, gen_id, files)


class Reparser:
    """Runs re-parse passes, one at a time."""

    def __init__(self, store: Store, gens: GensStore, bus: EventBus) -> None:
        self.state = ParseState(store)
        self.gens = gens
        self.bus = bus
        self._lock = anyio.Lock()

    async def after_rebuild(self, experiment: Experiment) -> ReparseSummary | None:
        """Re-parse the templates whose parse key moved since it was last applied (None: none did)."""
        async with self._lock:
            recorded = await self.state.recorded_keys()
            keys = {_slot(t): template_parse_key(t) for t in reparsable(experiment)}
            moved = [t for t in reparsable(experiment) if recorded.get(_slot(t)) != keys[_slot(t)]]
            if not moved:
                return None
            summary = await self._run(moved, force=False, reason="parse key changed")
            await self.state.record_keys({_slot(t): keys[_slot(t)] for t in moved})
            return summary

    async def run(self, templates: Sequence[Template], *, reason: str) -> ReparseSummary:
        """Re-parse every finished generation of ``templates`` (on demand: whatever their key)."""
        async with self._lock:
            return await self._run(templates, force=True, reason=reason)

    async def _run(self, templates: Sequence[Template], *, force: bool, reason: str) -> ReparseSummary:
        summary = ReparseSummary(templates=len(templates))
        shown: list[dict[str, Any]] = []
        for template in templates:
            key = template_parse_key(template)
            rows = await self.state.candidates(str(template.stage), template.template_id, key, force=force)
            for start in range(0, len(rows), BATCH):
                batch = rows[start : start + BATCH]
                results = await anyio.to_thread.run_sync(self._files, template, batch)
                await self.state.apply(results, reason=reason)
                _count(summary, batch, results, shown)
        if summary.checked:
            log.info("reparsed", reason=reason, **summary.to_json())
            self.bus.publish("reparsed", reason=reason, **summary.to_json(), first_changes=shown)
        return summary

    def _files(self, template: Template, rows: Sequence[ReparseRow]) -> list[Reparsed]:
        now = utc_now()
        return [r for r in (reparse_one(self.gens, template, row, now) for row in rows) if r is not None]


def _count(
    summary: ReparseSummary,
    batch: Sequence[ReparseRow],
    results: Iterable[Reparsed],
    shown: list[dict[str, Any]],
) -> None:
    results = list(results)
    summary.checked += len(results)
    summary.no_reply += len(batch) - len(results)
    for r in results:
        if not r.changed:
            continue
        summary.changed += 1
        summary.now_failed += r.old_state is State.DONE and r.new_state is State.FAILED
        summary.now_done += r.old_state is State.FAILED and r.new_state is State.DONE
        change = {"gen_id": r.gen_id, "old": r.old_parsed, "new": r.new_parsed, "state": str(r.new_state)}
        log.info("generation_reparsed", **change, old_state=str(r.old_state), key=r.new_key)
        if len(shown) < _SHOWN:
            shown.append(change)
