"""The fake server itself: its RPM window, its scripting, its bodies and its standalone mode.

Other tests trust the fake's request counts, so the fake gets tests of its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.fakellm import FakeLlm, Fault, FaultKind, RecordedRequest, default_reply

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def chat(prompt: str, *, max_tokens: int = 1000, model: str = "fake/model") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


async def post(
    session: aiohttp.ClientSession, url: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_success_body_is_openrouter_shaped(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        status, headers, raw = await post(session, fake.base_url + "/chat/completions", chat("hello world"))
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        body = json.loads(raw)
        assert body["id"] == "gen-fake-1"
        assert body["provider"] == "FakeProvider"
        assert body["model"] == "fake/model"
        (choice,) = body["choices"]
        assert choice["finish_reason"] == choice["native_finish_reason"] == "stop"
        assert choice["message"]["content"] == default_reply(fake.requests[0])
        usage = body["usage"]
        assert usage["prompt_tokens"] == len("hello world") // 4
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert isinstance(usage["cost"], float)
        assert usage["completion_tokens_details"]["reasoning_tokens"] >= 0


def test_default_reply_satisfies_every_stage_parser() -> None:
    record = RecordedRequest(
        number=1, at=0.0, path="/", headers={}, body={}, model="m", prompt="p", max_tokens=9, temperature=None
    )
    lines = default_reply(record).splitlines()
    assert '<essay-idea stage="1">' in lines
    assert '<essay-idea stage="2">' in lines
    assert lines.count("</essay-idea>") == 2
    assert lines[-1].startswith("SCORE: ")
    assert 0 <= int(lines[-1].removeprefix("SCORE: ")) <= 9


async def test_both_paths_are_served_and_requests_are_recorded(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        root = fake.base_url.removesuffix("/v1")
        await post(session, f"{root}/chat/completions", chat("alpha one"), {"Authorization": "Bearer k1"})
        await post(session, f"{root}/v1/chat/completions", chat("alpha two"))
        await post(session, f"{root}/v1/chat/completions", chat("beta"))
        assert fake.calls_for("alpha") == 2
        assert fake.calls_for("beta") == 1
        assert fake.request_count == 3
        first = fake.requests[0]
        assert (first.path, first.model, first.max_tokens, first.status) == (
            "/chat/completions",
            "fake/model",
            1000,
            200,
        )
        assert first.headers["authorization"] == "Bearer k1"
        assert fake.status_counts[200] == 3


async def test_invalid_body_is_400(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        status, _, raw = await post(session, fake.base_url + "/chat/completions", {"messages": []})
        assert status == 400
        assert json.loads(raw)["error"]["code"] == 400


async def test_api_key_is_enforced(session: aiohttp.ClientSession) -> None:
    async with FakeLlm(api_key="right") as fake:
        url = fake.base_url + "/chat/completions"
        assert (await post(session, url, chat("p"), {"Authorization": "Bearer wrong"}))[0] == 401
        assert (await post(session, url, chat("p"), {"Authorization": "Bearer right"}))[0] == 200


async def test_rpm_window_slides_and_counts_rejected_requests(session: aiohttp.ClientSession) -> None:
    now = [0.0]
    async with FakeLlm(rpm=2, clock=lambda: now[0]) as fake:
        url = fake.base_url + "/chat/completions"

        async def status_at(when: float) -> tuple[int, str | None]:
            now[0] = when
            status, headers, _ = await post(session, url, chat("p"))
            return status, headers.get("Retry-After")

        assert await status_at(0.0) == (200, None)
        assert await status_at(1.0) == (200, None)
        assert await status_at(30.0) == (429, "30")  # the oldest request leaves the window at t=60
        assert await status_at(61.0) == (200, None)  # t=0 and t=1 have left; the rejected t=30 has not
        assert await status_at(62.0) == (429, "28")  # window: t=30 (rejected), t=61
        assert await status_at(91.0) == (429, "30")  # window: t=61, t=62 (rejected)
        assert await status_at(122.0) == (200, None)  # window: t=91 (rejected)
        assert fake.rate_limited_count == 3
        assert fake.status_counts == {200: 4, 429: 3}


async def test_rpm_limit_with_the_real_clock(session: aiohttp.ClientSession) -> None:
    async with FakeLlm(rpm=5) as fake:
        url = fake.base_url + "/chat/completions"
        statuses = [(await post(session, url, chat(f"p{index}")))[0] for index in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        assert fake.rate_limited_count == 3
        assert all(request.status == 429 for request in fake.requests[5:])


async def test_script_then_fault_fn_then_rates(session: aiohttp.ClientSession) -> None:
    def every_third(number: int, _request: RecordedRequest) -> FaultKind | None:
        return FaultKind.BAD_GATEWAY if number % 3 == 0 else None

    async with FakeLlm(fault_fn=every_third) as fake:
        fake.script(FaultKind.QUOTA, times=2)
        fake.script_sequence([None, FaultKind.AUTH])
        url = fake.base_url + "/chat/completions"
        statuses = [(await post(session, url, chat("p")))[0] for _ in range(7)]
        assert statuses == [402, 402, 200, 401, 200, 502, 200]
        assert [request.fault for request in fake.requests[:2]] == [FaultKind.QUOTA, FaultKind.QUOTA]


async def test_fault_rates_are_reproducible_with_a_seed(session: aiohttp.ClientSession) -> None:
    async def statuses(seed: int) -> list[int]:
        rates = {FaultKind.UNAVAILABLE: 0.3, "rate_limit": 0.2}
        async with FakeLlm(fault_rates=rates, seed=seed) as fake:
            url = fake.base_url + "/chat/completions"
            return [(await post(session, url, chat("p")))[0] for _ in range(40)]

    first, again = await statuses(11), await statuses(11)
    assert first == again
    assert {200, 429, 503} == set(first)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (FaultKind.EMPTY_CHOICES, lambda body: body["choices"] == []),
        (FaultKind.EMPTY_CONTENT, lambda body: body["choices"][0]["message"]["content"] == ""),
        (
            FaultKind.CONTENT_FILTER,
            lambda body: body["choices"][0]["finish_reason"] == "content_filter",
        ),
        (
            FaultKind.TRUNCATED,
            lambda body: (
                body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 1000
            ),
        ),
        (
            Fault(kind=FaultKind.ERROR_BODY, code=503, message="busy"),
            lambda body: body["error"] == {"code": 503, "message": "busy"},
        ),
    ],
)
async def test_fault_bodies(session: aiohttp.ClientSession, fault: Fault | FaultKind, check: Any) -> None:
    async with FakeLlm() as fake:
        fake.script(fault)
        status, _, raw = await post(session, fake.base_url + "/chat/completions", chat("p"))
        assert status == 200
        assert check(json.loads(raw))


async def test_malformed_json_and_retry_after_header(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        fake.script(FaultKind.MALFORMED_JSON)
        fake.script(FaultKind.RATE_LIMIT, retry_after="9")
        url = fake.base_url + "/chat/completions"
        status, _, raw = await post(session, url, chat("p"))
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(raw)
        status, headers, _ = await post(session, url, chat("p"))
        assert (status, headers["Retry-After"]) == (429, "9")


async def test_drop_closes_the_connection_without_an_answer(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        fake.script(FaultKind.DROP)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, fake.base_url + "/chat/completions", chat("p"))
        assert fake.requests[0].status == 0
        assert (await post(session, fake.base_url + "/chat/completions", chat("p")))[0] == 200


async def test_long_replies_are_cut_at_max_tokens(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        _, _, raw = await post(session, fake.base_url + "/chat/completions", chat("p", max_tokens=8))
        body = json.loads(raw)
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 8
        assert len(body["choices"][0]["message"]["content"]) <= 32


async def test_latency_range_is_applied(session: aiohttp.ClientSession) -> None:
    async with FakeLlm(latency_ms=(40.0, 60.0)) as fake:
        started = time.monotonic()
        await post(session, fake.base_url + "/chat/completions", chat("p"))
        assert time.monotonic() - started >= 0.04


async def test_thousands_of_requests_per_second_at_zero_latency(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        url = fake.base_url + "/chat/completions"
        semaphore = asyncio.Semaphore(64)

        async def one(index: int) -> int:
            async with semaphore:
                return (await post(session, url, chat(f"prompt {index}")))[0]

        started = time.monotonic()
        statuses = await asyncio.gather(*(one(index) for index in range(2000)))
        elapsed = time.monotonic() - started
        assert set(statuses) == {200}
        assert fake.request_count == 2000
        # Client and server share one event loop here, so this bounds both; generous for slow CI.
        assert elapsed < 5.0


async def test_clear_forgets_requests_and_pending_faults(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as fake:
        fake.script(FaultKind.AUTH, times=3)
        await post(session, fake.base_url + "/chat/completions", chat("p"))
        fake.clear()
        assert (fake.request_count, fake.rate_limited_count, dict(fake.status_counts)) == (0, 0, {})
        assert (await post(session, fake.base_url + "/chat/completions", chat("p")))[0] == 200


async def test_base_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = FakeLlm().base_url


@asynccontextmanager
async def standalone(*args: str) -> AsyncIterator[str]:
    """``python -m tests.fakellm --port 0 ARGS`` in its own process; yields its base URL, then
    terminates it and checks that it exited cleanly."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakellm",
        "--port",
        "0",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        yield (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode().strip()
    finally:
        if process.returncode is None:
            process.terminate()
        returncode = await asyncio.wait_for(process.wait(), timeout=15)
    assert returncode == 0


async def test_standalone_mode_serves_until_terminated(session: aiohttp.ClientSession) -> None:
    async with standalone("--latency-ms", "1", "--rpm", "600") as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        status, _, raw = await post(
            session, base_url + "/chat/completions", chat("standalone " + str(random.random()))
        )
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"]
