"""Endpoints with the real process: models on their own servers and keys, limits per endpoint, fleets.

The example experiment writes its drafts with three models here (gemini, deepseek, gpt-4o mini:
9 drafts each, see ``test_scheduler.make``); each fake server stands for one endpoint (one API key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from tests.fakellm import FakeLlm, FaultKind, RecordedRequest
from tests.integration.daemon import API_KEY, Daemon, fast_config, holds
from tests.integration.test_scheduler import DRAFTS_PER_MODEL, MODEL_STRINGS, drafts, make

SECOND_KEY = "sk-test-daydreamd-second-endpoint-9876543210"
MAX_TOKENS = 1000
"""Drafts' max_tokens here: small enough that a tokens-per-minute limit binds in a few calls."""
TPM = 4000


def endpoint(name: str, url: str, key_env: str, limits: str = "") -> str:
    return f'[endpoints.{name}]\nkind = "openai"\nbase_url = "{url}"\napi_key_env = "{key_env}"\n{limits}'


def route(model: str, *names: str) -> str:
    quoted = ", ".join(f'"{name}"' for name in names)
    return f"[models.{model}]\nendpoints = [{quoted}]\n"


@asynccontextmanager
async def running(*fakes: FakeLlm) -> AsyncIterator[list[FakeLlm]]:
    """Every fake server started, and stopped at the end (one endpoint each)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(fake) for fake in fakes]


def models_seen(fake: FakeLlm) -> Counter[str]:
    by_string = {v: k for k, v in MODEL_STRINGS.items()}
    return Counter(by_string.get(r.model or "", "?") for r in fake.requests)


async def test_two_models_on_two_endpoints_with_their_own_keys_and_limits(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """deepseek goes to endpoint b (its own key, one call at a time, 4,000 tokens a minute); the
    other models to [llm]. Each server sees only its models and its key; b never has two calls
    at once and is never sent more tokens in a minute than its limit: its last drafts wait for
    the window (queued or armed), with no 429 anywhere."""
    async with (
        FakeLlm(api_key=API_KEY) as main,
        FakeLlm(api_key=SECOND_KEY, tpm=TPM, latency_ms=20) as second,
    ):
        extra = (
            f"[stages.draft]\nmax_tokens = {MAX_TOKENS}\n"
            + endpoint(
                "b",
                second.base_url,
                "DD_SECOND_KEY",
                f'concurrency = 1\ntokens_per_minute = {TPM}\nheaders = {{ "X-Team" = "lab" }}\n',
            )
            + route("deepseek_r1", "b")
        )
        daemon = make(daemons, tmp_path, fast_config(main.base_url, extra=extra))
        daemon.env["DD_SECOND_KEY"] = SECOND_KEY
        await daemon.start()
        assert (await daemon.approve("draft"))["matched"] == 3 * DRAFTS_PER_MODEL

        def others_done(status: dict[str, Any] | None) -> bool:
            return drafts(status)["done"] >= 2 * DRAFTS_PER_MODEL + 1 and len(main.requests) == 18

        await daemon.wait_for(others_done, what="the [llm] models' drafts, and some of deepseek's")
        sent = len(second.requests)
        await holds(
            daemon,
            lambda s: len(second.requests) == sent and drafts(s)["failed"] == 0,
            for_s=1.0,
            what="deepseek's last drafts waiting for the token window",
        )
        status = await daemon.status()
        assert status is not None
        assert 0 < sent < DRAFTS_PER_MODEL, sent
        assert models_seen(main) == {"gemini_25_flash": DRAFTS_PER_MODEL, "gpt_4o_mini": DRAFTS_PER_MODEL}
        assert models_seen(second) == {"deepseek_r1": sent}
        assert {r.headers.get("Authorization") for r in second.requests} == {f"Bearer {SECOND_KEY}"}
        assert {r.headers.get("Authorization") for r in main.requests} == {f"Bearer {API_KEY}"}
        assert {r.headers.get("X-Team") for r in second.requests} == {"lab"}
        assert {r.headers.get("X-Team") for r in main.requests} == {None}
        assert second.rate_limited_count == 0 and main.rate_limited_count == 0
        assert second.max_in_progress == 1
        assert second.max_tokens_in_window <= TPM
        b = status["endpoints"]["b"]
        assert (b["concurrency"], b["tokens_per_minute"], b["models"]) == (1, TPM, ["deepseek_r1"])
        assert 0 < b["tokens_last_minute"] <= TPM
        assert drafts(status)["done"] == 2 * DRAFTS_PER_MODEL + sent
        assert await daemon.stop() == 0


async def test_one_model_on_a_fleet_of_three_endpoints_fills_each_within_its_limits(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """gemini is served by three servers that take 1, 2 and 3 calls at once (and answer in 60, 40
    and 20 ms): every server gets calls, none more at once than its limit, and every draft is
    done, each paid once."""
    async with running(*(FakeLlm(api_key=API_KEY, latency_ms=latency) for latency in (60, 40, 20))) as fakes:
        extra = "".join(
            endpoint(f"s{n}", fake.base_url, "DD_TEST_KEY", f"concurrency = {n}\n")
            for n, fake in enumerate(fakes, start=1)
        ) + route("gemini_25_flash", "s1", "s2", "s3")
        config = fast_config(None, extra=extra).replace("model_concurrency = 4", "model_concurrency = 6")
        daemon = make(
            daemons, tmp_path, config.replace("[llm]\n", '[llm]\nbase_url = "http://127.0.0.1:9/v1"\n')
        )
        await daemon.start()
        assert (await daemon.approve("draft", llm_model_id="gemini_25_flash"))["matched"] == DRAFTS_PER_MODEL
        status = await daemon.wait_stage("draft", done=DRAFTS_PER_MODEL)
        assert [fake.max_in_progress <= n for n, fake in enumerate(fakes, start=1)] == [True] * 3
        assert all(fake.requests for fake in fakes), [len(fake.requests) for fake in fakes]
        answered = Counter(r.prompt for fake in fakes for r in fake.requests if r.status == 200)
        assert len(answered) == DRAFTS_PER_MODEL and set(answered.values()) == {1}
        assert {name: status["endpoints"][name]["models"] for name in ("s1", "s2", "s3")} == {
            name: ["gemini_25_flash"] for name in ("s1", "s2", "s3")
        }
        assert await daemon.stop() == 0


async def test_a_fleet_endpoint_that_goes_down_mid_run_leaves_its_work_to_the_others(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The three drafting models on three servers; the second (the fastest, so it gets the most
    calls) answers its first two calls, then only 503s. Its calls' retries go to the other two, it
    is parked after three failures in a row, and every draft ends done: nothing failed, no prompt
    answered twice."""
    served = {"calls": 0}

    def down_after_two(_number: int, _request: RecordedRequest) -> FaultKind | None:
        served["calls"] += 1
        return FaultKind.UNAVAILABLE if served["calls"] > 2 else None

    async with running(
        FakeLlm(api_key=API_KEY, latency_ms=200),
        FakeLlm(api_key=API_KEY, latency_ms=5, fault_fn=down_after_two),
        FakeLlm(api_key=API_KEY, latency_ms=200),
    ) as fakes:
        extra = "".join(
            endpoint(f"s{n}", fake.base_url, "DD_TEST_KEY", "concurrency = 2\n")
            for n, fake in enumerate(fakes, start=1)
        ) + "".join(route(model, "s1", "s2", "s3") for model in MODEL_STRINGS)
        daemon = make(daemons, tmp_path, fast_config(fakes[0].base_url, extra=extra))
        await daemon.start()
        assert (await daemon.approve("draft"))["matched"] == 3 * DRAFTS_PER_MODEL
        await daemon.wait_stage("draft", done=3 * DRAFTS_PER_MODEL)
        failing = fakes[1]
        assert sum(1 for r in failing.requests if r.status == 200) == 2
        assert sum(1 for r in failing.requests if r.status == 503) >= 3
        assert '"endpoint": "s2", "failures": 3' in daemon.stdout.read_text()  # parked, and logged
        answered = Counter((r.model, r.prompt) for fake in fakes for r in fake.requests if r.status == 200)
        assert len(answered) == 3 * DRAFTS_PER_MODEL and set(answered.values()) == {1}
        assert await daemon.stop() == 0


