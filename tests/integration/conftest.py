"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.fakellm import FakeLlm
from tests.integration.daemon import Daemon


@pytest.fixture(name="daemons")
def _daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts (appended here) is killed and cleaned up, whatever happens."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest_asyncio.fixture(name="fake")
async def _fake() -> AsyncIterator[FakeLlm]:
    """A fake OpenAI-compatible server on loopback, answering every request until the test ends."""
    async with FakeLlm() as fake:
        yield fake
