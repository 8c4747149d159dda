"""The stage runner: one code path from a membership row to the files of a finished generation.

For every stage and both modes the steps are the same::

    inputs (concepts, or the parent's parsed.txt)
      -> copy:  parsed.txt = the parent's parsed text                       (no call, no raw.txt)
      -> llm:   render prompt.txt -> call (retries per failure kind) -> raw.txt
                -> check (empty, truncated, too short) -> parse -> parsed.txt

``parsed.txt`` is written last and only on success; it is removed before any new attempt, so
a failure never leaves a stale one. ``raw.txt`` is saved the moment a reply arrives, before it
is checked or parsed, and a saved reply for the same input (prompt, model, parameters) is
re-checked and re-parsed instead of paying for a new call: a crash between the call and the
parse costs nothing. File work runs in a worker thread, one batch per step. When the data
folder takes no writes (a full or read-only disk), a step is tried again with backoff until it
works, with the reply kept in memory; :attr:`Runner.disk` says so meanwhile (the pool then claims
nothing new), and nothing is paid twice.

Durability (power failure, kernel crash; a killed process loses nothing written; see
:mod:`daydreamd.storage.gens`). The reply is checked and parsed in memory the moment it arrives
(microseconds, no I/O), then everything is written in one step, nothing reported before it is
durable: ``prompt.txt``, ``raw.txt``, ``parsed.txt`` (its hash recorded as ``parsed_sha256``),
``metadata.json`` with status ``done`` or ``failed``, the input hash the reply answers and
``raw_sha256``; a first save then waits for a group sync it shares with the saves finishing
meanwhile, a save over existing files fsyncs each record before its rename and the folder after
(checkpoint ``reply_saved``). A crash before that loses only the reply in memory (as if it had
come later: a ``raw.txt`` it caught half-written no longer matches ``raw_sha256`` and is archived
unread); after it, the reply and its record are on disk whole, and a second run reuses them
without a call. Should checking or parsing raise anything but a parse error (a bug), the reply is
first saved with status ``replied`` (and re-parsed, not paid for, on the next run).

A failure without a reply writes ``metadata.json`` (and ``prompt.txt``).
``prompt.txt`` and ``parsed.txt`` are derived files: after a power failure they may be missing,
empty or cut short even in a generation the run state calls done. They are re-created, never
paid for again: a run of the generation checks ``parsed.txt`` against ``parsed_sha256`` (and
``prompt.txt`` against the prompt it renders) and otherwise parses the saved reply again; a
child checks its parent's ``parsed.txt`` the same way and re-creates it from the parent's saved
reply (or, for a copy, from its own parent) when it matches the recorded hash exactly, and fails
as ``render_error`` without a call when it cannot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from daydreamd import __version__
from daydreamd.core.canonical import sha256_hex
from daydreamd.core.config import StageSettings
from daydreamd.core.errors import ParseError, TemplateError
from daydreamd.core.experiment import Generator
from daydreamd.core.jobs import Job
from daydreamd.core.metadata import SCHEMA, Durations, can_reuse_reply, input_sha256, utc_now
from daydreamd.core.parsers import COPY_KEY, failure_provenance, parse_saved, template_parse_key
from daydreamd.core.prompts import normalize_newlines, render_prompt
from daydreamd.core.retry import FailureKind, RetryPolicy
from daydreamd.core.stages import PARENT_STAGE, Stage
from daydreamd.core.templates import PromptRenderer, Renderer
from daydreamd.daemon.health import Health, is_disk_fault
from daydreamd.llm.apikey import KeyScrubber, Scrubber
from daydreamd.llm.calls import AttemptHook, call_with_retries
from daydreamd.llm.checks import content_problem
from daydreamd.llm.types import CallFailure, LlmRequest, Provider, Reply, Usage
from daydreamd.storage.gens import PARSED, PARSED_SHA256, PROMPT, RAW, GensStore

_T = TypeVar("_T")


NO_JOB = "its template or model is no longer in the experiment"
"""Why a claimed generation fails without a call when the current cohort has no job for it."""

KEY_IN_PROMPT = (
    "the prompt contains the API key (or a long piece of it), so it was neither written nor sent; "
    "a file in 1_raw holds the key: remove it, then retry these generations"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a run ended. ``kind`` is None on success."""

    gen_id: str
    stage: Stage
    ok: bool
    kind: FailureKind | None = None
    message: str = ""
    attempts: int = 0
    reused_reply: bool = False
    usage: Usage | None = None
    score: float | None = None
    """An evaluation's score (its parsed.txt), for the run state."""
    parse: dict[str, Any] | None = None
    """How parsed.txt was made (``metadata.json``'s ``parse``): key, parser, version, provenance."""


