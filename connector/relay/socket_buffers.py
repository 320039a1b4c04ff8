"""The receive buffers of one process's sockets (connector.relay.redis_layer): the messages
the layer's reader took off Redis for each socket, not yet taken by it.

One reader per buffer: the socket whose channel it is. A buffer exists only while messages
wait or its socket waits for one (an idle socket's entry goes), and a socket that closed
(`closed`) gets nothing more buffered: a frame or an event still on its way to it is
dropped when it arrives, instead of filling a buffer nobody reads or frees.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any


class SocketQueue:
    """The messages received for one socket of this process, not yet taken by it. At its
    capacity (the layer's) the oldest goes, as in channels_redis: a socket that stopped
    reading must not grow the process's memory without end.

    Not an asyncio.Queue: every idle socket waits on its buffer, and a Queue's three deques
    cost about 2.3 KiB per socket (tracemalloc, 1,000 idle terminals). This one holds a deque
    only while messages wait and a future only while its socket waits."""

    __slots__ = ("capacity", "items", "waiter")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: collections.deque | None = None
        self.waiter: asyncio.Future | None = None

    def put_nowait(self, item: Any) -> None:
        items = self.items
        if items is None:
            items = self.items = collections.deque()
        elif 0 < self.capacity <= len(items):
            items.popleft()
        items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self.items

    async def get(self) -> Any:
        while not self.items:
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        item = self.items.popleft()
        if not self.items:
            self.items = None
        return item


class SocketBuffers:
    """Every socket's buffer of one process, by channel name."""

    def __init__(self, *, capacity: int, forget_after: float) -> None:
        self.capacity = capacity
        self.queues: dict[str, SocketQueue] = {}
        # Channels whose socket closed, with when; kept `forget_after` seconds (twice the
        # layer's message expiry: Redis holds nothing more for them by then).
        self.forget_after = forget_after
        self.gone: dict[str, float] = {}

    def _queue(self, channel: str) -> SocketQueue:
        queue = self.queues.get(channel)
        if queue is None:
            queue = self.queues[channel] = SocketQueue(self.capacity)
        return queue

    def put(self, target: str | list[str], message: dict) -> None:
        """Buffer `message` for its channel, or for each of a list of channels (a group
        message the library addressed to several of this process's sockets at once)."""
        for channel in target if isinstance(target, list) else (target,):
            if channel not in self.gone:
                self._queue(channel).put_nowait(message)

    async def take(self, channel: str) -> dict:
        """The socket's next message, waited for."""
        self.gone.pop(channel, None)  # whoever receives on it is there to read it
        queue = self._queue(channel)
        try:
            message = await queue.get()
        except asyncio.CancelledError:
            # The socket is closing: what is still buffered for it goes (as in the library).
            if self.queues.get(channel) is queue:
                del self.queues[channel]
            raise
        if queue.empty() and self.queues.get(channel) is queue:
            del self.queues[channel]  # no entry kept per idle socket
        return message

    def closed(self, channel: str) -> None:
        """The socket of `channel` closed: what is buffered for it goes, and what comes for
        it from now on is dropped."""
        self.queues.pop(channel, None)
        now = time.monotonic()
        gone = self.gone
        gone[channel] = now
        cutoff = now - self.forget_after
        while gone:  # in the order they went: the oldest first
            oldest = next(iter(gone))
            if gone[oldest] >= cutoff:
                break
            del gone[oldest]
