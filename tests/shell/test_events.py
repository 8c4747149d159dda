"""The event bus behind ``GET /v1/events``: fan-out, bounded buffers that drop and say so, heartbeats.

Publishing must never block the service, so these tests publish from the same task that reads
(no helper tasks needed) and wait only on conditions with deadlines; heartbeats use a short
``heartbeat_s`` instead of real long sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anyio
import pytest

from daydreamd.daemon.events import EventBus

DEADLINE_S = 5.0


async def next_event(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    with anyio.fail_after(DEADLINE_S):
        return await anext(events)


def names(messages: list[dict[str, Any]]) -> list[str]:
    return [m["event"] for m in messages]


async def test_a_subscriber_is_greeted_then_gets_what_is_published() -> None:
    bus = EventBus(heartbeat_s=60)
    async with bus.subscribe() as events:
        first = await next_event(events)
        assert first["event"] == "subscribed"
        bus.publish("generation_started", gen_id="d_1", stage="draft", model="m")
        bus.publish("generation_done", gen_id="d_1", stage="draft", model="m", error_type=None)
        started, done = await next_event(events), await next_event(events)
    assert {k: v for k, v in started.items() if k != "at"} == {
        "event": "generation_started",
        "gen_id": "d_1",
        "stage": "draft",
        "model": "m",
    }
    assert done["event"] == "generation_done" and done["error_type"] is None
    for message in (first, started, done):
        datetime.fromisoformat(message["at"])  # every message carries an ISO timestamp


async def test_events_published_before_subscribing_are_not_replayed() -> None:
    bus = EventBus(heartbeat_s=60)
    bus.publish("approved", matched=9)  # nobody listens: dropped on the floor, no error
    async with bus.subscribe() as events:
        assert (await next_event(events))["event"] == "subscribed"
        bus.publish("paused", model=None)
        assert (await next_event(events))["event"] == "paused"


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus(heartbeat_s=60)
    async with bus.subscribe() as a, bus.subscribe() as b:
        assert bus.subscribers == 2
        for n in range(5):
            bus.publish("tick", n=n)
        for events in (a, b):
            got = [await next_event(events) for _ in range(6)]
            assert names(got) == ["subscribed"] + ["tick"] * 5
            assert [m["n"] for m in got[1:]] == [0, 1, 2, 3, 4]


async def test_a_slow_subscriber_loses_events_and_is_told_how_many() -> None:
    bus = EventBus(buffer=2, heartbeat_s=60)
    async with bus.subscribe() as slow, bus.subscribe() as fast:
        assert (await next_event(fast))["event"] == "subscribed"
        assert (await next_event(slow))["event"] == "subscribed"
        bus.publish("tick", n=1)
        bus.publish("tick", n=2)
        assert (await next_event(fast))["n"] == 1  # fast keeps up, slow does not read
        assert (await next_event(fast))["n"] == 2
        for n in range(3, 6):
            bus.publish("tick", n=n)  # slow's buffer (2) is full: 3, 4, 5 are dropped for it
            assert (await next_event(fast))["n"] == n  # publishing never blocked on the slow one
        assert [(await next_event(slow))["n"] for _ in range(2)] == [1, 2]
        bus.publish("tick", n=6)
        dropped = await next_event(slow)
        assert dropped["event"] == "dropped" and dropped["count"] == 3
        assert (await next_event(slow))["n"] == 6
        assert (await next_event(fast))["n"] == 6
        bus.publish("tick", n=7)  # the count was reset: no second "dropped"
        assert (await next_event(slow))["n"] == 7


async def test_the_dropped_notice_waits_until_the_next_event_fits_behind_it() -> None:
    bus = EventBus(buffer=2, heartbeat_s=60)
    async with bus.subscribe() as events:
        assert (await next_event(events))["event"] == "subscribed"
        bus.publish("tick", n=1)
        bus.publish("tick", n=2)
        bus.publish("tick", n=3)  # full: dropped 1
        bus.publish("tick", n=4)  # still full: dropped 2
        assert (await next_event(events))["n"] == 1
        bus.publish("tick", n=5)  # room for one: the event goes, the notice waits
        assert (await next_event(events))["n"] == 2
        assert (await next_event(events))["n"] == 5
        bus.publish("tick", n=6)  # room for both: the notice, then 6
        notice = await next_event(events)
        assert notice["event"] == "dropped" and notice["count"] == 2
        assert (await next_event(events))["n"] == 6


async def test_a_one_slot_subscriber_that_catches_up_gets_events_again() -> None:
    bus = EventBus(buffer=1, heartbeat_s=60)
    async with bus.subscribe() as events:
        assert (await next_event(events))["event"] == "subscribed"
        bus.publish("tick", n=1)
        bus.publish("tick", n=2)  # full: dropped
        assert (await next_event(events))["n"] == 1
        got = []
        for n in range(3, 6):  # the reader now reads after every publish
            bus.publish("tick", n=n)
            got.append(await next_event(events))
        assert any(m.get("n") == 5 for m in got), got


async def test_an_idle_stream_sends_heartbeats() -> None:
    bus = EventBus(heartbeat_s=0.02)
    async with bus.subscribe() as events:
        assert (await next_event(events))["event"] == "subscribed"
        beats = [await next_event(events) for _ in range(3)]
        assert names(beats) == ["heartbeat"] * 3
        for beat in beats:
            datetime.fromisoformat(beat["at"])
        bus.publish("tick", n=1)
        got = await next_event(events)
        while got["event"] == "heartbeat":  # a heartbeat may already be on its way
            got = await next_event(events)
        assert got["event"] == "tick" and got["n"] == 1


async def test_a_published_event_interrupts_the_heartbeat_wait() -> None:
    bus = EventBus(heartbeat_s=30)
    async with bus.subscribe() as events:
        assert (await next_event(events))["event"] == "subscribed"
        async with anyio.create_task_group() as tg:

            async def publish_soon() -> None:
                await anyio.sleep(0.01)
                bus.publish("tick", n=1)

            tg.start_soon(publish_soon)
            with anyio.fail_after(5):  # far less than the 30 s heartbeat
                got = await anext(events)
        assert got["event"] == "tick"


async def test_leaving_unsubscribes_and_publishing_goes_on() -> None:
    bus = EventBus(heartbeat_s=60)
    async with bus.subscribe() as events:
        assert bus.subscribers == 1
        await next_event(events)
    assert bus.subscribers == 0
    bus.publish("tick", n=1)  # no subscriber left: nothing to do, nothing raised


async def test_an_error_inside_the_subscription_still_unsubscribes() -> None:
    bus = EventBus(heartbeat_s=60)
    with pytest.raises(RuntimeError):
        async with bus.subscribe():
            assert bus.subscribers == 1
            raise RuntimeError("client went away")
    assert bus.subscribers == 0


async def test_one_subscriber_leaving_does_not_disturb_the_others() -> None:
    bus = EventBus(heartbeat_s=60)
    async with bus.subscribe() as staying:
        await next_event(staying)
        async with bus.subscribe() as leaving:
            await next_event(leaving)
            bus.publish("tick", n=1)
        bus.publish("tick", n=2)
        assert [(await next_event(staying))["n"] for _ in range(2)] == [1, 2]
        assert bus.subscribers == 1
