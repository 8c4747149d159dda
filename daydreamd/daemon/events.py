"""The live event stream behind ``GET /v1/events`` and ``daydreamctl watch``.

Publishing never blocks the service: each subscriber has a bounded buffer, and a subscriber
that falls behind loses events (it is told how many in the next ``dropped`` event) rather
than slowing the pool down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from daydreamd.core.timestamps import utc_now


@dataclass(slots=True)
class _Subscriber:
    send: MemoryObjectSendStream[dict[str, Any]]
    dropped: int = 0


@dataclass(slots=True)
class EventBus:
    """Fan-out of events to every current subscriber."""

    buffer: int = 1000
    heartbeat_s: float = 15.0
    _subscribers: list[_Subscriber] = field(default_factory=list)

    def publish(self, event: str, **fields: Any) -> None:
        """Send ``{"event": event, "at": now, **fields}`` to every subscriber without waiting."""
        if not self._subscribers:
            return
        message = {"event": event, "at": utc_now(), **fields}
        for subscriber in self._subscribers:
            stats = subscriber.send.statistics()
            room = stats.max_buffer_size - stats.current_buffer_used
            try:
                # The notice of missed events goes first, but only when the event fits behind it:
                # a reader that keeps up must get real events, not an endless stream of notices.
                if subscriber.dropped and room >= 2:
                    subscriber.send.send_nowait(
                        {"event": "dropped", "at": message["at"], "count": subscriber.dropped}
                    )
                    subscriber.dropped = 0
                subscriber.send.send_nowait(message)
            except anyio.WouldBlock:
                subscriber.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    def close(self) -> None:
        """End every subscription (at shutdown, so streaming clients are not waited for)."""
        for subscriber in self._subscribers:
            subscriber.send.close()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Receive events from now on (with heartbeats when idle) until the block exits."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](self.buffer)
        subscriber = _Subscriber(send)
        self._subscribers.append(subscriber)
        try:
            yield self._iterate(receive)
        finally:
            self._subscribers.remove(subscriber)
            send.close()
            receive.close()

    async def _iterate(
        self, receive: MemoryObjectReceiveStream[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        yield {"event": "subscribed", "at": utc_now()}
        while True:
            message: dict[str, Any] = {"event": "heartbeat"}
            with anyio.move_on_after(self.heartbeat_s):  # never yield inside the scope
                message = await receive.receive()
            yield message if "at" in message else {**message, "at": utc_now()}

    @property
    def subscribers(self) -> int:
        """How many clients are listening."""
        return len(self._subscribers)
