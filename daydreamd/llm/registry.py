"""Provider kinds by name: what ``llm.provider`` may say, and how each kind is made.

Each kind joins the registry with its name and a factory; nothing else in the package lists
provider names. Adding a provider means writing its module (a class with ``complete``, see
:class:`~daydreamd.llm.types.Provider`) and registering it below, or from anywhere with
:func:`register`. The pure core cannot know the names, so an unknown ``llm.provider`` is caught
here: by :func:`check_settings`, which the daemon and ``daydreamctl`` call right after loading the
config, and by :func:`make_provider` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daydreamd.core.config import DEFAULT_ENDPOINT, EndpointSettings, LlmSettings, Settings
from daydreamd.core.errors import ConfigError
from daydreamd.llm.offline import EchoProvider, MockProvider
from daydreamd.llm.types import Provider, ProviderContext

if TYPE_CHECKING:
    import aiohttp

Factory = Callable[[ProviderContext], Provider]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderKind:
    """A name ``llm.provider`` may hold and how to make that provider."""

    name: str
    factory: Factory
    online: bool
    """Talks to a server: needs an HTTP session (offline kinds are made without one)."""


_KINDS: dict[str, ProviderKind] = {}


def register(kind: ProviderKind) -> None:
    """Make ``kind`` available under its name; a name can be registered once."""
    if kind.name in _KINDS:
        raise ValueError(f"provider {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def known_providers() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_KINDS)


def provider_kind(llm: LlmSettings, *, path: str | None = None) -> ProviderKind:
    """The kind ``llm.provider`` names; a ConfigError naming the key and the known names if none."""
    kind = _KINDS.get(llm.provider)
    if kind is None:
        raise ConfigError(f"must be one of {', '.join(known_providers())}", path=path, key="llm.provider")
    return kind


def check_settings(settings: Settings) -> None:
    """Raise a ConfigError for an unknown ``llm.provider`` or endpoint ``kind`` that names the config
    file and the key."""
    path = str(settings.config_path) if settings.config_path else "defaults"
    if settings.llm_in_use:
        provider_kind(settings.llm, path=path)
    for name, endpoint in settings.endpoints:
        if endpoint.kind not in _KINDS:
            raise ConfigError(
                f"must be one of {', '.join(known_providers())}", path=path, key=f"endpoints.{name}.kind"
            )


def make_provider(
    llm: LlmSettings,
    *,
    env: Mapping[str, str],
    config_dir: Path | None,
    session: aiohttp.ClientSession | None,
) -> Provider:
    """The provider ``llm`` names.

    Raises:
        ConfigError: an unknown ``llm.provider``, or an online provider without an API key.
    """
    kind = provider_kind(llm)
    return kind.factory(ProviderContext(llm=llm, env=env, config_dir=config_dir, session=session))


def make_endpoint_provider(
    name: str,
    endpoint: EndpointSettings,
    *,
    env: Mapping[str, str],
    config_dir: Path | None,
    session: aiohttp.ClientSession | None,
) -> Provider:
    """The provider of one endpoint (``llm``: the ``[llm]`` section's, exactly as before endpoints).

    Raises:
        ConfigError: an unknown kind, or an online one whose API key cannot be found.
    """
    llm = endpoint_llm(endpoint)
    section = "llm" if name == DEFAULT_ENDPOINT else f"endpoints.{name}"
    kind = provider_kind(llm, path=None)
    context = ProviderContext(
        llm=llm, env=env, config_dir=config_dir, session=session, headers=endpoint.headers, section=section
    )
    return kind.factory(context)


def endpoint_llm(endpoint: EndpointSettings) -> LlmSettings:
    """An endpoint's connection settings in the form provider factories take."""
    return LlmSettings(
        provider=endpoint.kind,
        base_url=endpoint.base_url,
        api_key_env=endpoint.api_key_env,
        timeout_s=endpoint.timeout_s,
    )


def needs_session(llm: LlmSettings) -> bool:
    """Offline providers make no HTTP requests."""
    return provider_kind(llm).online


def _openai_compatible(*, openrouter: bool) -> Factory:
    def make(context: ProviderContext) -> Provider:
        # Imported when a client is made: checking names (daydreamctl) must not load aiohttp.
        from daydreamd.llm.openai_compat import connect

        return connect(context, openrouter=openrouter)

    return make


for _kind in (
    ProviderKind(name="openrouter", factory=_openai_compatible(openrouter=True), online=True),
    ProviderKind(name="openai", factory=_openai_compatible(openrouter=False), online=True),
    ProviderKind(name="mock", factory=lambda _context: MockProvider(), online=False),
    ProviderKind(name="echo", factory=lambda _context: EchoProvider(), online=False),
):
    register(_kind)
