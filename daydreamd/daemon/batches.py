"""Batch mode: approved work sent through a provider's Batch API instead of one call at a time.

An approval (``--batch``), a stage or a model (``batch = true`` in the config) queues work in mode
``batch``; the pool never reads it, this does. One generation's way through a batch::

    queued (mode batch)
      -> gathered: a model's ready batch work is claimed (running) and recorded as a batch, with
         its members, in one transaction, once it fills a batch or stops growing for gather_s
      -> prepared: each member's prompt rendered by the runner (a copy, a render error or a reply
         saved already ends it at once, without a call, as online)
      -> input.jsonl written durably, uploaded, the batch created with its tag as metadata
      -> polled every poll_s until the provider ends it
      -> output.jsonl / errors.jsonl downloaded and written durably
      -> each member's line saved and parsed by the runner exactly as an online reply
         (raw.txt, parsed.txt, metadata.json), committed under its claim's token
         -> done | failed (the line's failure kind; batch_expired / batch_cancelled / batch_failed
            for a member without a line)

Exactly once: the batch and its members are in SQLite before anything is uploaded; a batch whose
creation may have happened (a crash, a timeout) is looked up by its tag before it is created
again; members stay ``running`` under the batch across restarts (``Store.recover`` leaves them),
so a restart resumes each batch where it stood and never submits a member twice.

A batch call's cost is what the provider reports, else the model's price times the endpoint's
``batch_discount``. Budgets cannot bound batch work (the provider bills a whole batch at once), so
an approval with a budget cannot run in batch mode; a revoke leaves submitted batches alone (their
work has started) and sends back what no batch holds yet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
import structlog

from daydreamd.core.config import Settings
from daydreamd.core.pricing import Price
from daydreamd.core.retry import FailureKind, max_tries
from daydreamd.core.stages import State
from daydreamd.core.status import BatchStatus, Trouble
from daydreamd.core.timestamps import age_s, utc_now
from daydreamd.daemon.commits import completion_of
from daydreamd.daemon.counters import Counters
from daydreamd.daemon.events import EventBus
from daydreamd.daemon.pool import JobSource
from daydreamd.daemon.runner import NO_JOB, Outcome, Runner
from daydreamd.daemon.settings import LiveSettings
from daydreamd.llm.batch_api import BatchApiError, BatchClient, RemoteBatch, ResultLine
from daydreamd.llm.openai_compat import OpenAiCompatibleClient
from daydreamd.llm.types import CallFailure, LlmRequest, Provider, Reply, Usage
from daydreamd.storage.batch_files import ERRORS, INPUT, OUTPUT, BatchFiles
from daydreamd.storage.batches import BatchRecord, BatchState, BatchStore, Member
from daydreamd.storage.ready import Ready, ReadyWork
from daydreamd.storage.store import AttemptRow, Completion, Store

log = structlog.get_logger("daydreamd.batches")

BATCH_MODE = "batch"
_COMMIT_CHUNK = 500
_AT_ONCE = 16
_MIN_TICK_S = 0.05
_MAX_TICK_S = 5.0
_MAX_BACKOFF_S = 300.0

_MISSING_KIND = {"expired": FailureKind.BATCH_EXPIRED, "cancelled": FailureKind.BATCH_CANCELLED}


@dataclass(slots=True)
class _Growth:
    """How much ready batch work a model had when last looked at, and since when."""

    count: int
    since: float


def batch_clients(settings: Settings, providers: Mapping[str, Provider]) -> dict[str, BatchClient]:
    """The Batch API of each endpoint with ``batch = true`` (its online client's session and key)."""
    found = {}
    for name, endpoint in settings.all_endpoints().items():
        provider = providers.get(name)
        if endpoint.batch and isinstance(provider, OpenAiCompatibleClient):
            found[name] = BatchClient(provider)
    return found


class BatchRefused(Exception):
    """The provider refused an upload or a creation outright: nothing was created, nothing is billed."""


class Batcher:
    """Gathers, submits, follows and collects batches; run :meth:`run` for as long as the service runs."""

    def __init__(
        self,
        *,
        settings: LiveSettings,
        store: Store,
        runner: Runner,
        current: JobSource,
        providers: Mapping[str, Provider],
        files: BatchFiles,
        price_of: Callable[[str], Price | None],
        may_submit: Callable[[str], bool],
        on_finished: Callable[[], None],
        counters: Counters | None = None,
        bus: EventBus | None = None,
    ) -> None:
        """``providers``: one per endpoint; those with ``batch = true`` (in the settings in force) take
        batches. ``may_submit(model_id)``: False while the model (or everything) is paused.
        ``on_finished``: called after members were committed (the pool looks for their children)."""
        self.settings = settings
        self.store = store
        self.batches = BatchStore(store)
        self.ready = ReadyWork(store)
        self.runner = runner
        self.current = current
        self.providers = dict(providers)
        self.files = files
        self.price_of = price_of
        self.may_submit = may_submit
        self.on_finished = on_finished
        self.counters = counters or Counters()
        """The pool's: batch calls count in the spend, tokens and outcomes that status shows."""
        self.bus = bus or EventBus()
        self.problems: dict[int, str] = {}
        """The last error of each batch that is being tried again (for status)."""
        self._clients: tuple[Settings, dict[str, BatchClient]] | None = None
        self._growth: dict[str, _Growth] = {}
        self._polled: dict[int, float] = {}
        self._retry_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._creating_here: set[int] = set()
        """Batches this process moved to ``submitting``: no need to look them up before creating them."""
        self._unserved: dict[str, str] = {}
        """Models with ready batch work and no endpoint that takes batches now, since when."""
        self._wake = anyio.Event()
        self.snapshot: tuple[BatchStatus, ...] = ()
        """What status shows of the batches, as of the last step (status never waits on SQLite)."""

    def wake(self) -> None:
        """Look at the batches now (an approval arrived, a parent finished)."""
        self._wake.set()

    async def run(self) -> None:
        """Advance every batch and gather new ones, until cancelled."""
        while True:
            try:
                await self.step()
            except Exception:  # the run state failed us; the next round tries again
                log.exception("batch_step_failed")
            with anyio.move_on_after(self._tick()):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def step(self) -> None:
        """One round: every unfinished batch as far as it goes now, then new batches. Nothing before
        the first cohort is built: a batch's members need their jobs (templates, models)."""
        if self.current.jobs is None:
            return
        for record in await self.batches.unfinished():
            if time.monotonic() >= self._retry_at.get(record.id, 0.0):
                await self._advance(record)
        await self._gather()
        self.snapshot = tuple(self._status(record) for record in await self.batches.recent())

    def clients(self) -> dict[str, BatchClient]:
        """The Batch API of each endpoint that takes batches in the settings in force."""
        settings = self.settings.current
        if self._clients is None or self._clients[0] is not settings:
            self._clients = (settings, batch_clients(settings, self.providers))
        return self._clients[1]

    def troubles(self) -> tuple[Trouble, ...]:
        """Batch work that waits for an endpoint that takes batches (a config change took it away)."""
        if not self._unserved:
            return ()
        message = (
            f"no endpoint that takes batches serves {', '.join(sorted(self._unserved))}: its batch work "
            "waits; set batch = true on one of its endpoints (a restart adds a new endpoint), or revoke "
            "it and approve it --online"
        )
        return (Trouble(what="no_batch_endpoint", since=min(self._unserved.values()), message=message),)

    def _status(self, record: BatchRecord) -> BatchStatus:
        return BatchStatus(
            id=record.id,
            endpoint=record.endpoint,
            model=record.llm_model_id,
            stage=record.stage,
            state=str(record.state),
            provider_state=record.remote_state,
            requests=record.requests,
            completed=record.completed,
            failed=record.failed,
            age_s=round(age_s(record.created_at), 1),
            problem=self.problems.get(record.id)
            or (record.message if record.state is BatchState.CLOSED else None),
        )

    def _tick(self) -> float:
        batch = self.settings.current.batch
        return min(_MAX_TICK_S, max(_MIN_TICK_S, min(batch.gather_s, batch.poll_s) / 4))

    # -- one batch ---------------------------------------------------------------------------------

    async def _advance(self, record: BatchRecord) -> None:
        """Take one batch as far as it goes. Whatever fails is tried again later with backoff (and
        shown in status), but a provider refusing an upload or a creation outright: then nothing
        exists there, and the members fail as ``batch_failed``. Once a batch may exist at the
        provider, nothing here ever gives it up."""
        client = self.clients().get(record.endpoint)
        if client is None:
            self._problem(
                record, f"the endpoint {record.endpoint!r} takes no batches now (batch = true removed?)"
            )
            return
        if record.state in (BatchState.PREPARING, BatchState.SUBMITTING) and not self.may_submit(
            record.llm_model_id
        ):
            return  # paused: nothing new goes out
        try:
            if record.state is BatchState.PREPARING:
                record = await self._prepare(record, client)
            if record.state is BatchState.SUBMITTING:
                record = await self._submit(record, client)
            if record.state is BatchState.SUBMITTED:
                record = await self._poll(record, client)
            if record.state is BatchState.COLLECTING:
                await self._collect(record, client)
        except BatchRefused as exc:
            await self._refused(record, str(exc))
            return
        except BatchApiError as exc:
            self._problem(record, str(exc))
            return
        except Exception as exc:  # a full disk, the run state, a bug: this batch waits, the others go on
            log.exception("batch_step_failed", batch=record.id, state=str(record.state))
            self._problem(record, f"{type(exc).__name__}: {client.client.scrub(str(exc))}"[:300])
            return
        self.problems.pop(record.id, None)
        self._failures.pop(record.id, None)

    def _problem(self, record: BatchRecord, message: str) -> None:
        failures = self._failures.get(record.id, 0) + 1
        self._failures[record.id] = failures
        delay = min(_MAX_BACKOFF_S, self.settings.current.batch.poll_s, 2.0 ** (failures - 1))
        self._retry_at[record.id] = time.monotonic() + delay
        self.problems[record.id] = message
        log.warning(
            "batch_retry_later", batch=record.id, state=str(record.state), message=message, in_s=delay
        )

    async def _refused(self, record: BatchRecord, message: str) -> None:
        log.error("batch_refused", batch=record.id, message=message)
        text = f"the provider refused the batch: {message}"
        await self._fail_open_members(record, FailureKind.BATCH_FAILED, text)
        await self.batches.update(record.id, state=BatchState.CLOSED, message=text, closed_at=utc_now())

    async def _prepare(self, record: BatchRecord, client: BatchClient) -> BatchRecord:
        """Render every open member's prompt; write and upload the request file (as many requests as
        fit ``max_mb``: the others go back to the queue for the next batch)."""
        members = [m for m in await self.batches.members(record.id) if m.open]
        prepared = await self._prepare_all(members)
        lines: list[bytes] = []
        ended: list[Completion] = []
        left_over: list[Member] = []
        room = self.settings.current.batch.max_mb * 1_000_000
        for member, result in zip(members, prepared, strict=True):
            if isinstance(result, Outcome):
                ended.append(completion_of(member.claim, result, ()))
                continue
            line = client.request_line(member.generation.gen_id, result)
            if len(line) > room:
                left_over.append(member)
                continue
            room -= len(line)
            lines.append(line)
        if ended:
            await self._commit(ended)
            await self.batches.leave(record.id, [c.gen_id for c in ended])
        if left_over:
            await self.store.release([m.claim for m in left_over])
            await self.batches.leave(record.id, [m.generation.gen_id for m in left_over])
        if not lines:
            return await self.batches.update(
                record.id, state=BatchState.CLOSED, message="nothing to send", closed_at=utc_now()
            )
        content = b"".join(lines)
        await anyio.to_thread.run_sync(self.files.write, record.id, INPUT, content)
        with _refusal():
            file_id = await client.upload(content, f"daydreamd-{record.tag}.jsonl")
        self._creating_here.add(record.id)
        log.info("batch_uploaded", batch=record.id, requests=len(lines), file_id=file_id)
        return await self.batches.update(record.id, state=BatchState.SUBMITTING, input_file_id=file_id)

    async def _prepare_all(self, members: Sequence[Member]) -> list[Outcome | LlmRequest]:
        jobs = self.current.jobs

        async def prepare(member: Member) -> Outcome | LlmRequest:
            job = jobs.job(member.generation) if jobs is not None else None
            if job is None:
                return _failed(member, FailureKind.RENDER_ERROR, NO_JOB)
            return await self.runner.prepare(job, fresh=member.claim.fresh)

        return await _each(members, prepare)

    async def _submit(self, record: BatchRecord, client: BatchClient) -> BatchRecord:
        """Create the batch at the provider, unless a creation that may have happened did."""
        assert record.input_file_id is not None
        remote: RemoteBatch | None = None
        if record.id not in self._creating_here:
            remote = await client.find(record.tag)
            if remote is not None:
                log.info("batch_found_by_tag", batch=record.id, remote_id=remote.id)
        if remote is None:
            self._creating_here.discard(record.id)  # until it answers, the creation may or may not happen
            window = self.settings.current.batch.completion_window
            with _refusal():  # an answer refusing it: it was not created
                remote = await client.create(record.input_file_id, completion_window=window, tag=record.tag)
        self._polled[record.id] = time.monotonic()
        log.info("batch_submitted", batch=record.id, remote_id=remote.id, requests=record.requests)
        self.bus.publish(
            "batch_submitted", batch=record.id, model=record.llm_model_id, requests=record.requests
        )
        return await self.batches.update(
            record.id,
            state=BatchState.SUBMITTED,
            remote_id=remote.id,
            remote_state=remote.status,
            submitted_at=utc_now(),
        )

    async def _poll(self, record: BatchRecord, client: BatchClient) -> BatchRecord:
        """Ask how the batch is doing (every poll_s); once ended, download its result files."""
        now = time.monotonic()
        last = self._polled.get(record.id)
        if last is not None and now - last < self.settings.current.batch.poll_s:
            return record
        self._polled[record.id] = now
        assert record.remote_id is not None
        remote = await client.get(record.remote_id)
        if not remote.ended:
            return await self.batches.update(
                record.id,
                remote_state=remote.status,
                completed=remote.completed,
                failed=remote.failed,
                polled_at=utc_now(),
            )
        for file_id, name in ((remote.output_file_id, OUTPUT), (remote.error_file_id, ERRORS)):
            if file_id is not None:
                content = await client.content(file_id)
                await anyio.to_thread.run_sync(self.files.write, record.id, name, content)
        log.info(
            "batch_ended",
            batch=record.id,
            status=remote.status,
            completed=remote.completed,
            failed=remote.failed,
        )
        return await self.batches.update(
            record.id,
            state=BatchState.COLLECTING,
            remote_state=remote.status,
            output_file_id=remote.output_file_id,
            error_file_id=remote.error_file_id,
            completed=remote.completed,
            failed=remote.failed,
            message=None if remote.error is None else client.client.scrub(remote.error),
            polled_at=utc_now(),
        )

    async def _collect(self, record: BatchRecord, client: BatchClient) -> None:
        """Save, parse and commit every open member's result as an online call's would be."""
        requests, lines = await anyio.to_thread.run_sync(self._results, record, client)
        members = [m for m in await self.batches.members(record.id) if m.open]
        jobs = self.current.jobs
        missing = _missing(record)

        async def collect(member: Member) -> Completion:
            gen_id = member.generation.gen_id
            request = requests.get(gen_id)
            line = lines.get(gen_id)
            result = missing if request is None or line is None else _result(client, request, line)
            attempt = self._attempt(record, member, result)
            job = jobs.job(member.generation) if jobs is not None else None
            if request is None:
                outcome = _failed(member, FailureKind.BATCH_FAILED, LOST)
            elif job is None:
                outcome = _failed(member, FailureKind.RENDER_ERROR, NO_JOB + KEPT.format(id=record.id))
            else:
                try:
                    outcome = await self.runner.finish_call(
                        job, request, result, started_at=record.submitted_at
                    )
                except Exception as exc:  # a bug: the reply stays in output.jsonl, the member fails
                    log.exception("batch_member_failed", batch=record.id, gen_id=gen_id)
                    message = f"{type(exc).__name__} while saving its reply" + KEPT.format(id=record.id)
                    outcome = _failed(member, FailureKind.INTERNAL, message)
            completion = self._completion(member, outcome, attempt)
            self._count(record, member, completion, result, attempt)
            return completion

        completions = await _each(members, collect)
        await self._commit(completions)
        await self.batches.update(record.id, state=BatchState.CLOSED, closed_at=utc_now())
        self._forget(record.id)
        done = sum(c.ok for c in completions)
        log.info("batch_collected", batch=record.id, done=done, failed=len(completions) - done)
        self.bus.publish(
            "batch_collected",
            batch=record.id,
            model=record.llm_model_id,
            done=done,
            failed=len(completions) - done,
        )

    def _results(
        self, record: BatchRecord, client: BatchClient
    ) -> tuple[dict[str, LlmRequest], dict[str, ResultLine]]:
        """The requests as sent and the result lines by custom_id (read in a worker thread). An answer
        wins over an error line for the same request; a line for a request we did not send is not
        taken (a provider cannot answer for a generation that was not in the batch)."""
        requests = _requests(self.files.read(record.id, INPUT) or b"")
        lines: dict[str, ResultLine] = {}
        for name in (ERRORS, OUTPUT):
            for line in client.read_lines(self.files.read(record.id, name) or b""):
                if line.custom_id in requests:
                    lines[line.custom_id] = line
        return requests, lines

    def _completion(self, member: Member, outcome: Outcome, attempt: AttemptRow) -> Completion:
        """A member's completion; a failure an online call would try again (a 429, a 5xx) goes back
        to the queue for a later batch instead, as long as its tries last."""
        completion = completion_of(member.claim, outcome, (attempt,))
        kind = outcome.kind
        if outcome.ok or kind is None:
            return completion
        if member.claim.attempts + 1 >= max_tries(kind, self.settings.current.retry):
            return completion
        return replace(
            completion, requeue=True, error_message=f"requeued for a later batch: {outcome.message}"
        )

    def _count(
        self,
        record: BatchRecord,
        member: Member,
        completion: Completion,
        result: Reply | CallFailure,
        attempt: AttemptRow,
    ) -> None:
        self.counters.batch_call(record.llm_model_id, attempt.outcome, _usage_of(result), attempt.cost)
        if not completion.requeue:
            outcome = str(State.DONE) if completion.ok else str(completion.error_kind)
            self.counters.generation(str(member.generation.stage), outcome, time.monotonic())

    def _attempt(self, record: BatchRecord, member: Member, result: Reply | CallFailure) -> AttemptRow:
        """The attempt a batch call records: its usage, and its cost at the batch price."""
        usage = _usage_of(result)
        cost = usage.cost if usage is not None else None
        if cost is None and usage is not None:
            price = self.price_of(record.llm_model_id)
            if price is not None:
                cost = price.cost(usage.prompt_tokens, usage.completion_tokens) * record.price_factor
        now = time.time()
        return AttemptRow(
            attempt=member.claim.attempts + 1,
            started_at=now - age_s(record.submitted_at or record.created_at),
            finished_at=now,
            outcome="ok" if isinstance(result, Reply) else str(result.kind),
            status=None if isinstance(result, Reply) else result.status,
            message=None if isinstance(result, Reply) else result.message,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            total_tokens=usage.total_tokens if usage else None,
            reasoning_tokens=usage.reasoning_tokens if usage else None,
            cost=cost,
        )

    async def _fail_open_members(self, record: BatchRecord, kind: FailureKind, message: str) -> None:
        members = [m for m in await self.batches.members(record.id) if m.open]
        await self._commit([completion_of(m.claim, _failed(m, kind, message), ()) for m in members])
        self._forget(record.id)

    async def _commit(self, completions: Sequence[Completion]) -> None:
        for start in range(0, len(completions), _COMMIT_CHUNK):
            await self.store.complete_each(completions[start : start + _COMMIT_CHUNK])
        if completions:
            self.on_finished()

    def _forget(self, batch_id: int) -> None:
        for memory in (self._polled, self._retry_at, self._failures, self.problems):
            memory.pop(batch_id, None)
        self._creating_here.discard(batch_id)

    # -- gathering ---------------------------------------------------------------------------------

    async def _gather(self) -> None:
        """Form a batch of each model whose ready batch work fills one or has stopped growing."""
        batch = self.settings.current.batch
        with_work = {model for mode, model in await self.ready.keys_with_work() if mode == BATCH_MODE}
        for model in list(self._growth):
            if model not in with_work:
                del self._growth[model]
        for model in list(self._unserved):
            if model not in with_work:
                del self._unserved[model]
        for model_id in sorted(with_work):
            endpoint = self._endpoint_for(model_id)
            if endpoint is None:
                self._unserved.setdefault(model_id, utc_now())
                continue
            self._unserved.pop(model_id, None)
            if not self.may_submit(model_id):
                continue
            items = await self.ready.ready((BATCH_MODE, model_id), limit=batch.max_requests)
            items = [i for i in items if i.generation.stage == items[0].generation.stage] if items else []
            if not self._due(model_id, len(items), batch.gather_s, batch.max_requests):
                continue
            self._growth.pop(model_id, None)
            await self._form(model_id, endpoint, items)

    def _due(self, model_id: str, count: int, gather_s: float, max_requests: int) -> bool:
        now = time.monotonic()
        if count == 0:
            self._growth.pop(model_id, None)
            return False
        if count >= max_requests:
            return True
        seen = self._growth.get(model_id)
        if seen is None or seen.count != count:
            self._growth[model_id] = _Growth(count, now)
            return False
        return now - seen.since >= gather_s

    def _endpoint_for(self, model_id: str) -> str | None:
        """The first endpoint serving the model that takes batches (in ``[models.<id>] endpoints`` order)."""
        clients = self.clients()
        names = [n for n in self.settings.current.batch_endpoints_of(model_id) if n in clients]
        return names[0] if names else None

    async def _form(self, model_id: str, endpoint: str, items: Sequence[Ready]) -> None:
        settings = self.settings.current
        formed = await self.batches.open_batch(
            items,
            endpoint=endpoint,
            llm_model_id=model_id,
            stage=str(items[0].generation.stage),
            price_factor=settings.all_endpoints()[endpoint].batch_discount,
            lease_s=settings.pool.lease_s,
            now=time.time(),
        )
        if formed is None:
            return
        record, claims = formed
        log.info("batch_formed", batch=record.id, model=model_id, endpoint=endpoint, requests=len(claims))
        await self._advance(record)


LOST = "its request is not in the batch's input.jsonl (the file was lost or changed); retry it"
KEPT = " (the batch's reply is kept in data/batches/{id}/output.jsonl)"
_T = TypeVar("_T")
_R = TypeVar("_R")


async def _each(items: Sequence[_T], work: Callable[[_T], Awaitable[_R]]) -> list[_R]:
    """``work`` on every item, a few at a time (the runner's threads do the file work), in order."""
    results: list[_R | None] = [None] * len(items)

    async def one(i: int) -> None:
        results[i] = await work(items[i])

    for start in range(0, len(items), _AT_ONCE):
        async with anyio.create_task_group() as group:
            for i in range(start, min(start + _AT_ONCE, len(items))):
                group.start_soon(one, i)
    return [r for r in results if r is not None]


@contextmanager
def _refusal() -> Iterator[None]:
    """An upload or a creation the provider answers with a refusal (a 4xx but 408, 409 and 429)
    raises :class:`BatchRefused`: nothing was made there. No answer at all stays a retry."""
    try:
        yield
    except BatchApiError as exc:
        if exc.transient:
            raise
        raise BatchRefused(str(exc)) from exc


def _missing(record: BatchRecord) -> CallFailure:
    """What a member without a result line failed of: how the batch ended, and why if it said."""
    kind = _MISSING_KIND.get(record.remote_state or "", FailureKind.BATCH_FAILED)
    why = f": {record.message}" if record.message else ""
    return CallFailure(
        kind, f"the batch ended ({record.remote_state or 'unknown'}) without an answer for it{why}"
    )


def _usage_of(result: Reply | CallFailure) -> Usage | None:
    """The usage a result reports (a failure's, when a paid reply came with it)."""
    if isinstance(result, Reply):
        return result.usage
    return result.reply.usage if result.reply is not None else None


def _failed(member: Member, kind: FailureKind, message: str) -> Outcome:
    g = member.generation
    return Outcome(gen_id=g.gen_id, stage=g.stage, ok=False, kind=kind, message=message)


def _result(client: BatchClient, request: LlmRequest, line: ResultLine) -> Reply | CallFailure:
    """The reply of one member's line, or the failure it holds."""
    try:
        return client.result(request, line)
    except CallFailure as failure:
        return failure


def _requests(content: bytes) -> dict[str, LlmRequest]:
    """The requests of an input file by custom_id, as they were sent."""
    found: dict[str, LlmRequest] = {}
    for raw in content.splitlines():
        try:
            line = json.loads(raw)
            body = line["body"]
            prompt = body["messages"][0]["content"]
            found[str(line["custom_id"])] = LlmRequest(
                model=str(body["model"]),
                prompt=str(prompt),
                max_tokens=int(body["max_tokens"]),
                temperature=body.get("temperature"),
            )
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return found