def score_of(stage: Stage, parsed: str | None) -> float | None:
    """The score an evaluation's parsed text holds (None for other stages or unreadable text)."""
    if stage is not Stage.EVALUATION or parsed is None:
        return None
    try:
        return float(parsed.strip())
    except ValueError:
        return None


@dataclass(slots=True)
class _Run:
    """The record being built for one run (becomes metadata.json)."""

    job: Job
    fresh: bool = False
    started_at: str = field(default_factory=utc_now)
    t0: float = field(default_factory=time.monotonic)
    render_ms: float | None = None
    llm_ms: float | None = None
    parse_ms: float | None = None
    prompt: str | None = None
    input_sha256: str | None = None
    reply: dict[str, Any] | None = None
    new_raw: str | None = None
    """A reply received and not yet written (it goes to disk with the run's result)."""
    attempts: int = 0
    reused: bool = False
    files: dict[str, str | None] = field(
        default_factory=lambda: {"prompt": None, "raw": None, "parsed": None}
    )
    parse: dict[str, Any] | None = None


Checkpoint = Callable[[str, str], None]
"""Called as ``checkpoint(step, gen_id)``: ``reply_received`` as a new reply is about to be checked
and parsed (nothing written yet), ``reply_saved`` once it is durable with its result."""


class Runner:
    """Runs jobs against one provider and one gens store."""

    def __init__(
        self,
        *,
        store: GensStore,
        provider: Provider,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = anyio.sleep,
        checkpoint: Checkpoint | None = None,
        renderer: PromptRenderer | None = None,
        scrubber: KeyScrubber | None = None,
    ) -> None:
        """``renderer``: the service passes its rendering processes (``daydreamd.sandbox``), which
        add time and memory limits; the default renders in this process (tests, benchmarks).
        ``scrubber``: the API key's; a prompt holding the key is never written or sent."""
        self.store = store
        self.provider = provider
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.checkpoint = checkpoint
        self.renderer: PromptRenderer = renderer or Renderer()
        self.scrubber = scrubber or Scrubber(None)
        # Separate thread budgets: rendering a prompt must never queue behind replies being
        # fsynced to a busy disk, or the provider's concurrency would sit idle.
        self._prepare_threads = anyio.CapacityLimiter(4)
        self._save_threads = anyio.CapacityLimiter(8)
        self.disk = Health("data_dir_unwritable")
        """Whether the data folder takes writes (see :mod:`daydreamd.daemon.health`)."""

    async def run(
        self,
        job: Job,
        *,
        on_attempt: AttemptHook | None = None,
        before_call: Callable[[LlmRequest], Awaitable[None]] | None = None,
        on_call_over: Callable[[], None] | None = None,
        provider: Provider | None = None,
        fresh: bool = False,
        policy: RetryPolicy | None = None,
    ) -> Outcome:
        """Take ``job`` as far as it goes; never raises for a failed call, render or parse.

        Args:
            job: the generation to run.
            on_attempt: sees every LLM attempt (the pool records them and adapts its limits).
            before_call: awaited with the request once the prompt is ready and a call is needed,
                just before it (the pool waits there for a slot; what it raises ends the run,
                nothing more written).
            on_call_over: called in the event loop as soon as the call is over (a reply in
                memory, or a failure for good), before anything is written: the pool frees the
                call's slot then, so a slot is a request at the provider, not our own file work.
            provider: answers this run instead of the runner's provider (the pool passes one
                that waits for the model's rate limits before each attempt).
            fresh: call the model even if a reply for this input is saved (the old one is
                archived); for retrying a reply that was empty or cut off.
            policy: the retry policy of this run instead of the runner's (the pool passes the
                one in force, which a reload may have changed).
        """
        run = _Run(job, fresh=fresh)
        early = await self._durably(self._prepare, run, limiter=self._prepare_threads)
        if early is not None:
            return early
        if run.reply is None:
            request = self._request(run)
            if before_call is not None:
                await before_call(request)
            t = time.monotonic()
            try:
                reply, run.attempts = await call_with_retries(
                    provider or self.provider,
                    request,
                    policy or self.policy,
                    rng=self.rng,
                    sleep=self.sleep,
                    on_attempt=on_attempt,
                )
            except CallFailure as failure:
                run.llm_ms = _ms(t)
                run.attempts = failure.attempts
                _call(on_call_over)
                return await self._durably(self._fail_call, run, failure, limiter=self._save_threads)
            run.llm_ms = _ms(t)
            _call(on_call_over)
            return await self._durably(self._finish_new, run, reply, limiter=self._save_threads)
        return await self._durably(self._finish, run, None, limiter=self._save_threads)

    async def prepare(self, job: Job, *, fresh: bool = False) -> Outcome | LlmRequest:
        """Everything before the call, for a batch: the request to send, or the Outcome of a run that
        needs no call (a copy, a render error, a reply saved already for this input, re-parsed)."""
        run = _Run(job, fresh=fresh)
        early = await self._durably(self._prepare, run, limiter=self._prepare_threads)
        if early is not None:
            return early
        if run.reply is not None:
            return await self._durably(self._finish, run, None, limiter=self._save_threads)
        return self._request(run)

    async def finish_call(
        self, job: Job, request: LlmRequest, result: Reply | CallFailure, *, started_at: str | None = None
    ) -> Outcome:
        """Save and parse the answer to ``request`` that came outside this runner (a batch's result
        line), or record its failure, exactly as an online call's: the same files, checks, parse and
        durability. The input hash is the request's (what was sent), whatever the job says now."""
        run = _Run(job)
        run.prompt = request.prompt
        parameters = {"max_tokens": request.max_tokens, "temperature": request.temperature}
        run.input_sha256 = input_sha256(request.prompt, request.model, parameters)
        run.attempts = 1
        if started_at is not None:
            run.started_at = started_at
        if isinstance(result, CallFailure):
            return await self._durably(self._fail_call, run, result, limiter=self._save_threads)
        return await self._durably(self._finish_new, run, result, limiter=self._save_threads)

    def _request(self, run: _Run) -> LlmRequest:
        job = run.job
        assert run.prompt is not None and job.model is not None
        return LlmRequest(
            model=job.model.model,
            prompt=run.prompt,
            max_tokens=job.settings.max_tokens,
            temperature=job.settings.temperature,
            stage=str(job.stage),
        )

    async def _durably(self, step: Callable[..., _T], *args: Any, limiter: anyio.CapacityLimiter) -> _T:
        """Run a file step in a worker thread; while the disk refuses writes, keep what it holds in
        memory and try again with backoff (the step is idempotent: files are written whole)."""
        return await self.disk.retrying(
            lambda: anyio.to_thread.run_sync(step, *args, limiter=limiter), is_disk_fault
        )

    # -- steps (run in a worker thread) ----------------------------------------------------------

    def _prepare(self, run: _Run) -> Outcome | None:
        """Inputs, copy mode, rendering, and the never-pay-twice check. An Outcome ends the run."""
        job, store = run.job, self.store
        parent_text = None
        parent_stage = PARENT_STAGE[job.stage]
        if parent_stage is not None:
            parent_text = self._parent_text(parent_stage, job.generation.parent_gen_id)
            if parent_text is None:
                store.remove_parsed(job.stage, job.gen_id)
                message = (
                    f"parent {parent_stage} {job.generation.parent_gen_id} has no parsed.txt (not done "
                    "yet, or damaged by a crash and not re-creatable exactly from its saved reply)"
                )
                return self._fail(run, FailureKind.RENDER_ERROR, message)
            parent_text = normalize_newlines(parent_text)
        if job.template.generator is Generator.COPY:
            assert parent_text is not None
            run.parse = {"key": COPY_KEY}
            return self._succeed(run, parent_text)
        t = time.monotonic()
        try:
            run.prompt = render_prompt(self.renderer, job, parent_text)
        except TemplateError as exc:
            store.remove_parsed(job.stage, job.gen_id)
            return self._fail(run, FailureKind.RENDER_ERROR, str(exc))
        run.render_ms = _ms(t)
        if self.scrubber.text(run.prompt) is not run.prompt:
            # Only a file of 1_raw can have put it there: whatever the route, it goes no further.
            store.remove_parsed(job.stage, job.gen_id)
            run.prompt = None
            return self._fail(run, FailureKind.RENDER_ERROR, KEY_IN_PROMPT)
        assert job.model is not None
        run.input_sha256 = input_sha256(run.prompt, job.model.model, job.settings.call_parameters())
        previous = store.read_metadata(job.stage, job.gen_id)
        if previous is None and not store.directory(job.stage, job.gen_id).exists():
            return None  # a first run: nothing saved, nothing to remove
        raw_exists = store.exists(job.stage, job.gen_id, RAW)
        if previous is not None and not store.raw_intact(job.stage, job.gen_id, previous):
            # A power failure caught the save before its sync: nothing was acknowledged, and the
            # damaged reply must not be parsed. Taken for a first run (the damaged file archived).
            previous = None
        if (
            not run.fresh
            and previous is not None
            and previous.get("status") == "done"
            and previous.get("input_sha256") == run.input_sha256
            and _parse_key(previous) == template_parse_key(job.template)
        ):
            saved = store.read_parsed_checked(job.stage, job.gen_id)
            if saved.text is not None:
                # Done already; a prompt.txt a crash took is written again (it is derived).
                store.restore_derived(job.stage, job.gen_id, PROMPT, run.prompt)
                return Outcome(
                    gen_id=job.gen_id,
                    stage=job.stage,
                    ok=True,
                    reused_reply=True,
                    attempts=int(previous.get("attempts") or 0),
                    score=score_of(job.stage, saved.text),
                    parse=previous.get("parse"),
                )
            # parsed.txt is missing or damaged: parse the saved reply again below (no call).
        store.remove_parsed(job.stage, job.gen_id)
        if not run.fresh and can_reuse_reply(previous, run.input_sha256, raw_exists):
            assert previous is not None
            run.reply = previous["reply"]
            run.attempts = int(previous.get("attempts") or 0)
            run.reused = True
            run.files["prompt"] = store.relative_file(job.stage, job.gen_id, PROMPT)
            run.files["raw"] = store.relative_file(job.stage, job.gen_id, RAW)
            store.restore_derived(job.stage, job.gen_id, PROMPT, run.prompt)
        elif raw_exists:
            store.archive_raw(job.stage, job.gen_id)  # a stale reply must never answer this prompt
        return None

    def _parent_text(self, stage: Stage, gen_id: str) -> str | None:
        """A parent's parsed text, re-created when a crash damaged it; None when it has none."""
        found = self.store.read_parsed_checked(stage, gen_id)
        if not found.damaged:
            return found.text
        assert found.metadata is not None
        return self._recreate_parsed(stage, gen_id, found.metadata)

    def _recreate_parsed(self, stage: Stage, gen_id: str, metadata: dict[str, Any]) -> str | None:
        """Make a finished generation's ``parsed.txt`` again from its saved reply (or, for a copy,
        from its parent), exactly as recorded (``parsed_sha256``); None when that cannot be done."""
        if _parse_key(metadata) == COPY_KEY:
            upstream = PARENT_STAGE[stage]
            parent_id = metadata.get("parent_gen_id")
            source = (
                self._parent_text(upstream, parent_id) if upstream and isinstance(parent_id, str) else None
            )
            text = None if source is None else normalize_newlines(source)
        else:
            raw = self.store.try_read_text(stage, gen_id, RAW)
            parser = metadata.get("parser")
            if raw is None or not isinstance(parser, str):
                return None
            try:
                text = parse_saved(str(stage), parser, normalize_newlines(raw)).text
            except ParseError:
                return None
        if text is None or sha256_hex(text) != metadata.get(PARSED_SHA256):
            return None
        self.store.write_derived(stage, gen_id, PARSED, text)
        return text

    def _fail_call(self, run: _Run, failure: CallFailure) -> Outcome:
        """A call that failed for good; a reply that came with the failure is still saved."""
        if failure.reply is not None:
            self._receive(run, failure.reply)
            return self._fail(run, failure.kind, failure.message)
        return self._fail(run, failure.kind, failure.message, with_prompt=True)

    def _finish_new(self, run: _Run, reply: Reply) -> Outcome:
        """Check and parse a new reply in memory, then save it with its result in one durable
        step (one trip to a worker thread). Whatever goes wrong before that step, the reply is
        saved first (status ``replied``): it was paid for."""
        job = run.job
        self._receive(run, reply)
        try:
            if self.checkpoint is not None:
                self.checkpoint("reply_received", job.gen_id)
            outcome = self._finish(run, reply.text)
        except BaseException:
            if run.new_raw is not None:
                self._save_reply(run, reply)
            raise
        if self.checkpoint is not None:
            self.checkpoint("reply_saved", job.gen_id)
        return outcome

    def _finish(self, run: _Run, text: str | None) -> Outcome:
        """Check and parse the saved reply (``text``, or ``raw.txt`` when reused), save the result."""
        job = run.job
        if text is None:
            text = self.store.read_text(job.stage, job.gen_id, RAW)
            assert text is not None
        assert run.reply is not None
        t = time.monotonic()
        problem = check_reply(job.settings, text, run.reply)
        if problem is not None:
            run.parse_ms = _ms(t)
            return self._fail(run, *problem)
        stage, name, spec = str(job.stage), job.template.parser, job.template.verdict
        try:
            parsed = parse_saved(stage, name, normalize_newlines(text), spec)
        except ParseError as exc:
            run.parse_ms = _ms(t)
            run.parse = failure_provenance(stage, name, spec, exc)
            return self._fail(run, FailureKind.PARSE_ERROR, str(exc))
        run.parse_ms = _ms(t)
        run.parse = parsed.provenance
        return self._succeed(run, parsed.text)

    def _receive(self, run: _Run, reply: Reply) -> None:
        """Take a new reply into the run record; it is written with the run's result."""
        job, store = run.job, self.store
        run.reply = reply.to_dict()
        run.new_raw = reply.text
        run.files["prompt"] = store.relative_file(job.stage, job.gen_id, PROMPT)
        run.files["raw"] = store.relative_file(job.stage, job.gen_id, RAW)

    def _save_reply(self, run: _Run, reply: Reply) -> None:
        """The reply alone, durably, with metadata of status ``replied`` recording its input (so
        the next run re-parses it instead of paying again): for a run that cannot finish."""
        job, store = run.job, self.store
        assert run.prompt is not None
        metadata = self._metadata(run, "replied", None)
        store.save_reply(job.stage, job.gen_id, prompt=run.prompt, metadata=metadata, raw=reply.text)
        run.new_raw = None

    def _succeed(self, run: _Run, parsed: str) -> Outcome:
        job, store = run.job, self.store
        run.files["parsed"] = store.relative_file(job.stage, job.gen_id, PARSED)
        raw = run.new_raw
        store.save_result(
            job.stage,
            job.gen_id,
            self._metadata(run, "done", None),
            parsed=parsed,
            prompt=run.prompt if raw is not None else None,
            raw=raw,
        )
        run.new_raw = None  # on disk now; until here a failed write leaves it to _finish_new to save
        return Outcome(
            gen_id=job.gen_id,
            stage=job.stage,
            ok=True,
            attempts=run.attempts,
            reused_reply=run.reused,
            usage=_usage(run.reply),
            score=score_of(job.stage, parsed),
            parse=run.parse,
        )

    def _fail(self, run: _Run, kind: FailureKind, message: str, *, with_prompt: bool = False) -> Outcome:
        """Record a failure; ``with_prompt`` also saves the prompt that was sent (no reply came)."""
        job, store = run.job, self.store
        raw = run.new_raw
        prompt = run.prompt if with_prompt or raw is not None else None
        if prompt is not None:
            run.files["prompt"] = store.relative_file(job.stage, job.gen_id, PROMPT)
        error = {"kind": str(kind), "message": message}
        # Gone already, unless a child re-created it meanwhile from the reply this run replaces.
        store.remove_parsed(job.stage, job.gen_id)
        store.save_result(job.stage, job.gen_id, self._metadata(run, "failed", error), prompt=prompt, raw=raw)
        run.new_raw = None
        return Outcome(
            gen_id=job.gen_id,
            stage=job.stage,
            ok=False,
            kind=kind,
            message=message,
            attempts=run.attempts,
            reused_reply=run.reused,
            usage=_usage(run.reply),
            parse=run.parse,
        )

    def _metadata(self, run: _Run, status: str, error: dict[str, str] | None) -> dict[str, Any]:
        job, g = run.job, run.job.generation
        llm = job.template.generator is Generator.LLM
        return {
            "schema": SCHEMA,
            "stage": str(g.stage),
            "gen_id": g.gen_id,
            "parent_gen_id": g.parent_gen_id,
            "combo_id": g.combo_id,
            "template_id": g.template_id,
            "template_sha256": job.template.text_sha256,
            "llm_model_id": g.llm_model_id,
            "model": job.model.model if job.model is not None else None,
            "parameters": job.settings.call_parameters() if llm else None,
            "parser": job.template.parser,
            "parse": run.parse,
            "mode": str(job.template.generator),
            "replicate": g.replicate,
            "status": status,
            "error": error,
            "started_at": run.started_at,
            "finished_at": utc_now(),
            "durations_ms": Durations(
                render=run.render_ms, llm=run.llm_ms, parse=run.parse_ms, total=_ms(run.t0)
            ).to_dict(),
            "attempts": run.attempts,
            "reused_reply": run.reused,
            "prompt_sha256": sha256_hex(run.prompt) if run.prompt is not None else None,
            "input_sha256": run.input_sha256,
            "reply": run.reply,
            "files": dict(run.files),
            "daydreamd_version": __version__,
        }


