"""The stage runner end to end: real HTTP to the fault-injecting fake, real files in a tmp data dir.

Every test runs generations of the example experiment (a tmp copy of ``data/1_raw``) through
``Runner`` with an ``OpenAiCompatibleClient`` talking to ``FakeLlm`` on loopback, and pins what a
user pays for (requests the fake recorded), what they are told (``Outcome`` and
``metadata.json``) and what is left on disk. Backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import daydreamd
from daydreamd.core import metadata as metadata_module
from daydreamd.core.build import Build, read_and_build
from daydreamd.core.cohort import Generation
from daydreamd.core.config import LlmSettings, Settings, load_settings
from daydreamd.core.errors import ConfigError
from daydreamd.core.jobs import Job, Jobs
from daydreamd.core.metadata import input_sha256
from daydreamd.core.parsers import format_score
from daydreamd.core.problems import has_errors
from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import PARENT_STAGE, Stage
from daydreamd.daemon.runner import Outcome, Runner
from daydreamd.llm.apikey import REDACTED, Scrubber
from daydreamd.llm.offline import EchoProvider, MockProvider, mock_score
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.registry import make_provider
from daydreamd.llm.types import Provider
from daydreamd.storage.gens import GensStore
from daydreamd.storage.group_sync import GroupSync
from tests.fakellm import FakeLlm, Fault, FaultKind, FaultSpec, RecordedRequest, default_reply

KEY = "sk-or-v1-RUNNERCANARY-7c1d9e04b2a85f36e1"
KEY_FRAGMENTS = (KEY, "RUNNERCANARY", "7c1d9e04b2a85f36e1")
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RAW = REPO_ROOT / "data" / "1_raw"
GEN_MODEL = "google/gemini-2.5-flash"
JUDGE_MODEL = "anthropic/claude-sonnet-4"
TEMPLATE_SPECS = {
    # (stage, template_id): (generator, parser as recorded in metadata)
    (Stage.DRAFT, "bridge-sketch"): ("llm", "identity"),
    (Stage.DRAFT, "rolling-idea"): ("llm", "essay_idea_last"),
    (Stage.DRAFT, "contrast-map"): ("llm", "identity"),
    (Stage.ESSAY, "polished-essay"): ("llm", "identity"),
    (Stage.ESSAY, "idea-as-essay"): ("copy", "identity"),
    (Stage.EVALUATION, "novelty-judge"): ("llm", "in_last_line"),
    (Stage.EVALUATION, "rigor-judge"): ("llm", "complex"),
}
SCHEMA_KEYS = {
    "schema",
    "stage",
    "gen_id",
    "parent_gen_id",
    "combo_id",
    "template_id",
    "replicate",
    "template_sha256",
    "llm_model_id",
    "model",
    "parameters",
    "parser",
    "parse",
    "mode",
    "status",
    "error",
    "started_at",
    "finished_at",
    "durations_ms",
    "attempts",
    "reused_reply",
    "prompt_sha256",
    "input_sha256",
    "reply",
    "files",
    "daydreamd_version",
}
REPLY_KEYS = {
    "finish_reason",
    "native_finish_reason",
    "truncated",
    "usage",
    "provider",
    "generation_id",
    "served_model",
}
USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens", "cost"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SCORE_TEXT = re.compile(r"^\d+\.\d+$")


# ---- the rig -------------------------------------------------------------------------------------


class SleepRecorder:
    """Stands in for ``anyio.sleep``: records each delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Crash(Exception):
    """Simulates the process dying at a checkpoint."""


def with_stage(settings: Settings, stage: Stage, **changes: Any) -> Settings:
    """``settings`` with some of one stage's settings replaced."""
    stages = tuple((s, replace(ss, **changes) if s is stage else ss) for s, ss in settings.stages)
    return replace(settings, stages=stages)


@dataclass
class Rig:
    """A data dir with the example experiment, its cohort, a store and a runner on ``provider``."""

    data_dir: Path
    provider: Provider
    fake: FakeLlm | None = None
    sleeps: SleepRecorder = field(default_factory=SleepRecorder)
    settings: Settings = field(init=False)
    store: GensStore = field(init=False)
    runner: Runner = field(init=False)
    build: Build = field(init=False)

    def __post_init__(self) -> None:
        self.settings = load_settings(None, {}, data_dir=self.data_dir)
        self.store = GensStore(self.data_dir)
        self.runner = self.make_runner()
        self.rebuild()

    def make_runner(
        self, *, checkpoint: Callable[[str, str], None] | None = None, scrubber: Scrubber | None = None
    ) -> Runner:
        return Runner(
            store=self.store,
            provider=self.provider,
            rng=random.Random(0),
            sleep=self.sleeps,
            checkpoint=checkpoint,
            scrubber=scrubber,
        )

    def rebuild(self) -> None:
        build = read_and_build(self.settings)
        assert build.cohort is not None and not has_errors(build.problems), build.problems
        self.build = build

    @property
    def generations(self) -> tuple[Generation, ...]:
        assert self.build.cohort is not None
        return self.build.cohort.generations

    def pick(self, stage: Stage, template_id: str) -> list[Generation]:
        found = [g for g in self.generations if g.stage is stage and g.template_id == template_id]
        assert found, (stage, template_id)
        return found

    def parent(self, generation: Generation) -> Generation | None:
        if PARENT_STAGE[generation.stage] is None:
            return None
        (parent,) = [g for g in self.generations if g.gen_id == generation.parent_gen_id]
        return parent

    def job(self, generation: Generation, settings: Settings | None = None) -> Job:
        job = Jobs(self.build.experiment, settings or self.settings).job(generation)
        assert job is not None
        return job

    async def run(
        self,
        generation: Generation,
        *,
        settings: Settings | None = None,
        runner: Runner | None = None,
        fresh: bool = False,
    ) -> Outcome:
        return await (runner or self.runner).run(self.job(generation, settings), fresh=fresh)

    async def run_ancestors(self, generation: Generation) -> None:
        """Run the parent chain (parents first) to done, with the default settings."""
        parent = self.parent(generation)
        if parent is None:
            return
        await self.run_ancestors(parent)
        outcome = await self.run(parent)
        assert outcome.ok, outcome

    def dir(self, generation: Generation) -> Path:
        return self.store.directory(generation.stage, generation.gen_id)

    def files(self, generation: Generation) -> set[str]:
        directory = self.dir(generation)
        return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

    def read(self, generation: Generation, name: str) -> str:
        return (self.dir(generation) / name).read_text(encoding="utf-8")

    def metadata(self, generation: Generation) -> dict[str, Any]:
        return json.loads(self.read(generation, "metadata.json"))

    def requests_for(self, generation: Generation) -> list[RecordedRequest]:
        """Requests whose prompt is exactly this generation's ``prompt.txt``."""
        assert self.fake is not None
        prompt = self.read(generation, "prompt.txt")
        return [r for r in self.fake.requests if r.prompt == prompt]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    return data


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest_asyncio.fixture
async def rig(data_dir: Path, session: aiohttp.ClientSession) -> AsyncIterator[Rig]:
    """The fake requires ``KEY`` and echoes the Authorization header in every error it sends."""
    async with FakeLlm(api_key=KEY, echo_auth_in_errors=True) as fake:
        client = OpenAiCompatibleClient(session, fake.base_url, KEY, 5.0)
        yield Rig(data_dir, client, fake)


