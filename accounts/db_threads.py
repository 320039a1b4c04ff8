"""Where async code (the relay's consumers, the token endpoint) runs its database work.

- SQLite: in Channels' one database thread (`database_sync_to_async`'s default). SQLite
  locks the whole file for a writer; one writing thread per process keeps "database is
  locked" away, as it always did.
- Any other database (PostgreSQL): in a pool of `DB_THREADS` threads (setting, default 4),
  each with its own connection, so that one process has several database round trips in
  flight instead of queueing every registration, attach and claim behind one thread.
  `DB_THREADS = 0` falls back to Channels' one thread. A synchronous caller waiting on the
  event loop (`async_to_sync`: Django's test client, a management command) has the work
  run in its own thread instead, as `sync_to_async` would.

Each call is wrapped like `database_sync_to_async` (stale connections closed before and
after it), so `CONN_MAX_AGE` decides whether a pool thread keeps its connection (at most
`DB_THREADS` connections per process) or opens one per call.

Order: calls that name a `key` (a session id) run one after the other in the order they
were made, whichever thread takes them, and the caller's own follow-up (the events the
call committed, connector.groups) is part of the turn; calls without a key run as soon as
a thread is free. A session's attaches and detaches are therefore seen, and announced, in
the order the sockets came and went, as when one thread did all the work.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync, SyncToAsync
from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def pool_size() -> int:
    """How many threads run database work: 0 means Channels' one database thread."""
    return threads_for(settings.DATABASES["default"]["ENGINE"], getattr(settings, "DB_THREADS", 4))


def threads_for(engine: str, configured: int) -> int:
    if "sqlite" in engine:
        return 0
    return max(0, int(configured))


def _sync_caller_waits() -> bool:
    """Is a synchronous caller blocked on this event loop (`async_to_sync`, e.g. Django's
    test client calling an async view)? Its own thread then runs the work, on its own
    connection, inside its own transaction if it has one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return loop in getattr(AsyncToSync, "loop_thread_executors", {})


def _executor() -> ThreadPoolExecutor | None:
    global _pool, _pool_size
    size = pool_size()
    if size == 0:
        return None
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=size, thread_name_prefix="db"), size
        return _pool


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]:
    """`fn(*args, **kwargs)` in a database thread (see the module's notes)."""
    if _sync_caller_waits():
        # The caller's thread owns its connection (and maybe a transaction): leave it open.
        return SyncToAsync(fn)(*args, **kwargs)
    executor = _executor()
    if executor is None:
        return DatabaseSyncToAsync(fn)(*args, **kwargs)
    return _in_pool(executor, fn, args, kwargs)


async def _in_pool(executor: ThreadPoolExecutor, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    # What DatabaseSyncToAsync(thread_sensitive=False) does, minus carrying the caller's
    # context variables into the thread and back on every call (a measurable share of a
    # call's CPU). The work runs in the pool thread's own context instead, so what Django
    # keeps per context there (its cache clients: the registration throttle's Redis
    # connection) lasts as long as the thread, as the thread's database connection does.
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, _closing, loop, fn, args, kwargs)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if not future.cancel():  # already running: its transaction ends by itself; wait for it
            await asyncio.wait([future])
        raise


def _closing(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    # As in sync_to_async's threads: async_to_sync in here goes back to the caller's loop.
    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


# --- one key's turns ----------------------------------------------------------------------------

_turns: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}


async def in_turn(key: str | None, work: Callable[[], Awaitable[T]]) -> T:
    """Await `work()` after every earlier `in_turn` of the same key has finished (first
    come, first served); at once without a key."""
    if key is None:
        return await work()
    loop = asyncio.get_running_loop()
    previous = _turns.get(key)
    mine = loop.create_future()
    _turns[key] = (loop, mine)
    try:
        if previous is not None and previous[0] is loop and not previous[1].done():
            await asyncio.shield(previous[1])
        return await work()
    finally:
        if previous is not None and previous[0] is loop and not previous[1].done():
            # Cancelled while waiting: whoever comes next still waits for the one before.
            previous[1].add_done_callback(lambda _: mine.done() or mine.set_result(None))
        else:
            if not mine.done():
                mine.set_result(None)
            if _turns.get(key, (None, None))[1] is mine:
                del _turns[key]
