"""The relay's channel layer (connector.relay.redis_layer.RedisChannelLayer) on a redis-server of its own:
its batched receive delivers every message to its socket's channel, in order, takes a
burst in a few round trips instead of one per message, and loses nothing when a receive
is cancelled after taking a batch. (Redis restarts: test_redis_restart.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.exceptions
from channels.exceptions import ChannelFull

from connector.relay.broker import LayerUnavailable
from connector.relay.redis_layer import RECEIVE_BATCH, RedisChannelLayer
from connector.relay.redis_scripts import SCRIPT_SHAS
from tests.live import REDIS_SERVER, run_bounded

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")


@asynccontextmanager
async def two_layers(url: str) -> AsyncIterator[tuple[RedisChannelLayer, RedisChannelLayer]]:
    """A sending and a receiving process's layers, as the settings configure them."""
    sender, receiver = (RedisChannelLayer(hosts=[{"address": url}], capacity=1000, expiry=60) for _ in range(2))
    try:
        # The scripts loaded, as after a first use (EVAL); the receiver's reader task starts
        # with its first receive, so that a test can queue messages before it reads.
        for script in SCRIPT_SHAS:
            await sender.connection(0).script_load(script)
        yield sender, receiver
    finally:
        await sender.close_pools()
        await receiver.close_pools()


def counting_pops(receiver: RedisChannelLayer) -> list[int]:
    """Record the size of each batch the receiver takes off Redis."""
    sizes: list[int] = []
    original = receiver._pop_batch

    async def pop_batch(index: int, channel_key: str) -> list[bytes]:
        members = await original(index, channel_key)
        if members:
            sizes.append(len(members))
        return members

    receiver._pop_batch = pop_batch
    return sizes


def test_a_burst_for_many_sockets_arrives_in_order_in_a_few_round_trips(redis_url):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channels = [await receiver.new_channel() for _ in range(5)]
            total = 3 * RECEIVE_BATCH
            for n in range(total):
                await sender.send(channels[n % 5], {"type": "frame", "n": n})
            batches = counting_pops(receiver)
            received: dict[str, list[int]] = {channel: [] for channel in channels}

            async def read(channel: str) -> None:
                for _ in range(total // 5):
                    received[channel].append((await receiver.receive(channel))["n"])

            await asyncio.gather(*(read(channel) for channel in channels))
            assert received == {channel: list(range(i, total, 5)) for i, channel in enumerate(channels)}
            assert sum(batches) == total
            assert len(batches) <= 6, batches  # one message per round trip would be 300

    run_bounded(scenario(), timeout=60)


def breaking_eval(
    monkeypatch, layer: RedisChannelLayer, channel: str, *, error: BaseException, after: bool, call: int = 1
) -> list:
    """The layer's `call`-th script run fails with `error`, raised after Redis ran it (the
    answer was lost) or before (it never arrived); the others run as usual. Returns the
    list of runs."""
    connection = layer.connection(layer.consistent_hash(channel))
    real_eval = connection.evalsha
    runs: list = []

    async def eval_broken_once(*args):
        runs.append(args)
        if len(runs) != call:
            return await real_eval(*args)
        if after:
            await real_eval(*args)
        raise error

    monkeypatch.setattr(connection, "evalsha", eval_broken_once)
    return runs


async def nothing_more(layer: RedisChannelLayer, channel: str) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.5)


