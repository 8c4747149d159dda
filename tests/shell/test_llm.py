"""The LLM layer: the client against the fault-injecting fake server (classification, retry counts,
no leaks), the offline providers, the API key, and the provider registry.

Each failure kind is pinned by how many requests the fake server recorded, because that is what
the user pays for. Sleeps are recorded, never slept.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from daydreamd.core.config import LlmSettings, load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.core.retry import FailureKind, RetryPolicy
from daydreamd.llm import registry
from daydreamd.llm.apikey import REDACTED, read_api_key
from daydreamd.llm.calls import AttemptRecord, call_with_retries
from daydreamd.llm.checks import attempt_problem, content_problem
from daydreamd.llm.offline import EchoProvider, MockProvider, mock_reply_text, mock_score
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.registry import (
    ProviderKind,
    check_settings,
    known_providers,
    make_provider,
    needs_session,
    register,
)
from daydreamd.llm.types import CallFailure, LlmRequest, Provider, Reply, Usage
from tests.fakellm import FakeLlm, Fault, FaultKind, RecordedRequest, default_reply

KEY = "sk-or-v1-CANARY-5f1e0c7d9b3a4e21a8c6"
POLICY = RetryPolicy()


class SleepRecorder:
    """Stands in for ``anyio.sleep``: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeLlm]:
    async with FakeLlm(slow_body_s=3.0) as server:
        yield server


def make_client(
    session: aiohttp.ClientSession, fake: FakeLlm, *, key: str | None = KEY, timeout_s: float = 5.0
) -> OpenAiCompatibleClient:
    return OpenAiCompatibleClient(
        session,
        fake.base_url,
        key,
        timeout_s,
        {"HTTP-Referer": "https://example.org", "X-Title": "daydreamd"},
    )


def make_request(
    prompt: str = "prompt-a", *, max_tokens: int = 1000, temperature: float | None = 0.7
) -> LlmRequest:
    return LlmRequest(model="test/model-1", prompt=prompt, max_tokens=max_tokens, temperature=temperature)


async def run(
    provider: Provider, request: LlmRequest, policy: RetryPolicy = POLICY
) -> tuple[Reply | CallFailure, SleepRecorder]:
    sleep = SleepRecorder()
    try:
        reply, _ = await call_with_retries(provider, request, policy, rng=random.Random(0), sleep=sleep)
    except CallFailure as failure:
        return failure, sleep
    return reply, sleep


def always(fault: Fault | FaultKind) -> Callable[[int, RecordedRequest], Fault | FaultKind]:
    return lambda _number, _request: fault


# ---- success --------------------------------------------------------------------------------


