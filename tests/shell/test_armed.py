"""Armed work: generations started ahead of a slot wait until launched, or are called off.

In memory with anyio events and tasks; no mocks.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from daydreamd.daemon.armed import ArmedWork, CalledOff
from tests.shell.test_scheduler import ready


async def run_armed(armed: ArmedWork, gen_id: str, outcomes: dict[str, str]) -> None:
    """What the pool's task for an armed generation does: wait, then note whether it was
    launched or called off, and say it is finished either way."""
    try:
        await armed.until_launched(gen_id)
        outcomes[gen_id] = "launched"
    except CalledOff:
        outcomes[gen_id] = "called off"
    finally:
        armed.finished(gen_id)


async def test_a_prepared_generation_waits_until_launched_and_the_pool_is_told() -> None:
    told: list[str] = []
    armed = ArmedWork(on_waiting=lambda: told.append("waiting"))
    first, second = ready(1, "a"), ready(2, "a")
    armed.arm(first)
    armed.arm(second)
    assert (len(armed), armed.of(("llm", "a"))) == (2, 2)
    launched: list[str] = []

    async def run(gen_id: str) -> None:
        await armed.until_launched(gen_id)
        launched.append(gen_id)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, first.gen_id)
        with anyio.fail_after(5):
            while armed.waiting.held(("llm", "a")) < 1:
                await anyio.lowlevel.checkpoint()
        assert told == ["waiting"] and launched == []
        (chosen,) = armed.waiting.choose(1, [("llm", "a")], may_start=lambda _: True)
        armed.launch(chosen)
    assert launched == [first.gen_id]
    assert (len(armed), armed.of(("llm", "a")), first.gen_id in armed) == (1, 1, False)


async def test_called_off_work_raises_and_is_waited_for_until_its_task_ends() -> None:
    """One armed generation waits, one is still preparing: both are called off; until_given_back
    returns only after both tasks have ended."""
    armed = ArmedWork(on_waiting=lambda: None)
    waiting, preparing = ready(1, "a"), ready(2, "b")
    armed.arm(waiting)
    armed.arm(preparing)
    outcomes: dict[str, str] = {}
    prepared = anyio.Event()

    async def run(gen_id: str, before: anyio.Event | None) -> None:
        if before is not None:
            await before.wait()
        await run_armed(armed, gen_id, outcomes)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, waiting.gen_id, None)
        with anyio.fail_after(5):
            while armed.waiting.held(("llm", "a")) < 1:
                await anyio.lowlevel.checkpoint()
        tasks.start_soon(run, preparing.gen_id, prepared)
        assert armed.call_off() == 2
        assert len(armed) == 0 and armed.waiting.held(("llm", "a")) == 0
        given_back = False

        async def wait_given_back() -> None:
            nonlocal given_back
            await armed.until_given_back()
            given_back = True

        tasks.start_soon(wait_given_back)
        with anyio.fail_after(5):
            while waiting.gen_id not in outcomes:
                await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        assert not given_back  # the one still preparing has not ended
        prepared.set()
    assert outcomes == {waiting.gen_id: "called off", preparing.gen_id: "called off"}
    assert given_back


async def test_nothing_called_off_means_nothing_to_wait_for() -> None:
    armed = ArmedWork(on_waiting=lambda: None)
    assert armed.call_off() == 0
    with anyio.fail_after(1):
        await armed.until_given_back()


async def test_calling_off_some_leaves_the_others_armed_and_waiting() -> None:
    """A budget at its end calls off only its approval's armed work: the other stays armed, still
    waits in its lane, and launches."""
    armed = ArmedWork(on_waiting=lambda: None)
    spent, other = ready(1, "a", approval=7), ready(2, "a", approval=8)
    armed.arm(spent)
    armed.arm(other)
    outcomes: dict[str, str] = {}

    async with anyio.create_task_group() as tasks:
        for row in (spent, other):
            tasks.start_soon(run_armed, armed, row.gen_id, outcomes)
        with anyio.fail_after(5):
            while armed.waiting.held(("llm", "a")) < 2:
                await anyio.lowlevel.checkpoint()
        assert armed.call_off(lambda row: row.approval_id == 7) == 1
        assert (len(armed), spent.gen_id in armed, armed.waiting.held(("llm", "a"))) == (1, False, 1)
        (chosen,) = armed.waiting.choose(2, [("llm", "a")], may_start=lambda _: True)
        armed.launch(chosen)
    assert outcomes == {spent.gen_id: "called off", other.gen_id: "launched"}


async def test_a_preparation_that_waits_is_cut_short_when_called_off_and_a_launched_call_is_not() -> None:
    """A generation still being prepared (here: waiting forever, as a preparation does while the
    data folder takes no writes) stops as soon as it is called off, so a revoke never waits for the
    disk; one already launched keeps its call whatever is called off after."""
    armed = ArmedWork(on_waiting=lambda: None)
    stuck, sent = ready(1, "a"), ready(2, "a")
    armed.arm(stuck)
    armed.arm(sent)
    outcomes: dict[str, str] = {}
    entered = anyio.Event()

    async def preparing_forever() -> None:
        with armed.scope(stuck.gen_id) as scope:
            entered.set()
            await anyio.sleep_forever()
        outcomes[stuck.gen_id] = "cut short" if scope.cancelled_caught else "went on"
        armed.finished(stuck.gen_id)

    async def calling() -> None:
        with armed.scope(sent.gen_id) as scope:
            await armed.until_launched(sent.gen_id)
            await call_over.wait()  # the call at the provider
        outcomes[sent.gen_id] = "cut short" if scope.cancelled_caught else "called"

    call_over = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(preparing_forever)
            tasks.start_soon(calling)
            await entered.wait()
            while armed.waiting.held(("llm", "a")) < 1:
                await anyio.lowlevel.checkpoint()
            (chosen,) = armed.waiting.choose(1, [("llm", "a")], may_start=lambda _: True)
            armed.launch(chosen)
            assert armed.call_off() == 1  # only the one still preparing is armed now
            await armed.until_given_back()
            call_over.set()
    assert outcomes == {stuck.gen_id: "cut short", sent.gen_id: "called"}
