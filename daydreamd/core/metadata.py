"""``metadata.json``: the record of one generation, next to its files (pure).

Schema (version 1; keys are stable, new keys may be added)::

    schema                  1
    stage, gen_id, parent_gen_id, combo_id, template_id, replicate
    template_sha256         hash of the template text used ('' for copy templates)
    llm_model_id            the model's id in llm_models.csv
    model                   the provider's model string sent in the request (null for copy)
    parameters              {"max_tokens", "temperature"} sent with the call (null for copy)
    parser                  the parser's registered name
    parse                   null (not parsed yet), or how parsed.txt was made: {"key", "parser",
                            "version", "verdict"}; "key" is what the text depends on (parser, its
                            version, and for evaluations the verdict label and scale: a change
                            re-parses the saved reply); "verdict" for evaluations is {"line",
                            "text", "kind", "set_aside", "set_aside_first"}; a failed parse has
                            "error_kind" and "candidates" instead; copy generations {"key": "copy"}
    parse_history           earlier results of re-parsing this reply, oldest first: {"at", "key",
                            "status", "parsed", "error"} (absent until the first re-parse)
    mode                    "llm" or "copy"
    status                  "replied" (reply saved, not yet checked/parsed), "done" or "failed"
    error                   null, or {"kind": <failure kind>, "message": ...}
    started_at, finished_at ISO-8601 UTC timestamps of this run
    durations_ms            {"render", "llm", "parse", "total"} of this run (null where skipped)
    attempts                LLM attempts made for the saved reply (0 for copy)
    reused_reply            true when this run re-parsed a saved reply instead of calling again
    prompt_sha256           hash of prompt.txt
    input_sha256            hash of (prompt, model, parameters): a saved reply with the same value
                            is reused instead of paying for a new call
    reply                   null, or {"finish_reason", "native_finish_reason", "truncated",
                            "usage": {"prompt_tokens", "completion_tokens", "total_tokens",
                            "reasoning_tokens", "cost"}, "provider", "generation_id",
                            "served_model"}
    files                   {"prompt", "raw", "parsed"}: paths relative to the data directory,
                            null for files this generation does not have
    parsed_sha256           hash of the parsed.txt written with this file (present when it was):
                            parsed.txt is not fsynced, and a copy a power failure damaged is told
                            apart by this hash and re-created from the reply (see storage.gens)
    raw_sha256              hash of the raw.txt saved with this file (present when one was): a
                            raw.txt that a power failure caught before its save was durable no
                            longer matches, and is archived unread instead of being re-used
    daydreamd_version       the version that wrote the file
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daydreamd.core.canonical import canonical_json, sha256_hex
from daydreamd.core.timestamps import utc_now as utc_now  # re-exported: the runner stamps runs with it

SCHEMA = 1


def input_sha256(prompt: str, model: str, parameters: dict[str, Any]) -> str:
    """What a call's reply depends on; equal values mean a saved reply can be reused."""
    return sha256_hex(
        canonical_json({"prompt_sha256": sha256_hex(prompt), "model": model, "parameters": parameters})
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Durations:
    """Milliseconds spent per step of one run (None for steps it skipped)."""

    render: float | None = None
    llm: float | None = None
    parse: float | None = None
    total: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """Rounded to 0.1 ms."""
        return {k: None if v is None else round(v, 1) for k, v in self._items()}

    def _items(self) -> list[tuple[str, float | None]]:
        return [("render", self.render), ("llm", self.llm), ("parse", self.parse), ("total", self.total)]


def can_reuse_reply(metadata: dict[str, Any] | None, expected_input: str, raw_exists: bool) -> bool:
    """True when a saved reply answers exactly this input, so calling again would pay twice."""
    return (
        raw_exists
        and metadata is not None
        and metadata.get("input_sha256") == expected_input
        and isinstance(metadata.get("reply"), dict)
    )