def check_reply(settings: StageSettings, text: str, reply: dict[str, Any]) -> tuple[FailureKind, str] | None:
    """Stage rules a reply must meet before it is parsed: not filtered, not empty, not cut off, long enough.

    ``reply`` is the reply's metadata (``Reply.to_dict``): a saved reply is checked again when
    it is reused, so the verdict must come from what was saved, not from the live call. Filtered
    and empty are the LLM layer's rules (``content_problem``): a new reply met them inside its
    attempt, except a blank one cut at max_tokens, which fails here as empty.
    """
    problem = content_problem(text, reply.get("finish_reason"))
    if problem is not None:
        return problem
    lines = [line for line in text.splitlines() if line.strip()]
    if reply.get("truncated") and settings.on_truncation == "fail":
        return FailureKind.TRUNCATED, f"the reply was cut off at max_tokens={settings.max_tokens}"
    if len(lines) < settings.min_lines:
        return (
            FailureKind.TOO_SHORT,
            f"the reply has {len(lines)} non-empty lines; min_lines is {settings.min_lines}",
        )
    return None


def _parse_key(metadata: dict[str, Any]) -> str | None:
    """The parse key a saved run recorded (None before keys were recorded: re-parse it)."""
    parse = metadata.get("parse")
    key = parse.get("key") if isinstance(parse, dict) else None
    return key if isinstance(key, str) else None


def _call(hook: Callable[[], None] | None) -> None:
    if hook is not None:
        hook()


def _ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000


def _usage(reply: dict[str, Any] | None) -> Usage | None:
    if not reply or not isinstance(reply.get("usage"), dict):
        return None
    return Usage(**{k: v for k, v in reply["usage"].items() if k in Usage.__slots__})
