"""Choosing the provider named by ``llm.provider`` and giving it its API key.

Kept apart from the client so that settings and secrets meet in one small place: the key is
read here, handed to the client, and never stored anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import aiohttp

from daydreamd.core.config import LlmSettings
from daydreamd.core.errors import ConfigError
from daydreamd.llm.client import EchoProvider, MockProvider, OpenAiCompatibleClient, Provider, read_api_key

OFFLINE = ("mock", "echo")
APP_HEADERS = {"HTTP-Referer": "https://github.com/daydreamd", "X-Title": "daydreamd"}


def make_provider(
    llm: LlmSettings,
    *,
    env: Mapping[str, str],
    config_dir: Path | None,
    session: aiohttp.ClientSession | None,
) -> Provider:
    """The provider for ``llm``; raises ConfigError when an online provider has no API key."""
    if llm.provider == "mock":
        return MockProvider()
    if llm.provider == "echo":
        return EchoProvider()
    dotenv = config_dir / ".env" if config_dir else None
    key = read_api_key(llm.api_key_env, env, dotenv)
    if key is None:
        where = f" or in {dotenv}" if dotenv else ""
        raise ConfigError(
            f"no API key: set the environment variable {llm.api_key_env}{where}, or use provider "
            '"mock" to run offline',
            key="llm.api_key_env",
        )
    if session is None:
        raise ConfigError("an online provider needs an HTTP session", key="llm.provider")
    return OpenAiCompatibleClient(
        session,
        llm.base_url,
        key,
        llm.timeout_s,
        APP_HEADERS if llm.provider == "openrouter" else None,
        include_usage=llm.provider == "openrouter",
    )


def needs_session(llm: LlmSettings) -> bool:
    """Offline providers make no HTTP requests."""
    return llm.provider not in OFFLINE
