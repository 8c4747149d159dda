"""The API key: where it is read from, and how it is kept out of everything shown or saved.

Settings and secrets meet only here and in the provider that sends the key: :func:`read_api_key`
finds it (a systemd credential, else the environment, else a ``.env`` next to the config that only
its owner may read) and :class:`Scrubber` replaces any echo of it, whole or in part, by
``[redacted]``. The provider scrubs every text it hands on (reply text, reply fields, failure
messages), so the files, the run state, the log, the API and the reports only ever see scrubbed
text; the log scrubs every event once more (:mod:`daydreamd.daemon.logconfig`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daydreamd.core.config import LlmSettings
from daydreamd.core.errors import ConfigError

REDACTED = "[redacted]"
MIN_FRAGMENT = 12
"""A piece of the key this long (reaching past its public prefix) is redacted; see :class:`Scrubber`."""
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
"""The variable systemd sets to the folder of the service's credentials (``LoadCredential=``)."""
_MIN_SECRET_LENGTH = 4  # shorter "keys" would redact ordinary words out of replies
_IN_KEY, _OUTSIDE = 0x78, 0x20  # "x", " ": the marks of step 1 in Scrubber.text
_IN_KEY_BYTES, _OUTSIDE_BYTES = bytes([_IN_KEY]), bytes([_OUTSIDE])
_SHORT_RUN = 64  # runs up to this long are checked window by window, longer ones block by block
_PUBLIC_PREFIX = re.compile(r"(?:[A-Za-z0-9]{1,6}[-_]){1,4}")
"""Short dash-separated labels that start many keys and are the same for everyone's key:
``sk-or-v1-`` (OpenRouter), ``sk-proj-`` (OpenAI), ``sk-ant-api03-`` (Anthropic)."""


def public_prefix_length(secret: str) -> int:
    """How many leading characters of ``secret`` are a well-known label rather than key material.

    Up to four short (at most six characters) labels each ended by ``-`` or ``_``; none when that
    would leave fewer than :data:`MIN_FRAGMENT` characters of key material. A random part that
    happens to start with a short label only makes that part count as public: a little less is
    redacted, never more.
    """
    found = _PUBLIC_PREFIX.match(secret)
    if found is None or len(secret) - found.end() < MIN_FRAGMENT:
        return 0
    return found.end()


