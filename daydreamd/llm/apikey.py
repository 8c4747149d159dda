"""The API key: where it is read from, and how it is kept out of everything shown or saved.

Settings and secrets meet only here and in the provider that sends the key: :func:`read_api_key`
finds it (environment, else a ``.env`` next to the config) and :class:`Scrubber` replaces any
echo of it in a server's answer by ``[redacted]`` before that answer reaches a message or a reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REDACTED = "[redacted]"
_MIN_SECRET_LENGTH = 4  # shorter "keys" would redact ordinary words out of replies


@dataclass(frozen=True, slots=True)
class Scrubber:
    """Replaces ``secret`` by :data:`REDACTED` in text; never shows the secret in its ``repr``."""

    secret: str | None = field(repr=False)

    def text(self, value: str) -> str:
        if self.secret and len(self.secret) >= _MIN_SECRET_LENGTH and self.secret in value:
            return value.replace(self.secret, REDACTED)
        return value


def _dotenv_value(line: str, name: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if stripped.startswith("export "):
        stripped = stripped[len("export ") :].lstrip()
    key, sep, value = stripped.partition("=")
    if not sep or key.strip() != name:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value.split(" #", 1)[0].rstrip()


def read_api_key(env_name: str, env: Mapping[str, str], dotenv_path: Path | None) -> str | None:
    """The API key from ``env[env_name]``, else from a ``.env`` file; ``None`` when neither has it.

    The ``.env`` format is simple ``KEY=VALUE`` lines (optional ``export``, matching quotes
    stripped, ``#`` comments ignored); the last assignment wins, like in a shell. A missing file
    is not an error. Blank values count as absent.
    """
    value = (env.get(env_name) or "").strip()
    if value:
        return value
    if dotenv_path is None:
        return None
    try:
        lines = dotenv_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    found = None
    for line in lines:
        candidate = _dotenv_value(line, env_name)
        if candidate is not None:
            found = candidate
    if found is None or not found.strip():
        return None
    return found.strip()
