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
from daydreamd.llm.apikey import MIN_FRAGMENT, KeyScrubber, Scrubber, Scrubbers, api_key_for
from daydreamd.llm.registry import endpoint_llm, needs_session

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

    Limits (the endpoints' too), routes of models to endpoints, retries, stage settings, batch mode's
    settings and the experiment's shape change; paths, the endpoints themselves (URLs, keys; a new
    one needs a restart) and prices stay as the service started with them.
    """
    return replace(
        current,
        experiment=fresh.experiment,
        stages=fresh.stages,
        watch=fresh.watch,
        retry=fresh.retry,
        pool=fresh.pool,
        endpoints=fresh.endpoints,
        routes=fresh.routes,
        batch=fresh.batch,
        batch_models=fresh.batch_models,
    )


def key_scrubber(settings: Settings, env: Mapping[str, str]) -> KeyScrubber:
    """The scrubber for every API key an endpoint will send, for the log (see
    :mod:`daydreamd.daemon.logconfig`) and the prompts; one that scrubs nothing when no endpoint
    sends a key.

    Each key is read from the same sources, in the same order, as its provider reads it
    (:func:`~daydreamd.llm.apikey.read_api_key`), so a ``.env`` open to others is refused here,
    before the log or anything else starts. A missing key is not an error here: the provider
    reports it, naming where it looked.

    Raises:
        ConfigError: a key's credential cannot be read, or its ``.env`` is open to others.
    """
    config_dir = settings.config_path.parent if settings.config_path else None
    endpoints = settings.all_endpoints().values()
    parts = [
        Scrubber(api_key_for(endpoint_llm(endpoint), env, config_dir))
        for endpoint in endpoints
        if endpoint.api_key_env and needs_session(endpoint_llm(endpoint))
    ]
    # A server may take its key in a header (Azure-style "api-key"): long header values are kept
    # out of the log and the prompts too.
    parts += [Scrubber(value) for e in endpoints for _, value in e.headers if len(value) >= MIN_FRAGMENT]
    if not parts:
        return Scrubber(None)
    return parts[0] if len(parts) == 1 else Scrubbers(tuple(parts))