async def test_success_captures_text_usage_cost_provider_and_ids(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    request = make_request("prompt-success")
    reply, attempts = await call_with_retries(
        make_client(session, fake), request, POLICY, rng=random.Random(0), sleep=SleepRecorder()
    )
    assert attempts == 1
    served = fake.requests[0]
    assert reply.text == default_reply(served)
    # The fake server reports prompt tokens as characters // 4, reasoning as a quarter of the
    # completion, and cost at $1/$4 per million tokens.
    prompt_tokens, completion_tokens = max(1, len(served.prompt) // 4), reply.usage.completion_tokens
    assert completion_tokens is not None and completion_tokens > 0
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + completion_tokens
    assert reply.usage.reasoning_tokens == completion_tokens // 4 > 0
    assert reply.usage.cost == round(prompt_tokens * 1e-6 + completion_tokens * 4e-6, 9)
    assert isinstance(reply.usage.cost, float)
    assert reply.usage.cost > 0
    assert reply.provider == "FakeProvider"
    assert reply.generation_id == "gen-fake-1"
    assert reply.served_model == "test/model-1"
    assert (reply.finish_reason, reply.native_finish_reason, reply.truncated) == ("stop", "stop", False)
    metadata = reply.to_dict()
    assert "text" not in metadata
    assert metadata["usage"]["cost"] == reply.usage.cost
    json.dumps(metadata)


async def test_request_carries_key_app_headers_and_openrouter_usage_flag(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    await make_client(session, fake).complete(
        make_request("prompt-headers", max_tokens=321, temperature=0.25)
    )
    served = fake.requests[0]
    assert served.path == "/v1/chat/completions"
    assert served.headers["Authorization"] == f"Bearer {KEY}"
    assert served.headers["HTTP-Referer"] == "https://example.org"
    assert served.headers["X-Title"] == "daydreamd"
    assert served.body == {
        "model": "test/model-1",
        "messages": [{"role": "user", "content": "prompt-headers"}],
        "max_tokens": 321,
        "temperature": 0.25,
        "usage": {"include": True},
    }


async def test_no_key_means_no_authorization_and_temperature_none_is_omitted(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    client = OpenAiCompatibleClient(session, fake.base_url + "/", None, 5.0, None, include_usage=False)
    await client.complete(make_request("prompt-bare", temperature=None))
    served = fake.requests[0]
    assert "Authorization" not in served.headers
    assert served.body is not None
    assert "temperature" not in served.body
    assert "usage" not in served.body


# ---- failure kinds: classification and retry counts ----------------------------------------


FAILURE_TABLE = [
    pytest.param(FaultKind.RATE_LIMIT, FailureKind.RATE_LIMIT, 8, id="429"),
    pytest.param(FaultKind.SERVER_ERROR, FailureKind.TRANSIENT, 3, id="500"),
    pytest.param(FaultKind.BAD_GATEWAY, FailureKind.TRANSIENT, 3, id="502"),
    pytest.param(FaultKind.UNAVAILABLE, FailureKind.TRANSIENT, 3, id="503"),
    pytest.param(FaultKind.QUOTA, FailureKind.QUOTA, 1, id="402"),
    pytest.param(FaultKind.AUTH, FailureKind.AUTH, 1, id="401"),
    pytest.param(FaultKind.INVALID_REQUEST, FailureKind.INVALID_REQUEST, 1, id="400"),
    pytest.param(Fault(kind=FaultKind.ERROR_BODY, code=502), FailureKind.TRANSIENT, 3, id="200-error-502"),
    pytest.param(Fault(kind=FaultKind.ERROR_BODY, code=503), FailureKind.TRANSIENT, 3, id="200-error-503"),
    pytest.param(Fault(kind=FaultKind.ERROR_BODY, code=429), FailureKind.RATE_LIMIT, 8, id="200-error-429"),
    pytest.param(Fault(kind=FaultKind.ERROR_BODY, code=402), FailureKind.QUOTA, 1, id="200-error-402"),
    pytest.param(Fault(kind=FaultKind.ERROR_BODY, code=401), FailureKind.AUTH, 1, id="200-error-401"),
    pytest.param(
        Fault(kind=FaultKind.ERROR_BODY, code=400), FailureKind.INVALID_REQUEST, 1, id="200-error-400"
    ),
    pytest.param(FaultKind.EMPTY_CHOICES, FailureKind.TRANSIENT, 3, id="empty-choices"),
    pytest.param(FaultKind.EMPTY_CONTENT, FailureKind.EMPTY, 1, id="empty-content"),
    pytest.param(FaultKind.MALFORMED_JSON, FailureKind.TRANSIENT, 3, id="malformed-json"),
    pytest.param(FaultKind.DROP, FailureKind.TRANSIENT, 3, id="dropped-connection"),
    pytest.param(FaultKind.CONTENT_FILTER, FailureKind.CONTENT_FILTER, 1, id="content-filter"),
]


@pytest.mark.parametrize(("fault", "kind", "calls"), FAILURE_TABLE)
async def test_each_failure_kind_is_classified_and_tried_exactly_as_often_as_allowed(
    session: aiohttp.ClientSession, fake: FakeLlm, fault: Fault | FaultKind, kind: FailureKind, calls: int
) -> None:
    fake.fault_fn = always(fault)
    failure, sleep = await run(make_client(session, fake), make_request("prompt-fault"))
    assert isinstance(failure, CallFailure)
    assert failure.kind is kind
    assert fake.calls_for("prompt-fault") == calls
    assert failure.attempts == calls
    assert len(sleep.delays) == calls - 1


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(FaultKind.BAD_GATEWAY, FailureKind.TRANSIENT), (FaultKind.RATE_LIMIT, FailureKind.RATE_LIMIT)],
)
async def test_retryable_failures_recover(
    session: aiohttp.ClientSession, fake: FakeLlm, fault: FaultKind, kind: FailureKind
) -> None:
    fake.script(fault, times=2)
    records: list[AttemptRecord] = []
    reply, attempts = await call_with_retries(
        make_client(session, fake),
        make_request("prompt-recover"),
        POLICY,
        rng=random.Random(0),
        sleep=SleepRecorder(),
        on_attempt=records.append,
    )
    assert attempts == 3
    assert fake.calls_for("prompt-recover") == 3
    assert reply.text
    assert [record.outcome for record in records] == [kind.value, kind.value, "ok"]
    assert [record.attempt for record in records] == [1, 2, 3]


async def test_status_and_message_are_kept_on_failure(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script(Fault(kind=FaultKind.INVALID_REQUEST, message="max_tokens too large for this model"))
    failure, _ = await run(make_client(session, fake), make_request("prompt-400"))
    assert isinstance(failure, CallFailure)
    assert failure.status == 400
    assert "max_tokens too large" in failure.message
    assert str(failure).startswith("invalid_request:")


async def test_error_body_status_is_its_code(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script(Fault(kind=FaultKind.ERROR_BODY, code=402, message="credits exhausted upstream"))
    failure, _ = await run(make_client(session, fake), make_request("prompt-402-body"))
    assert isinstance(failure, CallFailure)
    assert (failure.kind, failure.status) == (FailureKind.QUOTA, 402)
    assert "credits exhausted upstream" in failure.message


async def test_content_filter_keeps_the_paid_for_reply(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script(FaultKind.CONTENT_FILTER)
    failure, _ = await run(make_client(session, fake), make_request("prompt-filtered"))
    assert isinstance(failure, CallFailure)
    assert failure.reply is not None
    assert failure.reply.text
    assert failure.reply.finish_reason == "content_filter"
    assert failure.reply.usage.completion_tokens is not None


async def test_401_is_never_retried_even_with_a_generous_policy(session: aiohttp.ClientSession) -> None:
    async with FakeLlm(api_key="sk-the-right-one") as fake:
        policy = RetryPolicy(rate_limit_tries=50, transient_tries=50)
        failure, sleep = await run(make_client(session, fake, key="sk-a-wrong-one"), make_request(), policy)
        assert isinstance(failure, CallFailure)
        assert (failure.kind, failure.status) == (FailureKind.AUTH, 401)
        assert fake.request_count == 1
        assert sleep.delays == []


async def test_per_kind_budgets_do_not_eat_each_other(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script_sequence(
        [FaultKind.RATE_LIMIT, FaultKind.RATE_LIMIT, FaultKind.UNAVAILABLE, FaultKind.UNAVAILABLE]
    )
    reply, sleep = await run(make_client(session, fake), make_request("prompt-mixed"))
    assert isinstance(reply, Reply)
    assert fake.calls_for("prompt-mixed") == 5
    assert len(sleep.delays) == 4


# ---- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected_delay"),
    [
        pytest.param(Fault(kind=FaultKind.RATE_LIMIT, retry_after="7"), 7.0, id="429-seconds"),
        pytest.param(Fault(kind=FaultKind.RATE_LIMIT, retry_after="100000"), 120.0, id="429-capped"),
        pytest.param(Fault(kind=FaultKind.UNAVAILABLE, retry_after="3"), 3.0, id="503-seconds"),
        pytest.param(Fault(kind=FaultKind.QUOTA, retry_after="11"), 11.0, id="402-with-retry-after"),
    ],
)
async def test_retry_after_is_honoured(
    session: aiohttp.ClientSession, fake: FakeLlm, fault: Fault, expected_delay: float
) -> None:
    fake.script(fault)
    reply, sleep = await run(make_client(session, fake), make_request("prompt-retry-after"))
    assert isinstance(reply, Reply)
    assert sleep.delays == [expected_delay]
    assert fake.calls_for("prompt-retry-after") == 2


async def test_rpm_limited_server_tells_how_long_to_wait(session: aiohttp.ClientSession) -> None:
    now = [1000.0]
    async with FakeLlm(rpm=1, clock=lambda: now[0]) as fake:
        client = make_client(session, fake)
        await client.complete(make_request("first"))
        now[0] += 15.0
        with pytest.raises(CallFailure) as caught:
            await client.complete(make_request("second"))
        assert caught.value.kind is FailureKind.RATE_LIMIT
        assert caught.value.retry_after == 45.0


async def test_without_retry_after_the_backoff_is_jittered_within_bounds(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    fake.fault_fn = always(FaultKind.RATE_LIMIT)
    failure, sleep = await run(make_client(session, fake), make_request("prompt-backoff"))
    assert isinstance(failure, CallFailure)
    assert len(sleep.delays) == 7
    for attempt, delay in enumerate(sleep.delays, start=1):
        assert 0.0 <= delay <= min(120.0, 2.0 * 2 ** (attempt - 1))


# ---- transport failures ---------------------------------------------------------------------


async def test_slow_body_hits_the_timeout_and_is_transient(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    fake.script(FaultKind.SLOW_BODY)
    client = make_client(session, fake, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(CallFailure) as caught:
        await client.complete(make_request("prompt-slow"))
    assert time.monotonic() - started < 2.0
    assert caught.value.kind is FailureKind.TRANSIENT
    assert "timed out" in caught.value.message
    assert fake.requests[0].fault is FaultKind.SLOW_BODY


async def test_slow_body_is_retried_then_succeeds(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script(FaultKind.SLOW_BODY)
    reply, sleep = await run(make_client(session, fake, timeout_s=0.3), make_request("prompt-slow-retry"))
    assert isinstance(reply, Reply)
    assert fake.calls_for("prompt-slow-retry") == 2
    assert len(sleep.delays) == 1


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    async with FakeLlm() as gone:
        base_url = gone.base_url
    client = OpenAiCompatibleClient(session, base_url, KEY, 2.0)
    failure, sleep = await run(client, make_request(), RetryPolicy(transient_tries=2))
    assert isinstance(failure, CallFailure)
    assert failure.kind is FailureKind.TRANSIENT
    assert failure.attempts == 2
    assert len(sleep.delays) == 1


async def test_an_invalid_url_is_not_retried(session: aiohttp.ClientSession) -> None:
    client = OpenAiCompatibleClient(session, "not a url", KEY, 2.0)
    failure, _ = await run(client, make_request())
    assert isinstance(failure, CallFailure)
    assert failure.attempts == 1
    assert failure.kind is FailureKind.INVALID_REQUEST


# ---- truncation -----------------------------------------------------------------------------


async def test_truncation_is_flagged_not_raised(session: aiohttp.ClientSession, fake: FakeLlm) -> None:
    fake.script(FaultKind.TRUNCATED)
    reply, attempts = await call_with_retries(
        make_client(session, fake),
        make_request("prompt-trunc", max_tokens=40),
        POLICY,
        rng=random.Random(0),
        sleep=SleepRecorder(),
    )
    assert attempts == 1
    assert reply.truncated
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 40
    assert reply.text


async def test_a_reply_using_all_max_tokens_counts_as_truncated(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    reply = await make_client(session, fake).complete(make_request("prompt-tiny-limit", max_tokens=5))
    assert reply.truncated
    assert reply.usage.completion_tokens == 5


# ---- the API key never leaks ----------------------------------------------------------------


def _assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)
        # Not even a piece of it that could be pasted back together.
        assert KEY[8:24] not in str(text)


@pytest.mark.parametrize(
    "fault",
    [
        FaultKind.AUTH,
        FaultKind.SERVER_ERROR,
        FaultKind.RATE_LIMIT,
        Fault(kind=FaultKind.ERROR_BODY, code=502),
        Fault(kind=FaultKind.INVALID_REQUEST, message="x" * 425),  # the key straddles the 500-char cut
        Fault(kind=FaultKind.INVALID_REQUEST, message="y" * 2000),
    ],
)
async def test_echoed_key_never_reaches_failures(
    session: aiohttp.ClientSession, fault: Fault | FaultKind
) -> None:
    async with FakeLlm(echo_auth_in_errors=True) as fake:
        fake.script(fault)
        with pytest.raises(CallFailure) as caught:
            await make_client(session, fake).complete(make_request("prompt-leak"))
        assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # it was sent
        failure = caught.value
        _assert_no_key(failure, repr(failure), failure.message, failure.args)
        if len(failure.message) < 400:
            assert REDACTED in failure.message


async def test_echoed_key_never_reaches_a_reply(session: aiohttp.ClientSession) -> None:
    def echo_auth(request: RecordedRequest) -> str:
        return f"You sent {request.headers.get('Authorization')} and that is all.\n"

    async with FakeLlm(reply_builder=echo_auth) as fake:
        reply = await make_client(session, fake).complete(make_request("prompt-leak-reply"))
        _assert_no_key(reply, repr(reply), reply.text, reply.to_dict())
        assert REDACTED in reply.text
        fake.script(FaultKind.CONTENT_FILTER)
        with pytest.raises(CallFailure) as caught:
            await make_client(session, fake).complete(make_request("prompt-leak-filter"))
        assert caught.value.reply is not None
        _assert_no_key(caught.value.reply.text, caught.value.reply.to_dict())


async def test_client_repr_has_no_key(session: aiohttp.ClientSession) -> None:
    _assert_no_key(repr(OpenAiCompatibleClient(session, "http://localhost/v1", KEY, 1.0)))


# ---- the attempt hook -----------------------------------------------------------------------


async def test_on_attempt_sees_every_attempt_and_may_be_async(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    fake.script(Fault(kind=FaultKind.RATE_LIMIT, retry_after="4"))
    records: list[AttemptRecord] = []

    async def hook(record: AttemptRecord) -> None:
        records.append(record)

    reply, attempts = await call_with_retries(
        make_client(session, fake),
        make_request("prompt-hook"),
        POLICY,
        rng=random.Random(0),
        sleep=SleepRecorder(),
        on_attempt=hook,
    )
    assert attempts == 2
    first, second = records
    assert (first.attempt, first.outcome, first.status, first.retry_after, first.delay_s) == (
        1,
        "rate_limit",
        429,
        4.0,
        4.0,
    )
    assert first.usage is None
    assert (second.attempt, second.outcome, second.delay_s) == (2, "ok", None)
    assert second.usage == reply.usage
    assert first.started_at <= first.finished_at <= second.started_at <= second.finished_at
    assert second.duration_s >= 0.0


async def test_final_failure_is_reported_to_the_hook_without_a_delay(
    session: aiohttp.ClientSession, fake: FakeLlm
) -> None:
    fake.script(FaultKind.QUOTA)
    records: list[AttemptRecord] = []
    with pytest.raises(CallFailure):
        await call_with_retries(
            make_client(session, fake),
            make_request("prompt-final"),
            POLICY,
            rng=random.Random(0),
            sleep=SleepRecorder(),
            on_attempt=records.append,
        )
    assert [(record.outcome, record.delay_s) for record in records] == [("quota", None)]


# ---- offline providers ----------------------------------------------------------------------


async def test_echo_provider_echoes_the_prompt() -> None:
    provider = EchoProvider()
    assert isinstance(provider, Provider)
    reply = await provider.complete(make_request("echo me"))
    assert reply.text == "echo me"
    assert reply.provider == "echo"
    assert reply.usage.cost == 0.0
    assert not reply.truncated
    with pytest.raises(CallFailure) as caught:
        await provider.complete(make_request(""))
    assert caught.value.kind is FailureKind.EMPTY


async def test_mock_provider_gives_well_formed_replies_per_stage() -> None:
    provider = MockProvider()
    assert isinstance(provider, Provider)

    def staged(stage: str | None, prompt: str) -> LlmRequest:
        return LlmRequest(model="m", prompt=prompt, max_tokens=2000, temperature=None, stage=stage)

    draft = await provider.complete(staged("draft", "draft prompt"))
    lines = draft.text.splitlines()
    assert '<essay-idea stage="1">' in lines
    assert '<essay-idea stage="2">' in lines
    assert lines.count("</essay-idea>") == 2

    essay = await provider.complete(staged("essay", "essay prompt"))
    assert len([part for part in essay.text.split("\n\n") if part.strip()]) >= 3

    evaluation = await provider.complete(staged("evaluation", "evaluation prompt"))
    assert evaluation.text.strip().splitlines()[-1] == f"SCORE: {mock_score('evaluation prompt')}"
    assert 0 <= mock_score("evaluation prompt") <= 9

    again = await provider.complete(staged("evaluation", "evaluation prompt"))
    assert again == evaluation
    assert {mock_score(f"p{index}") for index in range(200)} == set(range(10))

    universal = mock_reply_text("anything", None)
    assert '<essay-idea stage="2">' in universal.splitlines()
    assert universal.strip().splitlines()[-1].startswith("SCORE: ")


async def test_mock_provider_truncates_like_a_model() -> None:
    reply = await MockProvider().complete(
        LlmRequest(model="m", prompt="p", max_tokens=10, temperature=None, stage="essay")
    )
    assert reply.truncated
    assert reply.usage.completion_tokens == 10
    assert len(reply.text) <= 40


# ---- the API key ----------------------------------------------------------------------------


def test_read_api_key_prefers_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("OPENROUTER_API_KEY=from-file\n", encoding="utf-8")
    assert read_api_key("OPENROUTER_API_KEY", {"OPENROUTER_API_KEY": "from-env"}, dotenv) == "from-env"


def test_read_api_key_falls_back_to_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        "\n"
        "OTHER=1\n"
        "OPENROUTER_API_KEY_OLD=nope\n"
        "export OPENROUTER_API_KEY = 'sk-quoted # not a comment'\n",
        encoding="utf-8",
    )
    dotenv.chmod(0o600)  # a .env others may read is refused (tests/shell/test_scrubber.py)
    env = {"OPENROUTER_API_KEY": "  "}
    assert read_api_key("OPENROUTER_API_KEY", env, dotenv) == "sk-quoted # not a comment"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('KEY="double"', "double"),
        ("KEY=plain", "plain"),
        ("KEY=plain # trailing comment", "plain"),
        ("KEY=", None),
        ("#KEY=commented", None),
    ],
)
def test_read_api_key_dotenv_forms(tmp_path: Path, line: str, expected: str | None) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(line + "\n", encoding="utf-8")
    dotenv.chmod(0o600)
    assert read_api_key("KEY", {}, dotenv) == expected


def test_read_api_key_without_any_source(tmp_path: Path) -> None:
    assert read_api_key("KEY", {}, None) is None
    assert read_api_key("KEY", {}, tmp_path / "missing.env") is None


# ---- reply checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "finish_reason", "expected"),
    [
        ("An idea.\n", "stop", None),
        ("Half an idea", "content_filter", FailureKind.CONTENT_FILTER),
        ("", "content_filter", FailureKind.CONTENT_FILTER),
        ("", "stop", FailureKind.EMPTY),
        (" \n\t\n", None, FailureKind.EMPTY),
        ("", "length", FailureKind.EMPTY),
    ],
)
def test_content_problem_is_filtered_or_blank(
    text: str, finish_reason: str | None, expected: FailureKind | None
) -> None:
    problem = content_problem(text, finish_reason)
    assert (problem[0] if problem else None) is expected


def test_a_blank_reply_cut_at_max_tokens_is_an_answered_attempt() -> None:
    """The attempt passes (the server answered and was paid); the runner fails it as empty."""
    blank = Reply(
        text="",
        finish_reason="length",
        native_finish_reason="length",
        truncated=True,
        usage=Usage(completion_tokens=10),
        provider=None,
        generation_id=None,
        served_model=None,
    )
    assert attempt_problem(blank) is None
    assert attempt_problem(replace(blank, truncated=False)) == (
        FailureKind.EMPTY,
        "reply content is empty (finish_reason='length')",
    )
    assert attempt_problem(replace(blank, finish_reason="content_filter")) == (
        FailureKind.CONTENT_FILTER,
        "reply stopped by a content filter",
    )


# ---- the provider registry --------------------------------------------------------------------


def test_the_built_in_providers_are_registered_by_name() -> None:
    assert known_providers() == ("openrouter", "openai", "mock", "echo")
    assert [needs_session(LlmSettings(provider=name)) for name in known_providers()] == [
        True,
        True,
        False,
        False,
    ]


def test_an_unknown_provider_is_a_config_error_listing_the_known_names() -> None:
    llm = LlmSettings(provider="claude")
    for attempt in (
        lambda: make_provider(llm, env={}, config_dir=None, session=None),
        lambda: needs_session(llm),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert caught.value.key == "llm.provider"
        assert str(caught.value) == "llm.provider: must be one of openrouter, openai, mock, echo"


def test_a_bad_provider_in_the_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    """Loading is the core's (which cannot know the names); check_settings completes it."""
    config = tmp_path / "config.toml"
    config.write_text('[llm]\nprovider = "claude"\n', encoding="utf-8")
    settings = load_settings(config, {})
    with pytest.raises(ConfigError) as caught:
        check_settings(settings)
    assert caught.value.key == "llm.provider"
    assert str(caught.value) == f"{config}: llm.provider: must be one of openrouter, openai, mock, echo"
    check_settings(load_settings(None, {}))


def test_daydreamctl_and_the_daemon_refuse_a_bad_provider_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[llm]\nprovider = "claude"\n', encoding="utf-8")
    expected = f"{config}: llm.provider: must be one of openrouter, openai, mock, echo"
    # Imported here: the upper layers are not needed by the rest of this file.
    from click.testing import CliRunner

    from daydreamd.cli.main import cli
    from daydreamd.daemon.lifecycle import main as daemon_main

    result = CliRunner().invoke(cli, ["--config", str(config), "validate", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert expected in result.stderr

    with pytest.raises(SystemExit) as exited:
        daemon_main(["--config", str(config)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"daydreamd: {expected}\n"
    assert list(tmp_path.iterdir()) == [config]  # nothing was created: no state, no socket


def test_a_provider_registers_by_name() -> None:
    kind = ProviderKind(name="test-canned", factory=lambda _context: EchoProvider(), online=False)
    register(kind)
    try:
        assert "test-canned" in known_providers()
        provider = make_provider(LlmSettings(provider="test-canned"), env={}, config_dir=None, session=None)
        assert isinstance(provider, EchoProvider)
        with pytest.raises(ValueError, match="already registered"):
            register(kind)
    finally:
        registry._KINDS.pop("test-canned")