def schema_keys_from_docstring() -> set[str]:
    """The top-level keys listed in ``daydreamd.core.metadata``'s schema docstring."""
    doc = metadata_module.__doc__ or ""
    keys: set[str] = set()
    for line in doc.split("::", 1)[1].splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            keys.update(part.split()[0] for part in head.split(","))
    return keys


def template_sha256(stage: Stage, template_id: str) -> str:
    path = EXAMPLE_RAW / "templates" / str(stage) / f"{template_id}.txt"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_usage(request: RecordedRequest, text: str) -> dict[str, Any]:
    """What the fake reports for ``text`` answered to ``request`` (its documented arithmetic)."""
    prompt_tokens = max(1, len(request.prompt) // 4)
    completion_tokens = math.ceil(len(text) / 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "reasoning_tokens": completion_tokens // 4,
        "cost": round(prompt_tokens * 1e-6 + completion_tokens * 4e-6, 9),
    }


def score_in(reply: str) -> str:
    (value,) = re.findall(r"^SCORE: (\d+)$", reply, flags=re.MULTILINE)
    return f"{int(value)}.0"


# ---- 1. the whole example cohort, over HTTP -------------------------------------------------------


OPTIONAL_KEYS = {"parse_history", "parsed_sha256", "raw_sha256"}
"""Documented keys that only some files have (``parse_history`` appears with the first re-parse,
``parsed_sha256`` with parsed.txt, ``raw_sha256`` with a reply)."""


def test_metadata_schema_keys_match_the_docstring() -> None:
    """The key list these tests check is exactly the schema documented in ``daydreamd.core.metadata``."""
    assert schema_keys_from_docstring() == SCHEMA_KEYS | OPTIONAL_KEYS


async def test_whole_cohort_end_to_end_over_http(rig: Rig) -> None:
    """All 63 generations run parents-first to done, with one paid request per LLM generation, the
    contract's files and a complete, correct metadata.json each."""
    generations = rig.generations
    assert Counter(g.stage for g in generations) == {Stage.DRAFT: 9, Stage.ESSAY: 18, Stage.EVALUATION: 36}
    position = {g.gen_id: i for i, g in enumerate(generations)}
    for g in generations:
        if g.parent_gen_id:
            assert position[g.parent_gen_id] < position[g.gen_id]

    outcomes = [await rig.run(g) for g in generations]

    assert [(o.gen_id, o.ok, o.kind, o.reused_reply) for o in outcomes] == [
        (g.gen_id, True, None, False) for g in generations
    ]
    assert rig.sleeps.delays == []
    llm = [g for g in generations if TEMPLATE_SPECS[(g.stage, g.template_id)][0] == "llm"]
    copies = [g for g in generations if TEMPLATE_SPECS[(g.stage, g.template_id)][0] == "copy"]
    assert (len(llm), len(copies)) == (54, 9)
    assert rig.fake is not None
    assert rig.fake.request_count == 54
    sent = Counter(r.prompt for r in rig.fake.requests)
    assert sent == Counter({rig.read(g, "prompt.txt"): 1 for g in llm})
    assert all(r.status == 200 for r in rig.fake.requests)

    for g, outcome in zip(generations, outcomes, strict=True):
        mode, parser = TEMPLATE_SPECS[(g.stage, g.template_id)]
        md = rig.metadata(g)
        parsed = rig.read(g, "parsed.txt")
        parent = rig.parent(g)
        parent_parsed = rig.read(parent, "parsed.txt") if parent is not None else None
        prefix = f"gens/{g.stage}/{g.gen_id}"

        assert set(md) >= SCHEMA_KEYS
        assert md["schema"] == 1
        assert (md["stage"], md["gen_id"], md["parent_gen_id"], md["combo_id"]) == (
            str(g.stage),
            g.gen_id,
            g.parent_gen_id,
            g.combo_id,
        )
        assert (md["template_id"], md["llm_model_id"], md["replicate"]) == (g.template_id, g.llm_model_id, 1)
        assert (md["status"], md["error"], md["reused_reply"]) == ("done", None, False)
        assert (md["mode"], md["parser"]) == (mode, parser)
        assert md["daydreamd_version"] == daydreamd.__version__
        assert TIMESTAMP.match(md["started_at"]) and TIMESTAMP.match(md["finished_at"])
        assert md["started_at"] <= md["finished_at"]
        assert set(md["durations_ms"]) == {"render", "llm", "parse", "total"}
        assert isinstance(md["durations_ms"]["total"], float) and md["durations_ms"]["total"] >= 0
        assert set(md["files"]) == {"prompt", "raw", "parsed"}
        assert md["files"]["parsed"] == f"{prefix}/parsed.txt"
        for path in md["files"].values():
            assert path is None or (rig.data_dir / path).is_file()

        if mode == "copy":
            assert rig.files(g) == {"parsed.txt", "metadata.json"}
            assert parsed == parent_parsed
            assert md["files"] == {"prompt": None, "raw": None, "parsed": f"{prefix}/parsed.txt"}
            assert (md["template_sha256"], md["model"], md["parameters"], md["reply"]) == (
                "",
                None,
                None,
                None,
            )
            assert (md["attempts"], md["prompt_sha256"], md["input_sha256"]) == (0, None, None)
            assert (outcome.attempts, outcome.usage) == (0, None)
            continue

        assert rig.files(g) == {"prompt.txt", "raw.txt", "parsed.txt", "metadata.json"}
        prompt, raw = rig.read(g, "prompt.txt"), rig.read(g, "raw.txt")
        (request,) = rig.requests_for(g)
        model = JUDGE_MODEL if g.stage is Stage.EVALUATION else GEN_MODEL
        parameters = {"max_tokens": 8192 if g.stage is Stage.EVALUATION else 16384, "temperature": 0.7}
        assert (request.model, request.max_tokens, request.temperature) == (model, *parameters.values())
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert raw == default_reply(request)
        if parent_parsed is not None:
            assert parent_parsed in prompt
        assert md["files"] == {
            "prompt": f"{prefix}/prompt.txt",
            "raw": f"{prefix}/raw.txt",
            "parsed": f"{prefix}/parsed.txt",
        }
        assert md["template_sha256"] == template_sha256(g.stage, g.template_id)
        assert (md["model"], md["parameters"], md["attempts"], outcome.attempts) == (model, parameters, 1, 1)
        assert md["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert md["input_sha256"] == input_sha256(prompt, model, parameters)
        assert all(isinstance(v, float) and v >= 0 for v in md["durations_ms"].values())
        reply = md["reply"]
        assert set(reply) == REPLY_KEYS and set(reply["usage"]) == USAGE_KEYS
        assert reply["usage"] == expected_usage(request, raw)
        assert reply["usage"]["cost"] > 0
        assert (reply["finish_reason"], reply["native_finish_reason"], reply["truncated"]) == (
            "stop",
            "stop",
            False,
        )
        assert (reply["provider"], reply["served_model"]) == ("FakeProvider", model)
        assert reply["generation_id"] == f"gen-fake-{request.number}"
        assert outcome.usage is not None and outcome.usage.to_dict() == reply["usage"]

        if g.stage is Stage.EVALUATION:
            assert SCORE_TEXT.match(parsed)
            assert parsed == score_in(raw)
        elif parser == "essay_idea_last":
            assert parsed.startswith("Final idea ") and parsed in raw and "essay-idea" not in parsed
        else:
            assert parsed == raw


# ---- 2. failure kinds: classification, retry counts, files ---------------------------------------


@dataclass(frozen=True)
class Failing:
    script: tuple[FaultSpec, ...]
    kind: FailureKind
    tries: int
    keeps_raw: bool = False
    finish_reason: str | None = None
    stage_changes: tuple[tuple[str, Any], ...] = ()


ERROR_BODY_502 = Fault(kind=FaultKind.ERROR_BODY, code=502)
TRANSIENT_FAULTS = {
    "http_500": FaultKind.SERVER_ERROR,
    "http_502": FaultKind.BAD_GATEWAY,
    "http_503": FaultKind.UNAVAILABLE,
    "error_body_502_in_200": ERROR_BODY_502,
    "empty_choices": FaultKind.EMPTY_CHOICES,
    "malformed_json": FaultKind.MALFORMED_JSON,
    "dropped_connection": FaultKind.DROP,
}
FAILING = {
    "rate_limit": Failing((FaultKind.RATE_LIMIT,) * 8, FailureKind.RATE_LIMIT, 8),
    **{name: Failing((fault,) * 3, FailureKind.TRANSIENT, 3) for name, fault in TRANSIENT_FAULTS.items()},
    "quota": Failing((FaultKind.QUOTA,), FailureKind.QUOTA, 1),
    "invalid_request": Failing((FaultKind.INVALID_REQUEST,), FailureKind.INVALID_REQUEST, 1),
    "auth": Failing((FaultKind.AUTH,), FailureKind.AUTH, 1),
    "content_filter": Failing(
        (FaultKind.CONTENT_FILTER,), FailureKind.CONTENT_FILTER, 1, True, "content_filter"
    ),
    "truncated": Failing(
        (FaultKind.TRUNCATED,),
        FailureKind.TRUNCATED,
        1,
        True,
        "length",
        (("on_truncation", "fail"),),
    ),
    "empty": Failing((FaultKind.EMPTY_CONTENT,), FailureKind.EMPTY, 1, True, "stop"),
    "too_short": Failing((), FailureKind.TOO_SHORT, 1, True, "stop", (("min_lines", 50),)),
}


@pytest.mark.parametrize("case", FAILING.values(), ids=FAILING.keys())
async def test_draft_failure_kind_retries_and_files(rig: Rig, case: Failing) -> None:
    """Each failure is classified, tried exactly as often as its kind allows, and leaves prompt.txt,
    raw.txt only when a reply was paid for, never parsed.txt, and failed metadata naming the kind."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "bridge-sketch")[0]
    rig.fake.script_sequence(case.script)
    settings = with_stage(rig.settings, Stage.DRAFT, **dict(case.stage_changes))

    outcome = await rig.run(draft, settings=settings)

    assert (outcome.ok, outcome.kind, outcome.attempts) == (False, case.kind, case.tries)
    assert rig.fake.request_count == case.tries
    assert len(rig.requests_for(draft)) == case.tries
    assert len(rig.sleeps.delays) == case.tries - 1
    if case.kind is FailureKind.RATE_LIMIT:
        assert all(0 <= d <= min(120.0, 2.0 * 2**i) for i, d in enumerate(rig.sleeps.delays))
    elif case.kind is FailureKind.TRANSIENT:
        assert all(0 <= d <= min(30.0, 1.0 * 2**i) for i, d in enumerate(rig.sleeps.delays))
    md = rig.metadata(draft)
    assert md["status"] == "failed"
    assert md["error"]["kind"] == str(case.kind) and md["error"]["message"] == outcome.message != ""
    assert md["attempts"] == case.tries
    prefix = f"gens/draft/{draft.gen_id}"
    if case.keeps_raw:
        assert rig.files(draft) == {"prompt.txt", "raw.txt", "metadata.json"}
        raw = rig.read(draft, "raw.txt")
        assert default_reply(rig.fake.requests[-1]).startswith(raw)
        assert (raw == "") is (case.kind is FailureKind.EMPTY)
        assert md["files"] == {"prompt": f"{prefix}/prompt.txt", "raw": f"{prefix}/raw.txt", "parsed": None}
        assert md["reply"]["finish_reason"] == case.finish_reason
        assert md["reply"]["truncated"] is (case.kind is FailureKind.TRUNCATED)
        assert outcome.usage is not None and outcome.usage.to_dict() == md["reply"]["usage"]
    else:
        assert rig.files(draft) == {"prompt.txt", "metadata.json"}
        assert md["files"] == {"prompt": f"{prefix}/prompt.txt", "raw": None, "parsed": None}
        assert md["reply"] is None


async def test_rate_limit_then_success_honours_retry_after(rig: Rig) -> None:
    """Two 429s with Retry-After: 7 then an answer: done after 3 requests, having waited 7 s twice."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "contrast-map")[0]
    rig.fake.script(FaultKind.RATE_LIMIT, times=2, retry_after="7")

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.attempts) == (True, 3)
    assert rig.sleeps.delays == [7.0, 7.0]
    assert [r.status for r in rig.requests_for(draft)] == [429, 429, 200]
    md = rig.metadata(draft)
    assert (md["status"], md["attempts"], md["error"]) == ("done", 3, None)
    assert md["reply"]["generation_id"] == "gen-fake-3"
    assert rig.read(draft, "parsed.txt") == rig.read(draft, "raw.txt") == default_reply(rig.fake.requests[-1])


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
async def test_one_transient_fault_then_success_is_done(rig: Rig, fault: FaultSpec) -> None:
    """A single transient fault is retried once after a jittered backoff and the generation is done."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "contrast-map")[0]
    rig.fake.script(fault)

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.attempts) == (True, 2)
    assert len(rig.requests_for(draft)) == rig.fake.request_count == 2
    assert len(rig.sleeps.delays) == 1 and 0 <= rig.sleeps.delays[0] <= 1.0
    md = rig.metadata(draft)
    assert (md["status"], md["attempts"]) == ("done", 2)
    assert rig.files(draft) == {"prompt.txt", "raw.txt", "parsed.txt", "metadata.json"}


async def test_truncated_essay_is_accepted_when_the_stage_accepts_truncation(rig: Rig) -> None:
    """With on_truncation accept, a reply cut at max_tokens is parsed and done, marked truncated."""
    assert rig.fake is not None
    essay = rig.pick(Stage.ESSAY, "polished-essay")[0]
    await rig.run_ancestors(essay)
    before = rig.fake.request_count
    rig.fake.script(FaultKind.TRUNCATED)
    settings = with_stage(rig.settings, Stage.ESSAY, on_truncation="accept")

    outcome = await rig.run(essay, settings=settings)

    assert (outcome.ok, outcome.attempts) == (True, 1)
    assert rig.fake.request_count == before + 1
    md = rig.metadata(essay)
    assert md["status"] == "done"
    assert (md["reply"]["truncated"], md["reply"]["finish_reason"]) == (True, "length")
    raw = rig.read(essay, "raw.txt")
    assert raw and default_reply(rig.fake.requests[-1]).startswith(raw)
    assert raw != default_reply(rig.fake.requests[-1])
    assert rig.read(essay, "parsed.txt") == raw


@pytest.mark.parametrize("template_id", ["novelty-judge", "rigor-judge"])
async def test_evaluation_without_a_score_is_a_parse_error(rig: Rig, template_id: str) -> None:
    """A judge reply with no score fails as parse_error after one request; raw.txt kept, no parsed."""
    assert rig.fake is not None
    evaluation = next(
        g for g in rig.pick(Stage.EVALUATION, template_id) if rig.parent(g).template_id == "idea-as-essay"
    )
    await rig.run_ancestors(evaluation)
    assert rig.fake.request_count == 1  # the draft; the copy essay costs nothing
    no_score = "The essay is thoughtful.\nIts idea is familiar but well argued.\nI would not rank it.\n"
    rig.fake.reply_builder = lambda _request: no_score

    outcome = await rig.run(evaluation)

    assert (outcome.ok, outcome.kind, outcome.attempts) == (False, FailureKind.PARSE_ERROR, 1)
    assert rig.fake.request_count == 2
    assert rig.files(evaluation) == {"prompt.txt", "raw.txt", "metadata.json"}
    assert rig.read(evaluation, "raw.txt") == no_score
    md = rig.metadata(evaluation)
    assert (md["status"], md["error"]["kind"], md["files"]["parsed"]) == ("failed", "parse_error", None)
    assert md["reply"]["finish_reason"] == "stop"


async def test_template_failing_at_render_time_makes_no_request(rig: Rig) -> None:
    """A template that validates but fails when rendered is a render_error: no request, no prompt,
    no raw, no parsed, and failed metadata naming the template."""
    assert rig.fake is not None
    raw_dir = rig.data_dir / "1_raw"
    (raw_dir / "templates" / "draft" / "fifth-concept.txt").write_text(
        "Write about {{ concepts[5].name }}.\n", encoding="utf-8"
    )
    with (raw_dir / "draft_templates.csv").open("a", encoding="utf-8") as csv:
        csv.write("fifth-concept,Fifth Concept,Uses a concept that is not there,,llm,True\n")
    rig.rebuild()
    drafts = rig.pick(Stage.DRAFT, "fifth-concept")

    outcomes = [await rig.run(g) for g in drafts]

    assert len(outcomes) == 3
    assert rig.fake.request_count == 0
    for g, outcome in zip(drafts, outcomes, strict=True):
        assert (outcome.ok, outcome.kind, outcome.attempts) == (False, FailureKind.RENDER_ERROR, 0)
        assert "fifth-concept" in outcome.message
        assert rig.files(g) == {"metadata.json"}
        md = rig.metadata(g)
        assert (md["status"], md["error"]["kind"], md["reply"]) == ("failed", "render_error", None)
        assert md["files"] == {"prompt": None, "raw": None, "parsed": None}


async def test_a_prompt_holding_the_key_is_neither_written_nor_sent(rig: Rig) -> None:
    """However a 1_raw file came to hold the key (a link the containment missed, a paste), the
    rendered prompt is checked: render_error, no request, no prompt.txt, no key in any file."""
    assert rig.fake is not None
    description = rig.data_dir / "1_raw" / "concepts" / "descriptions-paragraph" / "serendipity.txt"
    description.write_text(f"Serendipity, and by the way: {KEY[:20]}...\n", encoding="utf-8")
    rig.rebuild()
    rig.runner = rig.make_runner(scrubber=Scrubber(KEY))
    drafts = rig.pick(Stage.DRAFT, "bridge-sketch")  # two of the three combos hold serendipity

    outcomes = [await rig.run(g) for g in drafts]

    refused = [(g, o) for g, o in zip(drafts, outcomes, strict=True) if not o.ok]
    assert len(refused) == 2 and rig.fake.request_count == 1
    for g, outcome in refused:
        assert outcome.kind is FailureKind.RENDER_ERROR
        assert "contains the API key" in outcome.message
        assert rig.files(g) == {"metadata.json"}
    for path in (rig.data_dir / "gens").rglob("*"):
        if path.is_file():
            assert KEY[:12].encode() not in path.read_bytes(), path


# ---- 3. never pay twice ---------------------------------------------------------------------------


async def test_an_error_between_call_and_parse_saves_the_reply_and_costs_nothing_on_restart(rig: Rig) -> None:
    """Anything but a parse error raised after the reply came (a bug) first saves the reply with
    'replied' metadata; the next run re-parses the saved reply without a new request."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[0]

    def crash(step: str, gen_id: str) -> None:
        if step == "reply_received":
            raise Crash(gen_id)

    with pytest.raises(Crash):
        await rig.run(draft, runner=rig.make_runner(checkpoint=crash))

    assert rig.fake.request_count == 1
    assert rig.files(draft) == {"prompt.txt", "raw.txt", "metadata.json"}
    md = rig.metadata(draft)
    assert (md["status"], md["files"]["parsed"]) == ("replied", None)
    raw = rig.read(draft, "raw.txt")

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.reused_reply, outcome.attempts) == (True, True, 1)
    assert rig.fake.request_count == 1
    md = rig.metadata(draft)
    assert (md["status"], md["reused_reply"], md["attempts"]) == ("done", True, 1)
    assert md["reply"]["generation_id"] == "gen-fake-1"
    assert rig.read(draft, "raw.txt") == raw
    assert rig.read(draft, "parsed.txt").startswith("Final idea ")
    assert "raw.1.txt" not in rig.files(draft)


