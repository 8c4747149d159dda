"""The settings in force: one object the service's parts read from, replaced whole on a reload.

The rebuilder, the pool and the planner hold a :class:`LiveSettings` and read
:attr:`~LiveSettings.current` when they need a value, so a SIGHUP (or a live limit change)
swaps one reference instead of patching copies. Parts that keep state derived from the
settings (the pool's per-model limits) subscribe and are told of every change.

:func:`key_scrubber` reads the API key the settings name once at startup, for the log's scrubber.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from daydreamd.core.config import Settings
from daydreamd.llm.apikey import Scrubber, api_key_for
from daydreamd.llm.registry import needs_session

Listener = Callable[[Settings], None]


class LiveSettings:
    """Holds the current :class:`Settings`; :meth:`replace` swaps them and tells the subscribers."""

    __slots__ = ("_current", "_listeners")

    def __init__(self, settings: Settings) -> None:
        self._current = settings
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Settings:
        """The settings in force now."""
        return self._current

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(settings)`` after every :meth:`replace`."""
        self._listeners.append(listener)

    def replace(self, settings: Settings) -> None:
        """Put ``settings`` in force, then tell every subscriber."""
        self._current = settings
        for listener in self._listeners:
            listener(settings)


def reloadable(current: Settings, fresh: Settings) -> Settings:
    """``current`` with what a reload may change taken from ``fresh``.

    Limits, retries, stage settings and the experiment's shape change; paths, the provider and
    prices stay as the service started with them.
    """
    return replace(
        current,
        experiment=fresh.experiment,
        stages=fresh.stages,
        watch=fresh.watch,
        retry=fresh.retry,
        pool=fresh.pool,
    )


def key_scrubber(settings: Settings, env: Mapping[str, str]) -> Scrubber:
    """The scrubber for the API key the provider will send, for the log (see
    :mod:`daydreamd.daemon.logconfig`); one that scrubs nothing for an offline provider.

    The key is read from the same sources, in the same order, as the provider reads it
    (:func:`~daydreamd.llm.apikey.read_api_key`), so a ``.env`` open to others is refused here,
    before the log or anything else starts. A missing key is not an error here: the provider
    reports it, naming where it looked.

    Raises:
        ConfigError: the key's credential cannot be read, or its ``.env`` is open to others.
    """
    if not needs_session(settings.llm):
        return Scrubber(None)
    config_dir = settings.config_path.parent if settings.config_path else None
    return Scrubber(api_key_for(settings.llm, env, config_dir))