@dataclass(frozen=True, slots=True)
class Scrubber:
    """Replaces the key, and any long piece of it, by :data:`REDACTED` in text.

    What is redacted: every stretch of text that equals a piece of the key at least
    ``min(MIN_FRAGMENT, len(key))`` characters long (12 for any real key) that does not lie wholly
    inside the key's public prefix (:func:`public_prefix_length`). So the whole key goes, and so do
    the usual masked forms: the key without its last characters, its first 12 characters followed
    by ``****`` or ``...``, any 12 characters from its middle. Each stretch is redacted as far as
    it matches the key, so ``sk-or-v1-abcdef0123...wxyz`` becomes ``[redacted]...wxyz``.

    Why 12 and the prefix rule: key material is random (OpenRouter's is 64 hex digits), so a
    12-character piece of it in a text got there from the key, never by chance (1 in 16**12 for
    hex); ordinary words, ids and hashes are never touched. The shared prefix (``sk-or-v1-``) is
    not secret, and text may name it freely; it counts only together with key material: the key's
    first 12 characters (``sk-or-v1-`` and three of its own) are redacted, because that is how a
    masked key is shown. A piece of 11 or fewer characters of key material alone stays: it gives
    away at most 44 of a 256-bit key's bits, while a shorter threshold would start redacting
    hexadecimal ids that merely share a few digits with the key. A key shorter than 4 characters
    is never redacted (it would take ordinary words with it).

    How, fast (every reply, up to ~100 KB, and every error message and log event pass through
    here; the budget is well under 0.1 ms for 20 KB), in two steps:

    1. *Is there a candidate at all?* A qualifying piece is a run of at least ``min_length``
       characters that all occur in the key. The text's UTF-8 bytes go through one
       ``bytes.translate`` (each character of the key becomes ``x``, every other byte a space)
       and one ``bytes.find`` of ``x`` repeated ``min_length`` times: two C loops over the text.
       Each run found is checked against the key's qualifying pieces (a set lookup per position
       for short runs, a search for the blocks below in long ones). Ordinary text has no such run
       or none that matches, and comes back untouched, as the same object.
    2. *Only when a piece is there* (an echo, rare): the key is cut into blocks of
       ``ceil(min_length / 2)`` characters at fixed offsets, so every qualifying piece holds one
       whole block; the text is searched for each block with :meth:`str.find`, and around each
       hit the match is stretched both ways and measured. Overlapping spans are merged.

    The ``repr`` never shows the key; the scrubber holds no state but the key and what is derived
    from it, so one instance may be shared freely.
    """

    secret: str | None = field(repr=False)
    _blocks: tuple[tuple[str, tuple[int, ...]], ...] = field(init=False, repr=False, compare=False)
    _pieces: frozenset[str] = field(init=False, repr=False, compare=False)
    _marks: bytes | None = field(init=False, repr=False, compare=False)
    _min_length: int = field(init=False, repr=False, compare=False)
    _public: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        secret = self.secret or ""
        if len(secret) < _MIN_SECRET_LENGTH:
            secret = ""
        least = min(MIN_FRAGMENT, len(secret))
        public = public_prefix_length(secret)
        blocks: dict[str, list[int]] = {}
        if secret:
            # Any window of `least` characters holds a whole block of `size` at a multiple of
            # `size`: it starts at most size - 1 into the window and ends by 2 * size - 1 <= least.
            size = (least + 1) // 2
            for start in range(0, len(secret) - size + 1, size):
                blocks.setdefault(secret[start : start + size], []).append(start)
        # Every qualifying piece ends with one of these: its last `least` characters.
        pieces = frozenset(
            secret[start : start + least]
            for start in range(len(secret) - least + 1)
            if start + least > public
        )
        marks = None
        if secret and secret.isascii():
            in_key = {ord(char) for char in secret}
            marks = bytes(_IN_KEY if byte in in_key else _OUTSIDE for byte in range(256))
        object.__setattr__(self, "_blocks", tuple((block, tuple(at)) for block, at in blocks.items()))
        object.__setattr__(self, "_pieces", pieces)
        object.__setattr__(self, "_marks", marks)
        object.__setattr__(self, "_min_length", least)
        object.__setattr__(self, "_public", public)

    @property
    def active(self) -> bool:
        """Whether there is a key to redact at all."""
        return bool(self._blocks)

    def text(self, value: str) -> str:
        """``value`` with every qualifying piece of the key replaced by :data:`REDACTED`."""
        if not self._blocks or not self._may_hold_a_piece(value):
            return value
        spans: set[tuple[int, int]] = set()
        for block, offsets in self._blocks:
            at = value.find(block)
            while at != -1:
                for offset in offsets:
                    span = self._stretch(value, at, offset, len(block))
                    if span is not None:
                        spans.add(span)
                at = value.find(block, at + 1)
        if not spans:
            return value
        parts: list[str] = []
        end = 0
        for start, stop in _merged(spans):
            parts += [value[end:start], REDACTED]
            end = stop
        parts.append(value[end:])
        return "".join(parts)

    def optional(self, value: str | None) -> str | None:
        """:meth:`text` for a value that may be missing."""
        return None if value is None else self.text(value)

    def _may_hold_a_piece(self, value: str) -> bool:
        """Step 1 of :meth:`text`: False when ``value`` surely holds no qualifying piece."""
        if self._marks is None:
            return True  # a key with non-ASCII characters: no byte-level shortcut, search it all
        data = value.encode("utf-8", "surrogatepass")
        marks = data.translate(self._marks)
        least = self._min_length
        run = _IN_KEY_BYTES * least
        at = marks.find(run)
        while at != -1:
            end = marks.find(_OUTSIDE_BYTES, at + least)
            end = len(marks) if end == -1 else end
            chars = data[at:end].decode("ascii")  # only the key's characters: ASCII
            if len(chars) <= _SHORT_RUN:
                if any(chars[i : i + least] in self._pieces for i in range(len(chars) - least + 1)):
                    return True
            elif any(block in chars for block, _ in self._blocks):
                return True
            at = marks.find(run, end)
        return False

    def _stretch(self, value: str, at: int, offset: int, size: int) -> tuple[int, int] | None:
        """The text span around ``value[at:at+size]`` that matches the key aligned at ``offset``,
        if it is long enough and reaches past the public prefix."""
        secret = self.secret
        assert secret is not None
        before = _common_length(value[max(0, at - offset) : at][::-1], secret[:offset][::-1])
        after = _common_length(value[at + size : at + len(secret) - offset], secret[offset + size :])
        start, stop = at - before, at + size + after
        reaches = offset + size + after  # where the match ends in the key
        if stop - start >= self._min_length and reaches > self._public:
            return start, stop
        return None


@dataclass(frozen=True, slots=True)
class Scrubbers:
    """Several keys' scrubbers as one: with endpoints, each may send its own key."""

    parts: tuple[Scrubber, ...]

    @property
    def active(self) -> bool:
        """Whether there is any key to redact."""
        return any(part.active for part in self.parts)

    def text(self, value: str) -> str:
        """``value`` with every key's qualifying pieces redacted (the same object when none is there)."""
        for part in self.parts:
            value = part.text(value)
        return value


