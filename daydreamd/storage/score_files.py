"""Score rows and progress rebuilt from the gens store alone (``--from-files``).

Each evaluation's ``metadata.json`` and ``parsed.txt``, with its essay's and draft's
``metadata.json``, read through :class:`~daydreamd.storage.gens.GensStore`. Metadata written by
the old pipeline is accepted: ``model_id`` for ``llm_model_id``,
``draft_template``/``essay_template``/``evaluation_template`` for ``template_id``,
``evaluation_model`` for the judge, a missing ``status`` meaning "judge by ``parsed.txt``", and
a score on the last line of ``parsed.txt``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daydreamd.core.scores import SCORE_MAX_DEFAULT, ScoreRow
from daydreamd.core.stages import Stage
from daydreamd.storage.cohort_files import read_membership
from daydreamd.storage.gens import PARSED, GensStore
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.score_inputs import Loaded, RowContext, one_line_breaks, stage_order

_UNFINISHED = frozenset({"replied", "running", "queued", "pending"})


def _text(metadata: dict[str, Any], *keys: str) -> str:
    """The first non-empty string among ``keys`` (new names first, then the old pipeline's)."""
    for key in keys:
        value = metadata.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


@dataclass(frozen=True, slots=True)
class _Parent:
    template: str
    model: str
    parent: str
    combo: str


_NO_PARENT = _Parent("", "", "", "")


class _Parents:
    """Essay and draft metadata, each read once however many evaluations point at it."""

    def __init__(self, gens: GensStore) -> None:
        self.gens = gens
        self.cache: dict[tuple[str, str], _Parent] = {}

    def get(self, stage: str, gen_id: str) -> _Parent:
        if not gen_id:
            return _NO_PARENT
        key = (stage, gen_id)
        found = self.cache.get(key)
        if found is None:
            md = self.gens.try_read_metadata(stage, gen_id) or {}
            template_keys: tuple[str, ...] = ("template_id", f"{stage}_template")
            if stage == "essay":
                template_keys += ("generation_template",)
            elif stage == "draft":
                template_keys += ("link_template",)
            found = self.cache[key] = _Parent(
                sys.intern(_text(md, *template_keys)),
                sys.intern(_text(md, "llm_model_id", "model_id", "generation_model")),
                sys.intern(_text(md, "parent_gen_id")),
                sys.intern(_text(md, "combo_id")),
            )
        return found


def read_rows_from_files(data_dir: Path, *, cohort_id: str | None) -> Loaded:
    """Score rows rebuilt from ``data/gens/**`` alone (new and old-pipeline metadata)."""
    ctx = RowContext.load(data_dir, cohort_id)
    gen_ids = sorted(ctx.members) if ctx.members is not None else ctx.gens.gen_ids(Stage.EVALUATION)
    parents = _Parents(ctx.gens)
    rows = []
    for gid in gen_ids:
        row = _file_row(ctx, parents, gid)
        if row is not None:
            rows.append(row)
    return Loaded(ctx.fill_concepts(rows), "files", [])


def _file_row(ctx: RowContext, parents: _Parents, gid: str) -> ScoreRow | None:
    md = ctx.gens.try_read_metadata(Stage.EVALUATION, gid)
    if md is None:
        if not ctx.gens.exists(Stage.EVALUATION, gid, PARSED):
            return None  # never run (or not this store's): not a finished evaluation
        md = {}
    status = _text(md, "status")
    if status in _UNFINISHED:
        return None
    error = md.get("error")
    kind, message = "", ""
    if isinstance(error, dict):
        kind, message = _text(error, "kind", "type"), _text(error, "message")
    elif isinstance(error, str) and error:
        kind, message = "error", error
    message = one_line_breaks(message)
    score: float | None = None
    if status == "failed" or (not status and kind):
        kind = kind or "unknown"
    else:
        score, kind = ctx.read_score(gid)
        message = "" if score is not None else message
    essay_id = _text(md, "parent_gen_id")
    essay = parents.get("essay", essay_id)
    draft = parents.get("draft", essay.parent)
    template = sys.intern(_text(md, "template_id", "evaluation_template"))
    combo = sys.intern(_text(md, "combo_id") or essay.combo or draft.combo)
    replicate = md.get("replicate")
    return ScoreRow(
        gen_id=gid,
        essay_gen_id=sys.intern(essay_id),
        draft_gen_id=essay.parent,
        combo_id=combo,
        concept_ids=ctx.combos.get(combo, ()),
        draft_template=draft.template,
        essay_template=essay.template,
        generation_model=essay.model or draft.model,
        evaluation_template=template,
        evaluation_model=sys.intern(
            _text(md, "llm_model_id", "model_id", "evaluation_model", "evaluation_llm_model")
        ),
        replicate=replicate if isinstance(replicate, int) and not isinstance(replicate, bool) else 1,
        score=score,
        score_max=ctx.score_max.get(template, SCORE_MAX_DEFAULT),
        error_kind=kind,
        error_message=message,
        cohorts=ctx.cohorts(gid, _text(md, "cohort_id", "origin_cohort_id")),
    )


def progress_from_files(data_dir: Path, cohort_id: str) -> dict[str, dict[str, int]]:
    """Per stage: the cohort's size and how many of its generations are done or failed on disk."""
    path = DataLayout(data_dir).membership(cohort_id)
    if not path.is_file():
        return {}
    gens = GensStore(data_dir)
    progress: dict[str, dict[str, int]] = {}
    for stage, gen_id in read_membership(path, None):
        counts = progress.setdefault(stage, {"total": 0, "done": 0, "failed": 0, "pending": 0})
        counts["total"] += 1
        md = gens.try_read_metadata(stage, gen_id)
        status = _text(md, "status") if md is not None else ""
        done = status == "done" or (md is not None and not status and gens.exists(stage, gen_id, PARSED))
        if done:
            counts["done"] += 1
        elif status == "failed":
            counts["failed"] += 1
        else:
            counts["pending"] += 1
    return stage_order(progress)
