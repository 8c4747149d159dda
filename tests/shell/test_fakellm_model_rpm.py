"""The fake server's per-model RPM limit (``model_rpm``, ``--model-rpm``) and its ``/_fake/stats``.

Real HTTP on loopback; the RPM window runs on an injected clock, so nothing waits on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.fakellm import FakeLlm
from tests.shell.test_fakellm import standalone


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "p"}], "max_tokens": 100}


async def call(session: aiohttp.ClientSession, base_url: str, model: str) -> tuple[int, str | None]:
    async with session.post(base_url + "/chat/completions", json=chat(model)) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


async def stats(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with session.get(base_url.removesuffix("/v1") + "/_fake/stats") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_each_limited_model_has_its_own_sliding_window(session: aiohttp.ClientSession) -> None:
    now = [0.0]
    async with FakeLlm(model_rpm={"v/slow": 2, "v/other": 1}, clock=lambda: now[0]) as fake:

        async def at(when: float, model: str) -> tuple[int, str | None]:
            now[0] = when
            return await call(session, fake.base_url, model)

        assert await at(0.0, "v/slow") == (200, None)
        assert await at(1.0, "v/slow") == (200, None)
        assert await at(2.0, "v/other") == (200, None)  # its own window, not v/slow's
        assert await at(3.0, "v/free") == (200, None)  # not listed: no limit of its own
        assert await at(30.0, "v/slow") == (429, "30")  # t=0 leaves v/slow's window at t=60
        assert await at(31.0, "v/other") == (429, "31")
        for second in range(40, 50):
            assert await at(float(second), "v/free") == (200, None)
        assert await at(61.0, "v/slow") == (200, None)  # t=0 and t=1 left; the rejected t=30 counts
        assert await at(62.0, "v/slow") == (429, "28")
        assert fake.rate_limited_count == 3

        body = await stats(session, fake.base_url)
        assert body["now"] == 62.0
        assert (body["requests"], body["rate_limited"], body["status_counts"]) == (
            18,
            3,
            {"200": 15, "429": 3},
        )
        slow = body["models"]["v/slow"]
        assert (slow["requests"], slow["rate_limited"], slow["rpm"]) == (5, 2, 2)
        assert (slow["first_at"], slow["last_ok_at"], slow["max_in_window"]) == (0.0, 61.0, 3)
        assert body["models"]["v/other"]["status_counts"] == {"200": 1, "429": 1}
        free = body["models"]["v/free"]
        assert (free["requests"], free["rate_limited"], free["rpm"]) == (11, 0, None)
        assert body["max_in_window"] == 16  # t=2 .. t=49: every request but the first two
        assert body["in_progress"] == 0


async def test_a_request_the_global_limit_rejects_does_not_count_for_its_model(
    session: aiohttp.ClientSession,
) -> None:
    now = [0.0]
    async with FakeLlm(rpm=3, model_rpm={"v/slow": 2}, clock=lambda: now[0]) as fake:

        async def at(when: float, model: str) -> int:
            now[0] = when
            return (await call(session, fake.base_url, model))[0]

        assert [await at(0.0, "v/free"), await at(1.0, "v/free"), await at(2.0, "v/slow")] == [200, 200, 200]
        assert await at(3.0, "v/slow") == 429  # the global window is full
        # At t=61.5 the global window holds t=2 and t=3: room for one. v/slow's window holds t=2
        # only (the globally rejected t=3 is not in it), so it has room too.
        assert await at(61.5, "v/slow") == 200
        assert fake.stats()["models"]["v/slow"]["status_counts"] == {"200": 2, "429": 1}


async def test_stats_count_requests_in_progress(session: aiohttp.ClientSession) -> None:
    gate = asyncio.Event()
    async with FakeLlm() as fake:

        async def held() -> None:
            await gate.wait()

        fake._sleep_latency = held  # type: ignore[method-assign]  # the "model" works until released
        calls = [asyncio.create_task(call(session, fake.base_url, model)) for model in ("a", "a", "b")]
        for _ in range(1000):
            if fake.in_progress == 3:
                break
            await asyncio.sleep(0.005)
        body = await stats(session, fake.base_url)
        assert (
            body["in_progress"],
            body["models"]["a"]["in_progress"],
            body["models"]["b"]["in_progress"],
        ) == (
            3,
            2,
            1,
        )
        gate.set()
        assert [status for status, _ in await asyncio.gather(*calls)] == [200, 200, 200]
        body = await stats(session, fake.base_url)
        assert (body["in_progress"], body["max_in_progress"]) == (0, 3)
        assert body["models"]["a"]["last_ok_at"] is not None


async def test_standalone_model_rpm_flag(session: aiohttp.ClientSession) -> None:
    args = ("--model-rpm", "vendor/gen-model-0=2", "--model-rpm", "vendor/gen-model-1=1")
    async with standalone(*args) as base_url:
        statuses = [(await call(session, base_url, "vendor/gen-model-0"))[0] for _ in range(3)]
        statuses += [(await call(session, base_url, "vendor/gen-model-1"))[0] for _ in range(2)]
        statuses += [(await call(session, base_url, "vendor/gen-model-2"))[0] for _ in range(3)]
        assert statuses == [200, 200, 429, 200, 429, 200, 200, 200]
        body = await stats(session, base_url)
        assert {model: info["rpm"] for model, info in body["models"].items()} == {
            "vendor/gen-model-0": 2,
            "vendor/gen-model-1": 1,
            "vendor/gen-model-2": None,
        }
        assert body["rate_limited"] == 2


@pytest.mark.parametrize("text", ["model", "=3", "m=x", "m=0"])
def test_model_rpm_flag_rejects_bad_values(text: str) -> None:
    from tests.fakellm import _arguments

    with pytest.raises(SystemExit):
        _arguments(["--model-rpm", text])