KeyScrubber = Scrubber | Scrubbers
"""What redacts the service's keys: one key's scrubber, or several."""


def _common_length(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share (slice comparisons: C speed)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n - 1  # a[:low] == b[:low], a[:high + 1] != b[:high + 1]
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _merged(spans: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans as one, in order."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


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


def api_key_for(llm: LlmSettings, env: Mapping[str, str], config_dir: Path | None) -> str | None:
    """The key ``llm.api_key_env`` names, from the sources :func:`read_api_key` reads, with the
    ``.env`` looked for next to the config (``config_dir``)."""
    dotenv = config_dir / ".env" if config_dir is not None else None
    return read_api_key(llm.api_key_env, env, dotenv)


def read_api_key(env_name: str, env: Mapping[str, str], dotenv_path: Path | None) -> str | None:
    """The API key named ``env_name``; ``None`` when no source has it. The first source found wins:

    1. the systemd credential ``$CREDENTIALS_DIRECTORY/<env_name>`` (``LoadCredential=`` or
       ``LoadCredentialEncrypted=`` under that name; surrounding whitespace, such as the final
       newline an editor adds, is stripped);
    2. the environment variable ``env[env_name]``;
    3. a ``VAR=value`` line in ``dotenv_path`` (simple ``KEY=VALUE`` lines, optional ``export``,
       matching quotes stripped, ``#`` comments ignored; the last assignment wins, like in a
       shell), which is refused unless only its owner can read it (:func:`check_private`).

    Why this order: a credential is handed to this one service on purpose by its unit, in a
    folder only the service's user can read, and it is not inherited by child processes or shown
    in ``/proc/<pid>/environ`` the way a variable is; when the unit loads one, that is the
    deployment's choice, and a variable that merely leaked in (an ``Environment=`` in some
    drop-in, a login shell's ``export``) must not override it. The environment beats the
    ``.env`` as with any dotenv tool: the file holds defaults, an explicit variable overrides
    them.

    A missing file, folder or credential is not an error; blank values count as absent.

    Raises:
        ConfigError: the credential exists but cannot be read, or the ``.env`` is open to group
            or others, or owned by another user (the message names the file and the fix).
    """
    credential = _credential(env_name, env)
    if credential is not None:
        return credential
    value = (env.get(env_name) or "").strip()
    if value:
        return value
    if dotenv_path is None:
        return None
    try:
        # O_NONBLOCK: a FIFO put there must not hang the start; check_private refuses it.
        fd = os.open(dotenv_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            check_private(dotenv_path, os.fstat(handle.fileno()), env_name)
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {dotenv_path} for {env_name}: {_reason(exc)}") from None
    found = None
    for line in lines:
        candidate = _dotenv_value(line, env_name)
        if candidate is not None:
            found = candidate
    if found is None or not found.strip():
        return None
    return found.strip()


def _credential(name: str, env: Mapping[str, str]) -> str | None:
    """The credential ``name`` systemd passed to the service, if it did (see :func:`read_api_key`)."""
    folder = env.get(CREDENTIALS_DIRECTORY)
    if not folder or not name or name in {".", ".."} or "/" in name:
        return None
    path = Path(folder) / name
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the credential {path}: {_reason(exc)}") from None
    return value or None


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, without its content (a decode error's text quotes bytes)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else type(exc).__name__


def check_private(path: Path, info: os.stat_result, env_name: str) -> None:
    """Refuse a ``.env`` that anyone but its owner may read or change, or that someone else owns.

    Refused, not warned about: the file holds a paid API key, and keeping it secret is what this
    code is for; a warning scrolls by in a log while the key stays readable to every local user
    (or group member) for as long as the file sits there, and a service that starts anyway gives
    no reason to fix it. It is the rule ``ssh`` applies to private keys: any group or other
    permission bit (``mode & 0o077``) refuses the file, the fix is ``chmod 600``, and the message
    says so. Group-*writable* counts too: whoever can rewrite the file can swap in a key of their
    own, or remove it.

    The owner must be the user the service runs as, or root: a file owned by anyone else is only
    as secret as that account, whose owner can read it or open its mode at any time. (Root can
    read every file anyway; a root-owned 0600 file is not readable by an unprivileged service, so
    that case fails with a plain permission error instead.)

    Raises:
        ConfigError: naming the file, its mode or owner, and the command that fixes it.
    """
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"refusing to read {env_name} from {path}: it is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"refusing to read {env_name} from {path}: its mode is {mode:04o}, so group or others "
            f"can access it. Run: chmod 600 {path}"
        )
    user = os.geteuid()
    if info.st_uid not in {user, 0}:
        raise ConfigError(
            f"refusing to read {env_name} from {path}: it is owned by uid {info.st_uid}, not by the "
            f"user daydreamd runs as (uid {user}) or root. Run: chown {user} {path}"
        )
