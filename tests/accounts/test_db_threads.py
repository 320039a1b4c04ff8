"""accounts.db_threads: where async code runs its database work, and in which order."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync

from accounts import db_threads


async def test_work_of_one_key_takes_turns_in_the_order_it_came():
    order: list[str] = []
    release = asyncio.Event()

    async def step(name: str, wait: bool = False) -> str:
        order.append(f"{name} starts")
        if wait:
            await release.wait()
        order.append(f"{name} ends")
        return name

    first = asyncio.create_task(db_threads.in_turn("s1", lambda: step("first", wait=True)))
    await asyncio.sleep(0)
    second = asyncio.create_task(db_threads.in_turn("s1", lambda: step("second")))
    other = asyncio.create_task(db_threads.in_turn("s2", lambda: step("other key")))
    unkeyed = asyncio.create_task(db_threads.in_turn(None, lambda: step("no key")))
    await asyncio.gather(other, unkeyed)
    assert "second starts" not in order
    release.set()
    assert await asyncio.gather(first, second) == ["first", "second"]
    assert order.index("first ends") < order.index("second starts")
    assert db_threads._turns == {}


async def test_a_turn_cancelled_while_waiting_keeps_the_next_one_behind_the_first():
    release = asyncio.Event()
    order: list[str] = []

    async def step(name: str, wait: bool = False) -> None:
        if wait:
            await release.wait()
        order.append(name)

    first = asyncio.create_task(db_threads.in_turn("s", lambda: step("first", wait=True)))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(db_threads.in_turn("s", lambda: step("cancelled")))
    await asyncio.sleep(0)
    third = asyncio.create_task(db_threads.in_turn("s", lambda: step("third")))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert order == []
    release.set()
    await asyncio.gather(first, third)
    assert order == ["first", "third"]


def test_sqlite_keeps_channels_one_database_thread_and_postgresql_gets_a_pool():
    assert db_threads.threads_for("django.db.backends.sqlite3", 4) == 0
    assert db_threads.threads_for("django.db.backends.postgresql", 4) == 4
    assert db_threads.threads_for("django.db.backends.postgresql", 0) == 0


def test_the_pool_size_is_a_setting(settings):
    settings.DB_THREADS = 3
    engine = settings.DATABASES["default"]["ENGINE"]
    assert db_threads.pool_size() == (0 if "sqlite" in engine else 3)


@pytest.mark.django_db
def test_a_synchronous_caller_has_the_work_run_in_its_own_thread():
    # Django's test client calling an async view: the view's work must see the caller's
    # transaction, so it runs on the caller's thread and connection.
    async def where() -> threading.Thread:
        return await db_threads.run(threading.current_thread)

    assert async_to_sync(where)() is threading.current_thread()