class FailsFirstResult(GensStore):
    """A gens store whose first write of a result fails with an error that is not a full or
    read-only disk (too many open files): not retried, so the run ends in an exception."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.failed = False

    def save_result(self, *args: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        super().save_result(*args, **kwargs)


async def test_a_new_reply_whose_write_fails_is_saved_alone_and_not_paid_again(rig: Rig) -> None:
    """The one write of a new reply with its result fails (not a disk fault): the reply is then saved
    alone ('replied'), the error goes on to the pool, and the next run re-parses it: one request."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[0]
    rig.store = FailsFirstResult(rig.data_dir)

    with pytest.raises(OSError):
        await rig.run(draft, runner=rig.make_runner())

    assert rig.metadata(draft)["status"] == "replied"
    outcome = await rig.run(draft)
    assert (outcome.ok, outcome.reused_reply) == (True, True)
    assert rig.fake.request_count == 1


async def test_a_crash_once_the_reply_is_saved_costs_nothing_on_restart(rig: Rig) -> None:
    """The reply is written once, with its result: a crash before the outcome reaches the run
    state leaves a done generation on disk, which the next run takes as it is (no request)."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[0]

    def crash(step: str, gen_id: str) -> None:
        if step == "reply_saved":
            raise Crash(gen_id)

    with pytest.raises(Crash):
        await rig.run(draft, runner=rig.make_runner(checkpoint=crash))

    assert rig.files(draft) == {"prompt.txt", "raw.txt", "parsed.txt", "metadata.json"}
    md = rig.metadata(draft)
    assert md["status"] == "done" and md["input_sha256"]
    assert md["files"]["raw"].endswith("/raw.txt") and md["files"]["prompt"].endswith("/prompt.txt")
    parsed = rig.read(draft, "parsed.txt")

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.reused_reply) == (True, True)
    assert rig.fake.request_count == 1
    assert rig.read(draft, "parsed.txt") == parsed


async def test_running_done_generations_again_makes_no_request(rig: Rig) -> None:
    """Re-running a done draft, llm essay and evaluation sends nothing and leaves parsed.txt as is."""
    assert rig.fake is not None
    evaluation = next(
        g
        for g in rig.pick(Stage.EVALUATION, "novelty-judge")
        if rig.parent(g).template_id == "polished-essay"
    )
    await rig.run_ancestors(evaluation)
    assert (await rig.run(evaluation)).ok
    chain = [evaluation, rig.parent(evaluation), rig.parent(rig.parent(evaluation))]
    assert rig.fake.request_count == 3
    before = {g.gen_id: (rig.read(g, "parsed.txt"), rig.read(g, "raw.txt")) for g in chain}

    for g in reversed(chain):
        outcome = await rig.run(g)
        assert (outcome.ok, outcome.reused_reply) == (True, True)

    assert rig.fake.request_count == 3
    assert {g.gen_id: (rig.read(g, "parsed.txt"), rig.read(g, "raw.txt")) for g in chain} == before


async def test_saved_reply_is_rechecked_not_rebought_when_a_check_is_relaxed(rig: Rig) -> None:
    """A too_short reply is kept; after min_lines is lowered the next run reuses it with no request."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "bridge-sketch")[1]
    strict = with_stage(rig.settings, Stage.DRAFT, min_lines=50)
    first = await rig.run(draft, settings=strict)
    assert (first.ok, first.kind) == (False, FailureKind.TOO_SHORT)

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.reused_reply) == (True, True)
    assert rig.fake.request_count == 1
    assert rig.read(draft, "parsed.txt") == rig.read(draft, "raw.txt")