async def test_without_llm_a_model_with_no_route_waits_and_status_says_why(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Only gemini is routed (to endpoint a) and there is no [llm]: gemini's drafts are done, the
    other models' wait queued, nothing fails and nothing is sent for them; status shows the
    trouble no_endpoint naming them."""
    async with FakeLlm(api_key=API_KEY) as fake:
        config = fast_config(fake.base_url, extra=endpoint("a", fake.base_url, "DD_TEST_KEY"))
        llm = config[config.index("[llm]\n") : config.index("[retry]")]
        daemon = make(daemons, tmp_path, config.replace(llm, "") + route("gemini_25_flash", "a"))
        await daemon.start()
        assert (await daemon.approve("draft"))["matched"] == 3 * DRAFTS_PER_MODEL

        def gemini_done_others_waiting(s: dict[str, Any] | None) -> bool:
            troubles = (s or {}).get("pool", {}).get("troubles", [])
            return drafts(s)["done"] == DRAFTS_PER_MODEL and [t["what"] for t in troubles] == ["no_endpoint"]

        status = await daemon.wait_for(gemini_done_others_waiting, what="gemini done, the others held back")
        (trouble,) = status["pool"]["troubles"]
        assert "deepseek_r1" in trouble["message"] and "gpt_4o_mini" in trouble["message"]
        await holds(
            daemon,
            lambda s: drafts(s)["queued"] == 2 * DRAFTS_PER_MODEL and drafts(s)["failed"] == 0,
            for_s=0.5,
            what="the unrouted drafts queued",
        )
        assert models_seen(fake) == {"gemini_25_flash": DRAFTS_PER_MODEL}
        assert await daemon.stop() == 0
