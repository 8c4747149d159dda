"""The Batch API client against the fake server over real HTTP: files, batches, the tag, results."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from daydreamd.core.retry import FailureKind
from daydreamd.llm.apikey import REDACTED
from daydreamd.llm.batch_api import BatchApiError, BatchClient, ResultLine
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.types import CallFailure, LlmRequest, Reply
from tests.fakellm import FakeLlm

KEY = "sk-test-batch-client-0123456789abcdef"


def request(n: int) -> LlmRequest:
    return LlmRequest(
        model="openai/gpt-4o", prompt=f"Judge essay {n}. End with SCORE: n", max_tokens=200, temperature=0.2
    )


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def client(fake: FakeLlm, session: aiohttp.ClientSession, key: str = KEY) -> BatchClient:
    return BatchClient(OpenAiCompatibleClient(session, fake.base_url, key, 5.0, include_usage=False))


async def test_a_batch_goes_from_upload_to_results_read_as_online_replies(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeLlm(api_key=KEY, batch_delay_s=0.0, batch_fail_every=3) as fake:
        api = client(fake, session)
        content = b"".join(api.request_line(f"v_{n}", request(n)) for n in range(6))
        first = json.loads(content.splitlines()[0])
        assert first["custom_id"] == "v_0" and first["url"] == "/v1/chat/completions"
        assert first["body"] == {
            "model": "openai/gpt-4o",
            "messages": [{"role": "user", "content": request(0).prompt}],
            "max_tokens": 200,
            "temperature": 0.2,
        }
        file_id = await api.upload(content, "in.jsonl")
        created = await api.create(file_id, completion_window="24h", tag="ddb_x")
        assert (created.tag, created.input_file_id) == ("ddb_x", file_id)
        ended = await api.get(created.id)
        assert ended.ended and (ended.status, ended.total, ended.completed, ended.failed) == (
            "completed",
            6,
            4,
            2,
        )
        assert ended.output_file_id and ended.error_file_id
        lines = {
            line.custom_id: line
            for file_id in (ended.output_file_id, ended.error_file_id)
            for line in api.read_lines(await api.content(file_id))
        }
        assert sorted(lines) == [f"v_{n}" for n in range(6)]
        reply = api.result(request(0), lines["v_0"])
        assert isinstance(reply, Reply) and "SCORE" in reply.text and reply.usage.prompt_tokens
        with pytest.raises(CallFailure) as failed:
            api.result(request(2), lines["v_2"])  # every 3rd: a 500 in the error file
        assert (failed.value.kind, failed.value.status) == (FailureKind.TRANSIENT, 500)
        assert dict(fake.batch_api.submissions) == {f"v_{n}": 1 for n in range(6)}


async def test_find_pages_through_the_list_for_the_tag(session: aiohttp.ClientSession) -> None:
    """The batch with a tag is found behind more than a page of newer ones; an unknown tag is None."""
    async with FakeLlm(api_key=KEY, batch_delay_s=60) as fake:
        api = client(fake, session)
        file_id = await api.upload(api.request_line("v_1", request(1)), "in.jsonl")
        wanted = await api.create(file_id, completion_window="24h", tag="ddb_wanted")
        for n in range(130):
            await api.create(file_id, completion_window="24h", tag=f"ddb_{n}")
        found = await api.find("ddb_wanted")
        assert found is not None and found.id == wanted.id and found.status == "validating"
        assert await api.find("ddb_never") is None


async def test_errors_say_what_failed_whether_to_try_again_and_never_hold_the_key(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeLlm(api_key=KEY) as fake:
        with pytest.raises(BatchApiError) as missing:
            await client(fake, session).get("batch_nope")
        assert (
            missing.value.status == 404
            and not missing.value.transient
            and "/batches/batch_nope" in str(missing.value)
        )
        with pytest.raises(BatchApiError) as refused:
            await client(fake, session, key="sk-wrong-key-0123456789abcdef").upload(b"{}\n", "x.jsonl")
        assert refused.value.status == 401 and not refused.value.transient
    with pytest.raises(BatchApiError) as down:  # the server is gone
        await client(fake, session).get("batch_1")
    assert down.value.status is None and down.value.transient


def test_result_lines_without_an_answer_fail_by_their_error_and_odd_lines_are_skipped() -> None:
    api = BatchClient(OpenAiCompatibleClient(None, "http://x/v1", KEY, 5.0))  # type: ignore[arg-type]
    content = (
        b'{"custom_id": "v_1", "response": null, "error": {"code": "batch_expired", "message": "too late"}}\n'
        b"not json\n"
        b'{"response": {"status_code": 200, "body": {}}}\n'
        b'{"custom_id": "v_2", "response": null, "error": {"code": "x", "message": "key '
        + KEY.encode()
        + b'"}}\n'
    )
    lines = api.read_lines(content)
    assert [line.custom_id for line in lines] == ["v_1", "v_2"]
    with pytest.raises(CallFailure) as expired:
        api.result(request(1), lines[0])
    assert expired.value.kind is FailureKind.BATCH_EXPIRED and "too late" in expired.value.message
    with pytest.raises(CallFailure) as other:
        api.result(request(2), lines[1])
    assert other.value.kind is FailureKind.BATCH_FAILED
    assert KEY not in other.value.message and REDACTED in other.value.message
    with pytest.raises(CallFailure) as cut:  # an answer is checked as an online one: a body without choices
        api.result(request(3), ResultLine("v_3", 200, b'{"choices": []}', None))
    assert cut.value.kind is FailureKind.TRANSIENT
