"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.daemon import Daemon


@pytest.fixture(name="daemons")
def _daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts (appended here) is killed and cleaned up, whatever happens."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()
