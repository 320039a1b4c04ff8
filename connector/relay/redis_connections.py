"""Redis connections whose commands can be cancelled: redis-py's, with a cancel that lands
while a command is being sent no longer lost.

redis-py 8 sends a command through `asyncio.wait_for(..., socket_timeout)` whenever a socket
timeout is set (the relay sets one: portal/settings.py). Python 3.11's `wait_for` returns the
inner result when the task is cancelled in the loop iteration in which the inner send
completed (CPython gh-86296, fixed in 3.12 by rewriting wait_for on `asyncio.timeout`): the
cancel is swallowed, `Task.cancelling()` stays raised, and the task goes on with its command.
A task that loops on Redis then never stops: the layer's reader, cancelled by `close_pools`
or `reader_stop`, went back to its blocking pop and held the event loop's teardown forever
(a PostgreSQL CI run hung on it; one cancel in about twenty lands in that window).

`cancel_safe_pool` makes a pool's connections tell a swallowed cancel by the task's cancel
count, which rose during the send with no CancelledError coming out, and raise it then. The
command was written but its answer will not be read, so the connection is dropped first (as
redis-py drops one when a cancel reaches it the normal way), never handed to the next
command with an answer pending. A send that failed as its cancel was swallowed raises the
cancel too, not the connection error redis-py made of the failure.

asyncio.timeout has no such flaw: the application waits with it, never with wait_for
(tests/connector/test_redis_connections.py checks).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool


class CancelSafeSend:
    """A mixin before a redis-py connection class (see the module's docstring)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        requested = task.cancelling() if task is not None else 0
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The send failed as the cancel was swallowed (redis-py dropped the connection):
            # the cancel, not the error, is what the task must see.
            if task is not None and task.cancelling() > requested:
                raise asyncio.CancelledError() from error
            raise
        if task is not None and task.cancelling() > requested:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise asyncio.CancelledError()


@functools.cache
def cancel_safe(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain, TLS or Unix socket: whatever the URL chose) with CancelSafeSend."""
    if issubclass(connection_class, CancelSafeSend):
        return connection_class
    return type(f"CancelSafe{connection_class.__name__}", (CancelSafeSend, connection_class), {})


def cancel_safe_pool(pool: ConnectionPool) -> ConnectionPool:
    """`pool`, its connections to come made with CancelSafeSend (call it before its first command)."""
    pool.connection_class = cancel_safe(pool.connection_class)
    return pool
