"""The id formulas: combo_id, gen_id and cohort_id (pure). Changing this module changes every id.

combo_id
    ``"combo_v1_" + sha256_hex("|".join(["combo", "v1", level, str(k), *sorted(concept_ids)]))[:12]``
    -- the same concepts at the same description level and k always get the same id, whatever
    their order in the CSV.

gen_id
    ``PREFIX[stage] + sha256_hex("gen|v1\\n" + canonical_json(spec) + "\\n" + parent_key + "\\n"
    + str(replicate))[:16]`` where PREFIX is ``d_`` (draft), ``e_`` (essay) or ``v_`` (evaluation),
    ``canonical_json`` is sorted-key compact JSON (see ``canonical``), and

    * ``spec`` is what the template and model contribute:
      ``{"stage", "template_id", "template_sha256", "generator", "llm_model_id", "model", "params"}``
      where ``model`` is the provider's model string and ``params`` the stage's call parameters
      (``max_tokens``, ``temperature``). For ``copy`` templates, which call no model, the spec is
      only ``{"stage", "template_id", "template_sha256", "generator"}``.
    * ``parent_key`` is the parent's gen_id for essays and evaluations. Drafts have no parent
      generation, so their ``parent_key`` is the text they are rendered from:
      ``canonical_json({"combo_id": ..., "concepts": [[concept_id, name, level_used,
      sha256_hex(description)], ...]})`` with concepts in combo (CSV) order.
    * ``replicate`` is the 1-based replicate index.

    The cohort never enters the formula, so a generation keeps its id (and its finished files)
    in every cohort that contains it. Editing a template changes ``template_sha256`` and so the
    ids of exactly that template's generations and, through ``parent_key``, their descendants.

cohort_id
    ``"cohort_" + sha256_hex(canonical_json(manifest without cohort_id))[:12]`` unless overridden
    by ``experiment.cohort`` or ``DD_COHORT``. A cohort id names the folder
    ``data/cohorts/<cohort_id>``, so one given by a person (the config, the environment, a
    ``--cohort`` argument) must match :data:`COHORT_ID_PATTERN` (see :func:`cohort_id_problem`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from daydreamd.core.canonical import canonical_json, sha256_hex
from daydreamd.core.stages import GEN_ID_PREFIX, Stage

COMBO_PREFIX = "combo_v1_"
COHORT_PREFIX = "cohort_"
COHORT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
"""What a cohort id given by a person may be (without ``..``): one safe folder name."""
COHORT_ID_RULE = (
    "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit and without '..' "
    f"(the pattern {COHORT_ID_PATTERN}; e.g. pilot-2024-05)"
)
_COHORT_ID_RE = re.compile(COHORT_ID_PATTERN)


def combo_id(concept_ids: Iterable[str], level: str, k: int) -> str:
    """The id of a combo: order-independent over its concepts."""
    key = "|".join(["combo", "v1", level, str(k), *sorted(concept_ids)])
    return COMBO_PREFIX + sha256_hex(key)[:12]


def gen_spec(
    *,
    stage: Stage,
    template_id: str,
    template_sha256: str,
    generator: str,
    llm_model_id: str = "",
    model: str = "",
    params: dict[str, Any] | None = None,
) -> str:
    """The canonical JSON of what a template and model contribute to a gen_id (see module doc)."""
    spec: dict[str, Any] = {
        "stage": str(stage),
        "template_id": template_id,
        "template_sha256": template_sha256,
        "generator": generator,
    }
    if generator != "copy":
        spec |= {"llm_model_id": llm_model_id, "model": model, "params": params or {}}
    return canonical_json(spec)


def draft_parent_key(combo: str, concepts: Iterable[tuple[str, str, str, str]]) -> str:
    """A draft's parent key from (concept_id, name, level_used, description text) in combo order."""
    return canonical_json(
        {
            "combo_id": combo,
            "concepts": [[cid, name, level, sha256_hex(text)] for cid, name, level, text in concepts],
        }
    )


def gen_id(stage: Stage, spec: str, parent_key: str, replicate: int) -> str:
    """The gen_id for a spec (from ``gen_spec``), a parent key and a replicate index."""
    return GenIds(stage, spec)(parent_key, replicate)


class GenIds:
    """The gen_ids of one (stage, spec), for many parents: the hash of the spec's part of the payload
    is taken once and copied, which halves the cost of a million ids (a spec is a few hundred bytes).

    ``GenIds(stage, spec)(parent_key, replicate) == gen_id(stage, spec, parent_key, replicate)``.
    """

    __slots__ = ("_head", "_prefix")

    def __init__(self, stage: Stage, spec: str) -> None:
        self._prefix = GEN_ID_PREFIX[stage]
        self._head = hashlib.sha256(f"gen|v1\n{spec}\n".encode())

    def __call__(self, parent_key: str, replicate: int) -> str:
        digest = self._head.copy()
        digest.update(f"{parent_key}\n{replicate}".encode())
        return self._prefix + digest.hexdigest()[:16]


def cohort_id(manifest_without_id: dict[str, Any]) -> str:
    """The content-addressed cohort id of a manifest."""
    return COHORT_PREFIX + sha256_hex(canonical_json(manifest_without_id))[:12]


def cohort_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a cohort id, or None when it can.

    A cohort id names the folder ``data/cohorts/<cohort_id>`` (and appears in CSV rows and
    commands), so it must be one plain folder name: no separators, no ``.``/``..``, no absolute
    path, no NUL or other control character, not empty.
    """
    if _COHORT_ID_RE.fullmatch(value) and ".." not in value:
        return None
    return (
        f"{value!r} is not a valid cohort id (it names the folder data/cohorts/<cohort_id>); "
        f"use {COHORT_ID_RULE}"
    )
