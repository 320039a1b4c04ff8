"""The relay's background tasks, with a reference kept to each.

asyncio's event loop keeps only a weak reference to a task: one that nobody else holds
may be garbage-collected before it finishes ("save a reference to the result of this
function", the docs of `asyncio.create_task`). Every task the relay starts is held
either in a table of one task per event loop (`task_of_loop`: housekeeping, recovery,
the channel layer's probe and reader) or in `_running` until it is done (`spawn`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

_running: set[asyncio.Task] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task:
    """Start `coro` on the running loop as a task that lives until it is done."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def task_of_loop(tasks: dict, start: Callable[[], Coroutine], name: str) -> asyncio.Task:
    """The running loop's task in `tasks`, started with `start()` unless one is running
    (tasks of closed loops are forgotten on the way)."""
    loop = asyncio.get_running_loop()
    task = tasks.get(loop)
    if task is None or task.done():
        for stale in [key for key in tasks if key.is_closed()]:
            del tasks[stale]
        task = tasks[loop] = loop.create_task(start(), name=name)
    return task
