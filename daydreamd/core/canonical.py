"""Canonical JSON and content hashes: the hashing contract behind every id (pure).

Ids in daydreamd are content addresses, so the bytes that feed a hash are a contract: changing
this module changes every id. ``canonical_json`` sorts keys, uses compact separators and keeps
non-ASCII text as UTF-8, so the same value always gives the same bytes on any machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Serialize ``value`` so that equal values always give identical text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """The SHA-256 of ``text`` encoded as UTF-8, as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
