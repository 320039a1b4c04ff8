"""A cancel is never lost in a Redis command (connector.relay.redis_connections): the task
stops, whichever loop iteration the cancel lands in, the connection is not handed on with an
answer pending, and the layer's reader, which loops on Redis, stops when it is told to.

Without the cancel-safe connections, Python 3.11's asyncio.wait_for (redis-py's send, when a
socket timeout is set) swallows a cancel that lands as the send completes: these tests lose
it within the first few iterations."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio

from connector.relay.redis_layer import RedisChannelLayer
from tests.live import REDIS_SERVER, run_bounded

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = range(16)  # loop iterations between a command's start and its cancel: its send, its answer and after


@asynccontextmanager
async def layers(url: str, count: int = 1) -> AsyncIterator[list[RedisChannelLayer]]:
    """`count` processes' layers, their pools closed after. With a socket timeout, as
    portal/settings.py configures it: redis-py sends through asyncio.wait_for only then."""
    hosts = [{"address": url, "socket_timeout": 15}]
    made = [RedisChannelLayer(hosts=hosts, capacity=100, expiry=60) for _ in range(count)]
    try:
        yield made
    finally:
        for layer in made:
            await layer.close_pools()


async def yield_to_the_loop(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def lost_cancels(connection: redis.asyncio.Redis) -> list[int]:
    """Cancel a command after each number of ITERATIONS, three times each: the numbers after
    which the command answered although its cancel had been accepted. After each, the next
    command must read its own answer, not the cancelled one's."""
    await connection.ping()
    lost = []
    for iterations in ITERATIONS:
        for attempt in range(3):
            command = asyncio.create_task(connection.echo(f"first {iterations}.{attempt}"))
            await yield_to_the_loop(iterations)
            if not command.cancel():
                continue  # it had answered already: nothing to cancel
            try:
                await command
                lost.append(iterations)
            except asyncio.CancelledError:
                pass
            word = f"next {iterations}.{attempt}"
            assert await connection.echo(word) == word.encode()
    return lost


@needs_redis
def test_redis_py_s_own_connections_lose_a_cancel_in_the_window_this_module_aims_at(redis_url):
    # The control: the sweep reaches the window. If this fails, this Python's wait_for no
    # longer loses cancels (fixed in 3.12: connector.relay.redis_connections can go) or
    # redis-py's send moved (aim ITERATIONS again).
    async def scenario() -> None:
        connection = redis.asyncio.Redis.from_url(redis_url, socket_timeout=15)
        try:
            assert await lost_cancels(connection) != []
        finally:
            await connection.aclose()

    run_bounded(scenario(), timeout=60)


@needs_redis
def test_a_cancelled_command_raises_cancelled_error_wherever_the_cancel_lands(redis_url):
    async def scenario() -> None:
        async with layers(redis_url) as (layer,):
            lost = await lost_cancels(layer.connection(0))
            assert lost == [], f"cancels lost after these many loop iterations: {lost}"

    run_bounded(scenario(), timeout=60)


@needs_redis
def test_a_cancelled_pipeline_drops_its_connection_and_the_next_one_answers(redis_url):
    async def scenario() -> None:
        async with layers(redis_url) as (layer,):
            connection = layer.connection(0)
            for iterations in ITERATIONS:
                pipe = connection.pipeline(transaction=False)
                pipe.set("key", iterations).get("key")
                run = asyncio.create_task(pipe.execute())
                await yield_to_the_loop(iterations)
                if run.cancel():
                    with pytest.raises(asyncio.CancelledError):
                        await run
                pipe = connection.pipeline(transaction=False)
                pipe.echo("after").get("key")
                assert (await pipe.execute())[0] == b"after"

    run_bounded(scenario(), timeout=60)


@needs_redis
def test_the_reader_stops_wherever_its_cancel_lands(redis_url):
    # The reader loops: a batch pop script, then a blocking pop, again and again. A cancel it
    # swallowed sent it back to its pop for ever (the event loop's teardown hung on it).
    async def scenario() -> None:
        async with layers(redis_url, 2) as (sender, receiver):
            channel = await receiver.new_channel()
            for iterations in ITERATIONS:
                for attempt in range(3):
                    await sender.send(channel, {"type": "frame", "n": attempt})
                    assert (await receiver.receive(channel))["n"] == attempt  # the reader runs
                    await yield_to_the_loop(iterations)
                    async with asyncio.timeout(3):  # less than the blocking pop's 5 s
                        await receiver.reader_stop()
                    await until_redis_let_go_of_the_pop(sender)

    run_bounded(scenario(), timeout=120)


async def until_redis_let_go_of_the_pop(layer: RedisChannelLayer) -> None:
    # A message Redis hands to a blocking pop as it is cancelled is lost with the dropped
    # connection (RedisChannelLayer.reader_stop): the next one is sent once no pop waits.
    async with asyncio.timeout(5):
        while (await layer.connection(0).info("clients"))["blocked_clients"]:
            await asyncio.sleep(0.01)


def test_the_application_waits_with_asyncio_timeout_never_wait_for():
    # asyncio.wait_for loses a cancel on Python 3.11 (see connector.relay.redis_connections):
    # a consumer or a loop cancelled at the wrong moment would go on. asyncio.timeout does not.
    found = []
    for package in ("accounts", "connector", "portal"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                attribute = (
                    isinstance(node, ast.Attribute)
                    and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "asyncio"
                )
                imported = (
                    isinstance(node, ast.ImportFrom)
                    and node.module == "asyncio"
                    and any(alias.name == "wait_for" for alias in node.names)
                )
                if attribute or imported:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