# ---- 3b. durability: one fsync per record, derived files re-created -------------------------------


@dataclass(frozen=True)
class Synced:
    """One ``os.fsync``: a folder or a file, and the generation folder's files at that moment."""

    folder: bool
    files: frozenset[str]


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[Synced]:
    """Replace ``os.fsync`` with one that records each call, then syncs as before."""
    synced: list[Synced] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        files = frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()
        synced.append(Synced(folder, files))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def record_syncs(rig: Rig, directory: Path) -> list[frozenset[str]]:
    """Give the rig's store a group sync that records the generation folder's files at each sync."""
    seen: list[frozenset[str]] = []

    def syncfs(fd: int) -> None:  # (records only: these tests need no power-failure durability)
        seen.append(frozenset(p.name for p in directory.iterdir()))

    rig.store.group_sync = GroupSync(syncfs)
    return seen


async def test_a_new_reply_and_its_record_are_durable_in_one_shared_sync(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first save costs no fsync of its own: its four files are renamed into place, then one group
    sync of the file system makes them durable. metadata.json records the hashes of the reply,
    the prompt and the parsed text (what tells damaged files from intact ones after a crash)."""
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[0]
    fsynced = record_fsyncs(monkeypatch, rig.dir(draft))
    synced = record_syncs(rig, rig.dir(draft))

    outcome = await rig.run(draft)

    assert outcome.ok
    assert fsynced == [] and synced == [frozenset({"prompt.txt", "raw.txt", "metadata.json", "parsed.txt"})]
    md = rig.metadata(draft)
    parsed = rig.read(draft, "parsed.txt")
    assert md["status"] == "done"
    assert md["parsed_sha256"] == hashlib.sha256(parsed.encode()).hexdigest()
    assert md["prompt_sha256"] == hashlib.sha256(rig.read(draft, "prompt.txt").encode()).hexdigest()
    assert md["raw_sha256"] == hashlib.sha256(rig.read(draft, "raw.txt").encode()).hexdigest()


async def test_a_reply_replacing_a_saved_one_is_fsynced_before_its_rename(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that exists already (here: a fresh call after a done run) is not saved by the group
    sync: raw.txt is fsynced before its rename (prompt.txt already in place), then the 'done'
    metadata (parsed.txt in place), then the folder, so a crash never leaves a torn record where a
    durable one was."""
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[0]
    assert (await rig.run(draft)).ok
    fsynced = record_fsyncs(monkeypatch, rig.dir(draft))
    synced = record_syncs(rig, rig.dir(draft))

    assert (await rig.run(draft, fresh=True)).ok

    assert synced == [] and [s.folder for s in fsynced] == [False, False, True]
    raw_tmp, metadata_tmp, durable = (s.files for s in fsynced)
    assert {n for n in raw_tmp if not n.startswith(".")} == {"prompt.txt", "raw.1.txt", "metadata.json"}
    assert any(n.startswith(".raw.txt.") for n in raw_tmp)
    assert {n for n in metadata_tmp if not n.startswith(".")} == {
        "prompt.txt",
        "raw.1.txt",
        "raw.txt",
        "parsed.txt",
        "metadata.json",
    }
    assert any(n.startswith(".metadata.json.") for n in metadata_tmp)
    assert durable == {"prompt.txt", "raw.1.txt", "raw.txt", "metadata.json", "parsed.txt"}


@pytest.mark.parametrize("damage", ["removed", "empty", "partial"])
async def test_a_reply_a_crash_caught_before_its_sync_is_never_parsed(rig: Rig, damage: str) -> None:
    """After a power failure before the group sync, metadata.json may have reached the disk and
    raw.txt not (missing, empty, cut short), parsed.txt with it: the damaged reply is archived, not
    parsed, and the model is called again (nothing was acknowledged)."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[2]
    assert (await rig.run(draft)).ok
    raw = rig.dir(draft) / "raw.txt"
    whole = raw.read_text()
    (rig.dir(draft) / "parsed.txt").unlink()
    if damage == "removed":
        raw.unlink()
    else:
        raw.write_text("" if damage == "empty" else whole[: len(whole) // 2])

    outcome = await rig.run(draft)

    assert outcome.ok and not outcome.reused_reply and rig.fake.request_count == 2
    assert rig.read(draft, "raw.txt") == whole  # the fake answers the same prompt the same way
    assert (rig.dir(draft) / "raw.1.txt").exists() == (damage != "removed")
    assert rig.metadata(draft)["raw_sha256"] == hashlib.sha256(whole.encode()).hexdigest()


async def test_a_new_reply_that_fails_its_checks_is_saved_with_its_failure(rig: Rig) -> None:
    """A reply that is too short is kept (raw.txt, the prompt, 'failed' metadata recording its
    input), written once; relaxing the check later re-uses it without a request."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "bridge-sketch")[0]
    strict = with_stage(rig.settings, Stage.DRAFT, min_lines=50)

    outcome = await rig.run(draft, settings=strict)

    assert (outcome.ok, outcome.kind) == (False, FailureKind.TOO_SHORT)
    assert rig.files(draft) == {"prompt.txt", "raw.txt", "metadata.json"}
    md = rig.metadata(draft)
    assert (md["status"], md["error"]["kind"]) == ("failed", "too_short")
    assert md["files"]["raw"].endswith("/raw.txt") and md["input_sha256"]
    assert (await rig.run(draft)).reused_reply and rig.fake.request_count == 1


async def test_a_failure_record_is_durable_in_one_shared_sync(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that fails for good: prompt.txt and metadata.json, made durable by one group sync."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "bridge-sketch")[0]
    fsynced = record_fsyncs(monkeypatch, rig.dir(draft))
    synced = record_syncs(rig, rig.dir(draft))
    rig.fake.script(FaultKind.AUTH)

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.kind) == (False, FailureKind.AUTH)
    assert fsynced == [] and synced == [frozenset({"prompt.txt", "metadata.json"})]


@pytest.mark.parametrize("damage", ["removed", "empty", "partial"])
async def test_derived_files_a_crash_damaged_are_re_created_without_a_request(rig: Rig, damage: str) -> None:
    """A done generation whose prompt.txt and parsed.txt a power failure took (gone, empty, or cut
    short: they are not fsynced) gets both back, byte for byte, from its saved reply and inputs on
    the next run, with no request and its metadata still done."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "rolling-idea")[1]
    assert (await rig.run(draft)).ok
    before = {name: rig.read(draft, name) for name in ("prompt.txt", "raw.txt", "parsed.txt")}
    for name in ("prompt.txt", "parsed.txt"):
        path = rig.dir(draft) / name
        if damage == "removed":
            path.unlink()
        else:
            path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:7])

    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.reused_reply) == (True, True)
    assert rig.fake.request_count == 1
    assert {name: rig.read(draft, name) for name in before} == before
    md = rig.metadata(draft)
    assert (md["status"], md["reused_reply"]) == ("done", True)
    assert md["parsed_sha256"] == hashlib.sha256(before["parsed.txt"].encode()).hexdigest()
    assert rig.files(draft) == {"prompt.txt", "raw.txt", "parsed.txt", "metadata.json"}


async def test_a_child_re_creates_its_parents_damaged_parsed_text(rig: Rig) -> None:
    """An evaluation of a copy essay whose own parsed.txt and whose draft's parsed.txt a crash left
    empty and cut short: the runner re-creates both (the draft's by parsing its saved reply, the
    copy's from the draft's), checks them against the recorded hashes, and the judge sees the
    right text. Nothing is paid for but the evaluation."""
    assert rig.fake is not None
    evaluation = next(
        g
        for g in rig.pick(Stage.EVALUATION, "novelty-judge")
        if (essay := rig.parent(g)) is not None
        and essay.template_id == "idea-as-essay"
        and (draft := rig.parent(essay)) is not None
        and draft.template_id == "rolling-idea"
    )
    essay = rig.parent(evaluation)
    assert essay is not None
    draft = rig.parent(essay)
    assert draft is not None
    await rig.run_ancestors(evaluation)
    text = rig.read(essay, "parsed.txt")
    assert text == rig.read(draft, "parsed.txt") and text != rig.read(draft, "raw.txt")
    (rig.dir(draft) / "parsed.txt").write_bytes(text.encode()[:5])
    (rig.dir(essay) / "parsed.txt").write_bytes(b"")

    outcome = await rig.run(evaluation)

    assert outcome.ok, outcome
    assert rig.fake.request_count == 2  # the draft, then the evaluation
    assert rig.read(draft, "parsed.txt") == text
    assert rig.read(essay, "parsed.txt") == text
    assert text in rig.read(evaluation, "prompt.txt")


async def test_a_parent_text_that_cannot_be_re_created_fails_the_child_without_a_request(rig: Rig) -> None:
    """When a damaged parsed.txt cannot be made again exactly as recorded (here its saved reply no
    longer parses to the recorded text), the child fails as render_error and pays for nothing: a
    wrong text is never sent."""
    assert rig.fake is not None
    essay = rig.pick(Stage.ESSAY, "polished-essay")[0]
    draft = rig.parent(essay)
    assert draft is not None
    assert (await rig.run(draft)).ok
    (rig.dir(draft) / "raw.txt").write_text("Something else entirely.\n", encoding="utf-8")
    (rig.dir(draft) / "parsed.txt").write_bytes(b"")

    outcome = await rig.run(essay)

    assert (outcome.ok, outcome.kind) == (False, FailureKind.RENDER_ERROR)
    assert rig.fake.request_count == 1
    assert "parsed.txt" not in rig.files(essay)


# ---- 4. no stale parsed.txt, nothing paid for overwritten ------------------------------------------


async def test_failure_after_success_removes_parsed_and_new_reply_archives_old(rig: Rig) -> None:
    """When a done generation must be called again and fails, its parsed.txt is gone; a later,
    different reply archives the earlier raw.txt as raw.1.txt instead of overwriting it."""
    assert rig.fake is not None
    draft = rig.pick(Stage.DRAFT, "bridge-sketch")[2]
    assert (await rig.run(draft)).ok
    old_raw = rig.read(draft, "raw.txt")
    md = rig.metadata(draft)
    md["input_sha256"] = "0" * 64  # as if the input had changed: the saved reply no longer answers it
    (rig.dir(draft) / "metadata.json").write_text(json.dumps(md), encoding="utf-8")
    rig.fake.script(FaultKind.AUTH)

    failed = await rig.run(draft)

    assert (failed.ok, failed.kind) == (False, FailureKind.AUTH)
    assert rig.fake.request_count == 2
    assert "parsed.txt" not in rig.files(draft)
    kept = {p.name: p.read_text(encoding="utf-8") for p in rig.dir(draft).glob("raw*.txt")}
    assert old_raw in kept.values()  # as raw.txt, or already archived before the new call
    assert rig.metadata(draft)["status"] == "failed"

    rig.fake.reply_builder = lambda request: "A different answer.\n" + default_reply(request)
    outcome = await rig.run(draft)

    assert (outcome.ok, outcome.reused_reply) == (True, False)
    assert rig.fake.request_count == 3
    assert rig.files(draft) == {"prompt.txt", "raw.txt", "raw.1.txt", "parsed.txt", "metadata.json"}
    assert rig.read(draft, "raw.1.txt") == old_raw
    new_raw = rig.read(draft, "raw.txt")
    assert new_raw.startswith("A different answer.\n") and rig.read(draft, "parsed.txt") == new_raw


async def test_child_failing_for_a_missing_parent_keeps_no_parsed(rig: Rig) -> None:
    """A done copy essay whose draft is re-run and fails must not keep parsed.txt once it fails too."""
    assert rig.fake is not None
    essay = rig.pick(Stage.ESSAY, "idea-as-essay")[0]
    await rig.run_ancestors(essay)
    assert (await rig.run(essay)).ok
    draft = rig.parent(essay)
    assert draft is not None
    md = rig.metadata(draft)
    md["input_sha256"] = "0" * 64
    (rig.dir(draft) / "metadata.json").write_text(json.dumps(md), encoding="utf-8")
    rig.fake.script(FaultKind.AUTH)
    assert (await rig.run(draft)).kind is FailureKind.AUTH
    assert "parsed.txt" not in rig.files(draft)

    outcome = await rig.run(essay)

    assert (outcome.ok, outcome.kind) == (False, FailureKind.RENDER_ERROR)
    assert rig.metadata(essay)["status"] == "failed"
    assert "parsed.txt" not in rig.files(essay)


async def test_content_filtered_reply_is_not_accepted_by_a_later_run(rig: Rig) -> None:
    """A reply stopped by a content filter stays a failure on the next run; it never becomes parsed."""
    assert rig.fake is not None
    essay = rig.pick(Stage.ESSAY, "polished-essay")[0]
    await rig.run_ancestors(essay)
    rig.fake.script(FaultKind.CONTENT_FILTER)
    first = await rig.run(essay)
    assert (first.ok, first.kind) == (False, FailureKind.CONTENT_FILTER)

    again = await rig.run(essay)

    assert not again.ok
    assert "parsed.txt" not in rig.files(essay)


# ---- 5. the API key never leaks ----------------------------------------------------------------


async def test_api_key_is_sent_but_never_written_or_returned(rig: Rig) -> None:
    """With a server echoing the Authorization header in errors and in a reply, the key reaches the
    server on every request but appears in no file, no Outcome message and no repr."""
    assert rig.fake is not None
    drafts = rig.pick(Stage.DRAFT, "bridge-sketch") + rig.pick(Stage.DRAFT, "contrast-map")
    scripts: list[tuple[FaultSpec, int, FailureKind]] = [
        (FaultKind.AUTH, 1, FailureKind.AUTH),
        (FaultKind.INVALID_REQUEST, 1, FailureKind.INVALID_REQUEST),
        (Fault(kind=FaultKind.ERROR_BODY, code=401), 1, FailureKind.AUTH),
        (Fault(kind=FaultKind.ERROR_BODY, code=502), 3, FailureKind.TRANSIENT),
        (FaultKind.RATE_LIMIT, 8, FailureKind.RATE_LIMIT),
    ]
    returned: list[object] = []
    for draft, (fault, times, kind) in zip(drafts, scripts, strict=False):
        rig.fake.script(fault, times=times)
        outcome = await rig.run(draft)
        assert (outcome.ok, outcome.kind) == (False, kind)
        assert REDACTED in outcome.message  # the echo arrived and was scrubbed
        returned.append(outcome)
    echoing = drafts[len(scripts)]
    rig.fake.reply_builder = lambda r: default_reply(r) + f"Header seen: {r.headers.get('Authorization')}\n"
    outcome = await rig.run(echoing)
    assert outcome.ok
    assert f"Header seen: Bearer {REDACTED}" in rig.read(echoing, "raw.txt")
    returned += [outcome, rig.runner, rig.provider, rig.store]

    assert rig.fake.request_count == 1 + 1 + 1 + 3 + 8 + 1
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in rig.fake.requests)
    files = [p for p in rig.data_dir.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        data = path.read_bytes()
        for fragment in KEY_FRAGMENTS:
            assert fragment.encode() not in data, path
    for thing in returned:
        text = repr(thing) + str(thing) + (thing.message if isinstance(thing, Outcome) else "")
        for fragment in KEY_FRAGMENTS:
            assert fragment not in text


# ---- 6. providers --------------------------------------------------------------------------------


def test_offline_providers_need_no_key() -> None:
    """mock and echo are built with no key, no .env and no HTTP session."""
    mock = make_provider(LlmSettings(provider="mock"), env={}, config_dir=None, session=None)
    echo = make_provider(LlmSettings(provider="echo"), env={}, config_dir=None, session=None)
    assert isinstance(mock, MockProvider) and isinstance(echo, EchoProvider)


async def test_online_provider_without_a_key_names_the_variable(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """openrouter with no key anywhere is a ConfigError naming the env var, showing no secret."""
    (tmp_path / ".env").write_text(f"SOME_OTHER_KEY={KEY}\n", encoding="utf-8")
    (tmp_path / ".env").chmod(0o600)
    llm = LlmSettings(provider="openrouter", api_key_env="DD_TEST_OPENROUTER_KEY")
    with pytest.raises(ConfigError) as caught:
        make_provider(llm, env={"UNRELATED": KEY}, config_dir=tmp_path, session=session)
    message = str(caught.value)
    assert "DD_TEST_OPENROUTER_KEY" in message
    assert all(fragment not in message for fragment in KEY_FRAGMENTS)


async def test_key_is_read_from_dotenv_next_to_the_config(rig: Rig, tmp_path: Path) -> None:
    """A key in .env beside config.toml reaches the server: the key-checking fake answers the run."""
    assert rig.fake is not None
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    config = config_dir / "config.toml"
    config.write_text(
        f'[llm]\nprovider = "openai"\nbase_url = "{rig.fake.base_url}"\n'
        'api_key_env = "DD_TEST_DOTENV_KEY"\ntimeout_s = 5.0\n',
        encoding="utf-8",
    )
    (config_dir / ".env").write_text(f'# secrets\nexport DD_TEST_DOTENV_KEY="{KEY}"\n', encoding="utf-8")
    (config_dir / ".env").chmod(0o600)  # only its owner may read it, or it is refused
    settings = load_settings(config, {})
    async with aiohttp.ClientSession() as own_session:
        provider = make_provider(settings.llm, env={}, config_dir=config.parent, session=own_session)
        assert isinstance(provider, OpenAiCompatibleClient)
        assert all(fragment not in repr(provider) for fragment in KEY_FRAGMENTS)
        rig.provider = provider
        rig.runner = rig.make_runner()
        draft = rig.pick(Stage.DRAFT, "contrast-map")[0]
        outcome = await rig.run(draft)

    assert outcome.ok, outcome
    (request,) = rig.fake.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert "usage" not in (request.body or {})  # provider "openai": no OpenRouter-only parameters


# ---- 7. offline --------------------------------------------------------------------------------


async def test_mock_provider_runs_the_whole_cohort_offline(data_dir: Path) -> None:
    """MockProvider through the Runner takes all 63 generations to done; judges parse a score."""
    rig = Rig(data_dir, MockProvider())

    outcomes = [await rig.run(g) for g in rig.generations]

    assert [o.ok for o in outcomes] == [True] * 63
    assert Counter(o.stage for o in outcomes) == {Stage.DRAFT: 9, Stage.ESSAY: 18, Stage.EVALUATION: 36}
    for g in rig.generations:
        md = rig.metadata(g)
        assert md["status"] == "done"
        if md["mode"] == "llm":
            assert md["reply"]["provider"] == "mock"
        if g.stage is Stage.EVALUATION:
            parsed = rig.read(g, "parsed.txt")
            assert SCORE_TEXT.match(parsed)
            assert parsed == format_score(mock_score(rig.read(g, "prompt.txt")))