def test_a_batch_whose_reader_was_cancelled_as_redis_answered_is_received_once(redis_url, monkeypatch):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            for n in range(3):
                await sender.send(channel, {"type": "frame", "n": n})
            # The reader is cancelled (the process stops its layer) while it waits for the
            # batch Redis has just taken: the batch is in the backup queue only.
            breaking_eval(monkeypatch, receiver, channel, error=asyncio.CancelledError(), after=True)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(receiver.receive(channel), 0.5)
            # The next receive starts a new reader, whose first take puts the batch back.
            assert [(await receiver.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]
            await nothing_more(receiver, channel)

    run_bounded(scenario(), timeout=60)


def test_a_buffered_batch_is_not_received_again_after_a_failed_take(redis_url, monkeypatch):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            for n in range(3):
                await sender.send(channel, {"type": "frame", "n": n})
            # The reader's first take gets the batch; its second never reaches Redis; the
            # third must drop, not restore, the batch already buffered.
            runs = breaking_eval(
                monkeypatch, receiver, channel, error=redis.exceptions.ConnectionError("refused"), after=False, call=2
            )
            assert [(await receiver.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]
            await nothing_more(receiver, channel)
            assert len(runs) >= 3
            await sender.send(channel, {"type": "frame", "n": 3})
            assert (await receiver.receive(channel))["n"] == 3

    run_bounded(scenario(), timeout=60)


def test_a_receive_waits_for_the_next_message_when_nothing_is_queued(redis_url):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            waiting = asyncio.ensure_future(receiver.receive(channel))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await sender.send(channel, {"type": "frame", "n": 1})
            assert (await asyncio.wait_for(waiting, 10))["n"] == 1

    run_bounded(scenario(), timeout=60)


def test_closing_the_pools_stops_the_reader_first_and_a_later_receive_starts_a_new_one(redis_url):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            await nothing_more(receiver, channel)  # the reader now waits in a blocking pop
            (reader,) = receiver._readers.values()
            pool = receiver.connection(0).connection_pool
            reader_done_at_close: list[bool] = []
            close = pool.aclose

            async def aclose() -> None:
                reader_done_at_close.append(reader.done())
                await close()

            pool.aclose = aclose

            await asyncio.wait_for(receiver.close_pools(), 10)

            assert reader_done_at_close == [True]  # gone before its connection's pool closed
            assert reader.cancelled()
            await sender.send(channel, {"type": "frame", "n": 1})
            assert (await asyncio.wait_for(receiver.receive(channel), 10))["n"] == 1

    run_bounded(scenario(), timeout=60)


def test_a_send_whose_connection_broke_after_queueing_is_not_queued_twice(redis_url, monkeypatch):
    # The reply to the queueing script is lost: the send tries again, and the script knows
    # the send by its id. A payment request must not reach a terminal twice.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            real_execute = sender._execute_sends
            calls, received = [], []

            async def execute_then_break(connection, batch):
                calls.append(len(batch))
                results = await real_execute(connection, batch)
                if len(calls) == 1:
                    # Received before the sender hears anything: Redis no longer holds it.
                    received.append(await receiver.receive(channel))
                    raise redis.exceptions.ConnectionError("Connection closed by server.")
                return results

            monkeypatch.setattr(sender, "_execute_sends", execute_then_break)
            await sender.send(channel, {"type": "frame", "n": 1})
            assert len(calls) == 2
            assert [message["n"] for message in received] == [1]
            await nothing_more(receiver, channel)

    run_bounded(scenario(), timeout=60)


def test_a_send_past_the_capacity_is_refused(redis_url):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            sender.capacity = 3
            channel = await receiver.new_channel()
            for n in range(3):
                await sender.send(channel, {"type": "frame", "n": n})
            with pytest.raises(ChannelFull):
                await sender.send(channel, {"type": "frame", "n": 3})
            assert [(await receiver.receive(channel))["n"] for _ in range(3)] == [0, 1, 2]

    run_bounded(scenario(), timeout=60)


def test_the_scripts_are_loaded_again_when_redis_forgot_them(redis_url):
    # A restarted Redis has no scripts: EVALSHA fails with NOSCRIPT and the layer runs EVAL.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            await sender.connection(0).script_flush()
            await sender.send(channel, {"type": "frame", "n": 1})
            assert (await receiver.receive(channel))["n"] == 1
            # The reader ran its script again before it waited for this one.
            await sender.send(channel, {"type": "frame", "n": 2})
            assert (await receiver.receive(channel))["n"] == 2
            await receiver.group_add("cc.session.s1", channel)
            await sender.group_send("cc.session.s1", {"type": "frame", "n": 3})
            assert (await receiver.receive(channel))["n"] == 3
            assert await sender.connection(0).script_exists(*SCRIPT_SHAS.values()) == [True] * len(SCRIPT_SHAS)

    run_bounded(scenario(), timeout=60)


def test_sends_made_together_share_a_round_trip_and_keep_each_senders_order(redis_url, monkeypatch):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channels = [await receiver.new_channel() for _ in range(5)]
            real_execute = sender._execute_sends
            pipelines = []

            async def counting_execute(connection, batch):
                pipelines.append(len(batch))
                return await real_execute(connection, batch)

            monkeypatch.setattr(sender, "_execute_sends", counting_execute)

            async def one_socket(channel: str) -> None:  # each frame awaited, as a consumer does
                for n in range(40):
                    await sender.send(channel, {"type": "frame", "n": n})

            await asyncio.gather(*(one_socket(channel) for channel in channels))
            assert sum(pipelines) == 200
            assert len(pipelines) <= 60, pipelines  # 200 round trips one by one
            for channel in channels:
                assert [(await receiver.receive(channel))["n"] for _ in range(40)] == list(range(40))

    run_bounded(scenario(), timeout=60)


def test_sends_whose_senders_were_all_cancelled_before_the_round_trip_leave_the_sending_task_well(redis_url):
    # A consumer whose socket closed is cancelled while its send waits in the outbox: the
    # sending task found nothing left to send and died on it (min() of nothing).
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            sends = [asyncio.create_task(sender.send(channel, {"type": "frame", "n": n})) for n in range(3)]
            await asyncio.sleep(0)  # each queued its message; the sending task starts next
            for send in sends:
                send.cancel()
            (flusher,) = sender._flushers.values()
            await asyncio.gather(flusher, *sends, return_exceptions=True)
            assert flusher.exception() is None
            await sender.send(channel, {"type": "frame", "n": 3})
            assert (await receiver.receive(channel))["n"] == 3

    run_bounded(scenario(), timeout=60)


def test_an_unreadable_message_is_dropped_alone(redis_url):
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            await sender.send(channel, {"type": "frame", "n": 1})
            key = receiver.prefix + receiver.non_local_name(channel)
            await sender.connection(0).zadd(key, {b"not msgpack at all": time.time()})
            await sender.send(channel, {"type": "frame", "n": 2})
            assert [(await receiver.receive(channel))["n"] for _ in range(2)] == [1, 2]

    run_bounded(scenario(), timeout=60)


def test_a_send_to_a_redis_that_stopped_answering_gives_up_after_the_send_wait(redis_url, monkeypatch):
    # Connections open, no answer: the send must not wait for the 15 s socket timeout.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()

            async def never_answers(connection, batch):
                await asyncio.sleep(3600)

            monkeypatch.setattr(sender, "_execute_sends", never_answers)
            with pytest.raises(LayerUnavailable):  # after SEND_WAIT (3 s), not never
                await sender.send(channel, {"type": "frame", "n": 1})

    run_bounded(scenario(), timeout=30)


def test_group_add_writes_the_stock_layout_in_one_round_trip_and_group_send_reaches_the_member(redis_url):
    # group_add is one script (zadd and expire in one round trip); the stock group_send and
    # group_discard of the other process must read what it wrote.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            await receiver.group_add("cc.session.s1", channel)
            key = receiver._group_key("cc.session.s1")
            redis = receiver.connection(0)
            assert await redis.zrange(key, 0, -1) == [channel.encode()]
            assert 0 < await redis.ttl(key) <= receiver.group_expiry
            await sender.group_send("cc.session.s1", {"type": "session.end", "n": 1})
            assert (await receiver.receive(channel))["n"] == 1
            await sender.group_discard("cc.session.s1", channel)
            assert await redis.zrange(key, 0, -1) == []

    run_bounded(scenario(), timeout=20)


def test_discard_groups_leaves_many_groups_in_a_few_round_trips(redis_url):
    # A process shutting down leaves every group of its sockets at once (relay.shutdown).
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channels = [await receiver.new_channel() for _ in range(3)]
            memberships = [(f"cc.session.s{i}", channel) for i in range(1500) for channel in channels[:1]]
            memberships += [("cc.session.shared", channel) for channel in channels]
            assert await receiver.restore_groups(memberships)
            redis = receiver.connection(0)
            pipelines = []
            real_pipeline = redis.pipeline

            def counting_pipeline(*args, **kwargs):
                pipelines.append(1)
                return real_pipeline(*args, **kwargs)

            redis.pipeline = counting_pipeline
            assert await receiver.discard_groups(memberships[:-1])  # all but one member of "shared"
            assert len(pipelines) == 2  # 1,502 memberships: two chunks of at most a thousand
            assert await redis.zrange(receiver._group_key("cc.session.s7"), 0, -1) == []
            assert await redis.zrange(receiver._group_key("cc.session.shared"), 0, -1) == [channels[2].encode()]

    run_bounded(scenario(), timeout=30)


def test_group_sends_together_reach_every_member_in_order_in_two_round_trips(redis_url, monkeypatch):
    # A terminal coming online tells its holder's listeners and three presence groups, most of
    # them empty: group_send_many reads every group's members in one script and queues every
    # message in another, keeping the order each socket sees; one script when nobody listens.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            first, second, third = [await receiver.new_channel() for _ in range(3)]
            await receiver.group_add("cc.store.1", first)
            await receiver.group_add("cc.store.1", second)
            await receiver.group_add("cc.ma.1", second)
            await receiver.group_add("cc.listener.7", third)
            scripts: list[str] = []
            import connector.relay.redis_layer as layer_module

            real_run_script = layer_module.run_script

            async def counting(connection, script, *args):
                scripts.append(script)
                return await real_run_script(connection, script, *args)

            monkeypatch.setattr(layer_module, "run_script", counting)
            await sender.group_send_many(
                [
                    ("cc.listener.7", {"type": "event", "n": 1}),
                    ("cc.store.1", {"type": "event", "n": 2}),
                    ("cc.merchant.1", {"type": "event", "n": 3}),  # nobody
                    ("cc.ma.1", {"type": "event", "n": 4}),
                    ("cc.store.1", {"type": "event", "n": 5}),
                ]
            )
            assert len(scripts) == 2
            assert [(await receiver.receive(first))["n"] for _ in range(2)] == [2, 5]
            assert [(await receiver.receive(second))["n"] for _ in range(3)] == [2, 4, 5]
            assert (await receiver.receive(third))["n"] == 1
            scripts.clear()
            await sender.group_send_many([("cc.nobody.1", {"type": "event"}), ("cc.nobody.2", {"type": "event"})])
            assert len(scripts) == 1

    run_bounded(scenario(), timeout=30)


def test_a_group_message_for_a_channel_at_capacity_is_skipped_for_it_alone(redis_url):
    # As channels_redis's group_send: a full channel misses the message, nothing is raised, the
    # group's other members get it.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            sender.capacity = 2
            full = await receiver.new_channel()
            other = RedisChannelLayer(hosts=[{"address": redis_url}], capacity=1000, expiry=60)
            try:
                # Another process's queue, so that the two members' capacities are counted apart.
                free = await other.new_channel()
                await receiver.group_add("cc.session.s1", full)
                await receiver.group_add("cc.session.s1", free)
                for n in range(2):
                    await sender.send(full, {"type": "frame", "n": n})
                await sender.group_send("cc.session.s1", {"type": "session.end", "n": 9})
                assert [(await receiver.receive(full))["n"] for _ in range(2)] == [0, 1]
                assert (await other.receive(free))["n"] == 9
                # Nothing more for the full one: the group message was skipped for it.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(receiver.receive(full), 0.5)
            finally:
                await other.close_pools()

    run_bounded(scenario(), timeout=30)


def test_a_socket_buffer_keeps_order_drops_the_oldest_at_capacity_and_wakes_its_reader():
    from connector.relay.socket_buffers import SocketQueue

    async def scenario() -> None:
        buffer = SocketQueue(3)
        assert buffer.empty() and buffer.items is None  # an idle socket's buffer holds no deque
        reader = asyncio.create_task(buffer.get())
        await asyncio.sleep(0)
        buffer.put_nowait("first")
        assert await asyncio.wait_for(reader, 1) == "first"
        for n in range(5):
            buffer.put_nowait(n)
        assert [await buffer.get() for _ in range(3)] == [2, 3, 4]  # 0 and 1 went at capacity 3
        assert buffer.empty() and buffer.items is None and buffer.waiter is None
        # A reader cancelled while waiting leaves nothing behind, and the next one gets the message.
        cancelled = asyncio.create_task(buffer.get())
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert buffer.waiter is None
        buffer.put_nowait("next")
        assert await buffer.get() == "next"

    run_bounded(scenario(), timeout=10)


def test_a_message_for_a_socket_that_closed_is_dropped_not_buffered_for_nobody(redis_url):
    # A closed socket's consumer tells the layer (channel_closed); a relayed frame or an event
    # already on its way to it must not leave a buffer behind that nobody reads or frees.
    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            open_one, closed_one = await receiver.new_channel(), await receiver.new_channel()
            waiting = asyncio.create_task(receiver.receive(closed_one))
            await asyncio.sleep(0.05)
            waiting.cancel()  # as connector.consumers.base does when the socket closes
            with pytest.raises(asyncio.CancelledError):
                await waiting
            receiver.channel_closed(closed_one)
            await sender.send(closed_one, {"type": "frame", "n": 1})
            await receiver.group_add("cc.session.s1", closed_one)
            await receiver.group_add("cc.session.s1", open_one)
            await sender.group_send("cc.session.s1", {"type": "session.end", "n": 2})
            assert (await receiver.receive(open_one))["n"] == 2  # read after the closed one's frame
            assert closed_one not in receiver.buffers.queues

    run_bounded(scenario(), timeout=30)


def test_group_events_sent_together_are_sent_one_by_one_when_the_batch_fails(redis_url, monkeypatch):
    # connector.groups.deliver hands consecutive group events to group_send_many; if that
    # fails, each event is tried on its own, as before the batching.
    from connector import groups

    async def scenario() -> None:
        async with two_layers(redis_url) as (sender, receiver):
            channel = await receiver.new_channel()
            await receiver.group_add("cc.store.1", channel)
            await receiver.group_add("cc.ma.1", channel)

            real, calls = sender._group_send_many, []

            async def broken_once(sends):
                calls.append(len(sends))
                if len(calls) == 1:
                    raise ConnectionError("a pooled connection that died with the last outage")
                await real(sends)

            monkeypatch.setattr(sender, "_group_send_many", broken_once)
            monkeypatch.setattr(groups, "get_channel_layer", lambda: sender)
            await groups.deliver([("cc.store.1", {"type": "event", "n": 1}), ("cc.ma.1", {"type": "event", "n": 2})])
            assert [(await receiver.receive(channel))["n"] for _ in range(2)] == [1, 2]
            assert calls == [2, 1, 1]  # the batch, then each event on its own

    run_bounded(scenario(), timeout=30)
