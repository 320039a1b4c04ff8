"""The relay's channel layer on Redis (a connector.relay.broker.Broker): channels_redis's
`RedisChannelLayer`, made to ride out a Redis restart without closing a socket, and faster
on the frame path. portal/settings.py names it when REDIS_URL is set.

Redis restarts: while Redis is away, frames between peers of one process flow as ever
(they do not use the layer); a frame for another process waits up to `SEND_WAIT` for Redis
and is sent then, never twice (each send carries an id the queueing script records), or
is not delivered (LayerUnavailable); one queued in Redis when it died is lost with it.
When Redis answers again, connector.relay.recovery puts the sockets back in their groups.

What it relies on in channels_redis 4.3 beyond its public methods and attributes
(`connection`, `consistent_hash`, `non_local_name`, `serialize`, `get_capacity`, `prefix`,
`expiry`...), pinned by tests/test_private_internals.py: `_group_key` (a group's key, to
add memberships in one round trip: `group_add`, `restore_groups`, and to read members:
`group_send_many`), `_map_channel_keys_to_connection` (a group message's payload per
queue, `group_send_many`), `create_pool(index)` (its pools' connections made cancel-safe:
connector.relay.redis_connections), and the overrides of `_brpop_with_clean` and
`_clean_receive_backup`, through which the library's own receive (for channels that are not
process-specific, which the relay never uses) also rides out an outage.

The sockets' receive buffers, which the reader fills, are connector.relay.socket_buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as StockRedisChannelLayer
from redis.asyncio.connection import ConnectionPool

from connector import metrics
from connector.relay.broker import Broker, LayerUnavailable
from connector.relay.redis_connections import cancel_safe_pool
from connector.relay.redis_scripts import (
    GROUP_ADD_SCRIPT,
    GROUP_MEMBERS_SCRIPT,
    GROUP_SEND_SCRIPT,
    POP_BATCH_SCRIPT,
    SCRIPT_SHAS,
    SEND_SCRIPT,
    run_script,
)
from connector.relay.socket_buffers import SocketBuffers
from connector.relay.tasks import task_of_loop

logger = logging.getLogger(__name__)

# What a Redis that restarts, is unreachable, is still loading or was demoted to a replica
# raises. Treated alike: wait for it, never kill a socket over it.
REDIS_DOWN = (redis.exceptions.RedisError, OSError)
PROBE_MAX_DELAY = 0.5  # seconds between PINGs while Redis is down, at most
RECEIVE_MAX_PAUSE = 1.0  # a receive that keeps failing while PING answers waits this long at most
SEND_WAIT = 3.0  # how long a send waits for a Redis known to be down before giving up
SEND_ID_SECONDS = 10  # how long a send's id is kept against a repeat: longer than SEND_WAIT
RECEIVE_BATCH = 100  # messages one receive round trip takes off this process's channel, at most
MARKER_TTL = 3600  # the per-process marker key (see RedisChannelLayer.state_lost)


@dataclass(eq=False)
class Outgoing:
    """One message on its way to Redis (RedisChannelLayer.send)."""

    channel_key: str
    send_id: str
    payload: bytes
    capacity: int
    deadline: float  # loop time
    future: asyncio.Future

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class UnreadableMessages(Exception):
    """Every message of a batch was unreadable (each was logged and dropped)."""


class RedisChannelLayer(StockRedisChannelLayer):
    """channels_redis's layer, made to ride out a Redis restart without closing a socket (a
    connector.relay.broker.Broker).

    channels_redis 4.3 raises Redis's ConnectionError out of `receive()` into the consumer
    that holds the process's receive lock, then into each of the others as it takes the lock
    over: every socket of the process dies (clients see 1011, the log gets a traceback per
    socket); and `group_discard` raises before a consumer's disconnect handler runs, so a
    socket closed during an outage left its database row behind. Here:

    - receive waits for Redis to answer PING again (one probe per event loop, shared) and
      carries on; a frame queued in Redis when it died is lost with it.
    - send waits up to SEND_WAIT for Redis and tries again; a try that queued the message
      before the connection broke is recognised by its send id and not repeated (a payment
      request must not reach a terminal twice). Past SEND_WAIT, or if Redis refuses the
      script outright, it raises LayerUnavailable.
    - group_add and group_discard never raise for an outage (recovery puts memberships back);
      group_send raises as before (its callers log it).
    - Every failure flags `recovery_needed`; when Redis answers again, `when_back` (the
      relay's recovery, connector.relay.recovery.schedule_recovery) puts this process's
      sockets back in their groups (a Redis without persistence restarts empty) and catches
      them up on the control events they missed.
    """

    when_back: Callable[[Broker], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recovery_needed = False
        self.down_since: float | None = None
        self._probes: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
        self._marked: set[int] = set()
        self._receive_pause = 0.05
        self._readers: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}
        self._outboxes: dict[tuple[asyncio.AbstractEventLoop, int], list[Outgoing]] = {}
        self._flushers: dict[tuple[asyncio.AbstractEventLoop, int], asyncio.Task] = {}
        self._last_score = 0.0
        self._batch_generations = itertools.count(1)
        self._buffered_generation: dict[str, str] = {}
        # This process's sockets' receive buffers (the library keeps its own, `receive_buffer`,
        # for its own receive, which this layer's replaces for process-specific channels).
        self.buffers = SocketBuffers(capacity=self.capacity, forget_after=2 * self.expiry)
        self._send_indexes = itertools.cycle(range(self.ring_size))  # hosts for plain channels, in turn

    def create_pool(self, index: int) -> ConnectionPool:
        # A cancel that lands while a command is sent must stop the task (the reader loops).
        return cancel_safe_pool(super().create_pool(index))

    # -- outage bookkeeping

    def went_down(self, error: BaseException, doing: str) -> None:
        """Note an outage (every handler of a Redis error calls this first). Raises
        CancelledError if the task is being cancelled: redis-py may report a cancelled command
        as a connection error, and swallowing it would keep a cancelled task running forever."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError() from error
        self.recovery_needed = True
        if self.down_since is None:
            self.down_since = time.monotonic()
            metrics.redis.went_down()
            logger.warning(
                "Redis unreachable (%s: %s): sockets stay open; frames between processes and control "
                "events wait for it",
                doing,
                error,
            )

    def came_back(self) -> None:
        if self.down_since is not None:
            logger.warning("Redis answers again after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
            metrics.redis.came_back()

    async def reachable(self) -> None:
        """Return once every Redis host answers PING."""
        probe = task_of_loop(self._probes, self._probe, "cloud-connector-redis-probe")
        await asyncio.shield(probe)  # a waiter that gives up must not stop the others' probe

    async def _probe(self) -> None:
        delay = 0.05
        while True:
            try:
                for index in range(self.ring_size):
                    await self.connection(index).ping()
                break
            except REDIS_DOWN as error:
                self.went_down(error, "probe")
                await asyncio.sleep(delay)
                delay = min(delay * 2, PROBE_MAX_DELAY)
        for index in range(self.ring_size):
            # Connections opened before the outage look idle but are dead: the next command on
            # each would fail once (a POS frame closed with 4503 after Redis was back). Drop
            # them; the pool opens new ones.
            await self.connection(index).connection_pool.disconnect(inuse_connections=False)
        if self.recovery_needed and self.when_back is not None:
            self.when_back(self)

    # -- the channel layer API

    async def _brpop_with_clean(self, index: int, channel: str, timeout: int) -> Any:
        # channels_redis's receive loop asks again whenever this returns None ("nothing yet").
        try:
            member = await super()._brpop_with_clean(index, channel, timeout)
        except REDIS_DOWN as error:
            await self._receive_failed(error)
            return None
        self._receive_pause = 0.05
        self.came_back()
        return member

    async def receive(self, channel: str) -> dict:
        """channels_redis 4.3's receive for this process's channels (`specific...!xyz`),
        without its receive lock and the two tasks and `asyncio.wait` it makes for every
        message: one reader task per process (`_read`) takes the batches off Redis into the
        sockets' receive buffers, and a socket's receive is one wait on its own buffer."""
        if "!" not in channel:
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        self._ensure_reader(real_channel)
        return await self.buffers.take(channel)

    def _ensure_reader(self, real_channel: str) -> None:
        loop = asyncio.get_running_loop()
        if any(not task.done() and not other.is_closed() for other, task in self._readers.items() if other is not loop):
            # As the library: two readers would race for one process's messages.
            raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
        task_of_loop(self._readers, lambda: self._read(real_channel), "cloud-connector-redis-receive")

    async def _read(self, real_channel: str) -> None:
        while True:
            try:
                target, message = await self.receive_single(real_channel)
            except UnreadableMessages:
                continue
            except Exception:  # noqa: BLE001 - one bad message must not stop every socket's receive
                logger.exception("channel layer: a message could not be received")
                await asyncio.sleep(self._receive_pause)
                continue
            self.buffers.put(target, message)

    def channel_closed(self, channel: str) -> None:
        """The socket of `channel` (this process's) closed (connector.consumers.base): see
        SocketBuffers.closed."""
        self.buffers.closed(channel)

    async def reader_stop(self) -> None:
        """Stop the running loop's reader (a receive starts it again), and return once it let
        go of its connection, which waits in a blocking pop: what a caller does before
        closing the loop or its connections. A message Redis hands to that pop as it is
        cancelled is lost with the dropped connection (as in channels_redis's own receive):
        stop the reader when this process's sockets are done with (close_pools, shutdown)."""
        reader = self._readers.pop(asyncio.get_running_loop(), None)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def close_pools(self) -> None:
        await self.reader_stop()
        for reader in self._readers.values():  # other loops' (the library closes every loop's pools)
            reader.cancel()
        self._readers.clear()
        await super().close_pools()

    async def receive_single(self, channel: str) -> tuple[Any, dict]:
        """channels_redis 4.3's receive_single (the version is pinned), batched for this
        process's own channel: one round trip takes every message queued for the process's
        sockets, up to RECEIVE_BATCH, where the library takes one message per four round
        trips (the cross-process frame path's bottleneck, docs/benchmarks.md). All but the
        last go into their sockets' receive buffers here, in order; the last is returned to
        the caller (`_read`), which buffers it after them, with no pause in between.

        Nothing is lost or delivered twice when a receive is cancelled: the script that
        takes a batch keeps a copy in the backup queue, marked with the batch's generation,
        and the next script is told which generation was buffered. A backup of another
        generation (its taker was cancelled before it could buffer it) goes back to the
        queue; the buffered one is dropped."""
        if "!" not in channel:
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        index = self.consistent_hash(channel)
        channel_key = self.prefix + channel
        members: list[bytes] = []
        while not members:
            members = await self._pop_batch(index, channel_key)
        unpacked = [message for message in (self._unpack(member, channel) for member in members) if message]
        for target, message in unpacked[:-1]:
            self.buffers.put(target, message)
        if not unpacked:
            raise UnreadableMessages()
        return unpacked[-1]

    def _unpack(self, member: bytes, channel: str) -> tuple[Any, dict] | None:
        """The message and its channel; None, logged, for one that cannot be read (it is
        dropped alone, not with the rest of its batch)."""
        try:
            message = self.deserialize(member)
        except Exception:  # noqa: BLE001 - msgpack or the layer's encryption, whatever it raises
            logger.exception("channel layer: an unreadable message was dropped")
            return None
        return message.pop("__asgi_channel__", channel), message

    async def _pop_batch(self, index: int, channel_key: str) -> list[bytes]:
        """What is queued, or else what a blocking pop brings within `brpop_timeout`; [] for
        nothing yet, also while Redis is down. The caller buffers it without a pause."""
        backup = channel_key + "$inflight"  # this script's own backup queue (named as the library's)
        generation = str(next(self._batch_generations))
        connection = self.connection(index)
        try:
            popped = await run_script(
                connection,
                POP_BATCH_SCRIPT,
                3,
                channel_key,
                backup,
                backup + ":generation",
                RECEIVE_BATCH,
                self._buffered_generation.get(channel_key, ""),
                generation,
                int(self.expiry),
            )
            # From here to the caller's buffering nothing pauses: this batch counts as buffered.
            self._buffered_generation[channel_key] = generation
            if not popped:
                # Nothing queued: wait for the next message. Unlike the library, no copy to the
                # backup queue after the pop: that round trip was the only pause between the
                # pop and the buffering (so the only thing the copy protected), and it sat on
                # every frame's path.
                result = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
                popped = [result[1], result[2]] if result is not None else []
        except REDIS_DOWN as error:
            await self._receive_failed(error)
            return []
        self._receive_pause = 0.05
        self.came_back()
        return popped[0::2]

    async def _receive_failed(self, error: BaseException) -> None:
        self.went_down(error, "receive")
        # A pause even when PING answers: a Redis that answers PING but refuses the pop
        # (loading, demoted to a replica) must not make this a busy loop.
        await asyncio.sleep(self._receive_pause)
        self._receive_pause = min(self._receive_pause * 2, RECEIVE_MAX_PAUSE)
        await self.reachable()

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        # The receive lock of the channel is held until this is done, so the backup holds
        # only what the receive that started this took, all of it buffered by now.
        try:
            await self.connection(index).delete(self._backup_channel_name(channel))
        except REDIS_DOWN as error:
            self.went_down(error, "receive")

    async def send(self, channel: str, message: dict) -> None:
        """channels_redis 4.3's send (the version is pinned), as one script that checks the
        capacity and queues the message, where the library takes four round trips. Sends
        made while one is on its way go together in the next pipeline (`_flush`): one
        round trip for all of them.

        A Redis that is down is waited for, up to SEND_WAIT, and the script run again. Every
        run of one send carries the same send id, which the script records for
        SEND_ID_SECONDS, so a run that did queue the message before the connection broke is
        never repeated by the next (a payment request must not reach a terminal twice). A
        Redis that restarted empty forgot the message and the id alike, and is sent it
        again. Raises ChannelFull at capacity, LayerUnavailable past SEND_WAIT or if Redis
        refuses the script."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            channel_non_local_name = self.non_local_name(channel)
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_indexes)
        loop = asyncio.get_running_loop()
        outgoing = Outgoing(
            channel_key=self.prefix + channel_non_local_name,
            send_id=f"{self.prefix}sent:{secrets.token_hex(8)}",
            payload=self.serialize(message),
            capacity=self.get_capacity(channel),
            deadline=loop.time() + SEND_WAIT,
            future=loop.create_future(),
        )
        key = (loop, index)
        self._outboxes.setdefault(key, []).append(outgoing)
        flusher = self._flushers.get(key)
        if flusher is None or flusher.done():
            for stale in [known for known in self._flushers if known[0].is_closed()]:
                del self._flushers[stale], self._outboxes[stale]
            self._flushers[key] = loop.create_task(self._flush(key), name="cloud-connector-redis-send")
        if not await outgoing.future:
            raise ChannelFull()

    async def _flush(self, key: tuple[asyncio.AbstractEventLoop, int]) -> None:
        """Send what is in the outbox, in order, a pipeline at a time, until it is empty."""
        outbox = self._outboxes[key]
        batch: list[Outgoing] = []
        try:
            while outbox:
                now = key[0].time()
                for late in [item for item in outbox if item.deadline <= now]:
                    outbox.remove(late)
                    late.fail(LayerUnavailable("Redis is unreachable"))
                if not outbox:
                    break
                if self.down_since is not None:
                    earliest = min(item.deadline for item in outbox)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(earliest - now):
                            await self.reachable()
                batch, outbox[:] = [item for item in outbox if not item.future.done()], []
                if not batch:
                    continue  # every sender of it was cancelled meanwhile
                try:
                    # Bounded by the earliest deadline: a Redis that stopped answering without
                    # closing its connections must not hold every send of the process for the
                    # socket timeout. Cancelling is safe: the send ids stop doubles.
                    earliest = min(item.deadline for item in batch)
                    async with asyncio.timeout(max(earliest - now, 0.05)):
                        results = await self._execute_sends(self.connection(key[1]), batch)
                except (*REDIS_DOWN, TimeoutError) as error:
                    self.went_down(error, "send")
                    outbox[:0] = batch  # again, in order; the send ids stop doubles
                    await asyncio.sleep(0.05)
                    continue
                self.came_back()
                unloaded = []
                for item, result in zip(batch, results, strict=True):
                    if isinstance(result, redis.exceptions.NoScriptError):
                        unloaded.append(item)  # not run: safe to run once the script is loaded
                    elif isinstance(result, BaseException):
                        # Redis answers but refuses (out of memory, read-only replica): not an
                        # outage to wait out.
                        item.fail(LayerUnavailable(str(result)))
                    elif not item.future.done():
                        item.future.set_result(bool(result))
                batch = []
                if unloaded:
                    outbox[:0] = unloaded
                    with contextlib.suppress(*REDIS_DOWN):
                        await self.connection(key[1]).script_load(SEND_SCRIPT)
        finally:
            for item in [*batch, *outbox]:
                item.fail(LayerUnavailable("the sending task stopped"))
            outbox.clear()

    async def _execute_sends(self, connection: Any, batch: list[Outgoing]) -> list[Any]:
        """One pipeline of SEND_SCRIPT runs; each result is 1, 0 (at capacity) or an error."""
        pipe = connection.pipeline(transaction=False)
        score = time.time()
        for item in batch:
            # Strictly increasing scores: Redis orders equal scores by the payload's bytes.
            score = self._last_score = max(score, self._last_score + 1e-6)
            pipe.evalsha(
                SCRIPT_SHAS[SEND_SCRIPT],
                2,
                item.channel_key,
                item.send_id,
                int(score) - int(self.expiry),
                item.capacity,
                item.payload,
                score,
                int(self.expiry),
                SEND_ID_SECONDS,
            )
        return await pipe.execute(raise_on_error=False)

    async def group_add(self, group: str, channel: str) -> None:
        """channels_redis's group_add (zadd, then expire) as one script (GROUP_ADD_SCRIPT)
        instead of two round trips: every socket joins its groups on connect, and a fleet
        reconnecting after a restart does it thousands of times a second."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        connection = self.connection(self.consistent_hash(group))
        try:
            await run_script(
                connection, GROUP_ADD_SCRIPT, 1, self._group_key(group), time.time(), channel, self.group_expiry
            )
        except REDIS_DOWN as error:
            self.went_down(error, "group_add")  # recovery adds it once Redis is back

    async def group_discard(self, group: str, channel: str) -> None:
        try:
            await super().group_discard(group, channel)
        except REDIS_DOWN as error:
            self.went_down(error, "group_discard")  # a restarted Redis forgot it; else it expires

    async def group_send(self, group: str, message: dict) -> None:
        await self.group_send_many([(group, message)])

    async def group_send_many(self, sends: list[tuple[str, dict]]) -> None:
        """channels_redis's group_send for several (group, message) pairs, in order, in two
        round trips per Redis host for all of them (GROUP_MEMBERS_SCRIPT reads every group's
        members, GROUP_SEND_SCRIPT queues every message), and one when no group has a
        member. The library takes two per group and two more per group with members: a
        terminal coming online tells four groups (its claim holder's listeners and the
        store's, merchant's and MA's presence subscribers), most of them empty.

        Same semantics as the library's: a channel at capacity misses the message (logged),
        nothing is raised for it; a Redis that is down raises (after `went_down`)."""
        try:
            await self._group_send_many(sends)
        except REDIS_DOWN as error:
            self.went_down(error, "group_send")
            raise

    async def _group_send_many(self, sends: list[tuple[str, dict]]) -> None:
        by_host: dict[int, list[str]] = defaultdict(list)
        for group in dict.fromkeys(group for group, _message in sends):
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(group)
        members: dict[str, list[str]] = {}
        cutoff = int(time.time()) - self.group_expiry
        for index, names in by_host.items():
            keys = [self._group_key(name) for name in names]
            answers = await run_script(self.connection(index), GROUP_MEMBERS_SCRIPT, len(keys), *keys, cutoff)
            for name, channels in zip(names, answers, strict=True):
                members[name] = [channel.decode("utf8") for channel in channels]
        queued: dict[int, list[tuple[bytes, bytes, int]]] = defaultdict(list)
        for group, message in sends:
            if not members[group]:
                continue
            keys_by_host, payloads, capacities = self._map_channel_keys_to_connection(members[group], message)
            for index, keys in keys_by_host.items():
                queued[index].extend((key, payloads[key], capacities[key]) for key in keys)
        for index, items in queued.items():
            arguments: list[Any] = []
            score = time.time()
            for _key, payload, capacity in items:
                # Strictly increasing, as for `send`: Redis orders equal scores by the bytes.
                score = self._last_score = max(score, self._last_score + 1e-6)
                arguments += [payload, capacity, score]
            arguments += [int(score) - int(self.expiry), int(self.expiry)]
            keys = [key for key, _payload, _capacity in items]
            over = await run_script(self.connection(index), GROUP_SEND_SCRIPT, len(keys), *keys, *arguments)
            if over:
                logger.info("%s group messages skipped: their channels were at capacity", over)

    # -- recovery

    async def restore_groups(self, memberships: list[tuple[str, str]]) -> bool:
        """Add (group, channel) pairs as group_add does, pipelined; False if Redis failed."""
        by_host: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for group, channel in memberships:
            by_host[self.consistent_hash(group)].append((group, channel))
        now = time.time()
        try:
            for index, pairs in by_host.items():
                for start in range(0, len(pairs), 1000):
                    pipe = self.connection(index).pipeline(transaction=False)
                    for group, channel in pairs[start : start + 1000]:
                        key = self._group_key(group)
                        pipe.zadd(key, {channel: now})
                        pipe.expire(key, self.group_expiry)
                    await pipe.execute()
        except REDIS_DOWN as error:
            self.went_down(error, "restoring groups")
            return False
        self.came_back()
        return True

    async def discard_groups(self, memberships: list[tuple[str, str]]) -> bool:
        """Remove (group, channel) pairs as group_discard does (ZREM), pipelined per host in
        chunks: one round trip per thousand where a socket each would take one, and no
        connection per socket (a shutdown of thousands would exhaust the pool)."""
        by_host: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for group, channel in memberships:
            by_host[self.consistent_hash(group)].append((group, channel))
        try:
            for index, pairs in by_host.items():
                for start in range(0, len(pairs), 1000):
                    pipe = self.connection(index).pipeline(transaction=False)
                    for group, channel in pairs[start : start + 1000]:
                        pipe.zrem(self._group_key(group), channel)
                    await pipe.execute()
        except REDIS_DOWN as error:
            self.went_down(error, "leaving groups")  # a restarted Redis forgot them; else they expire
            return False
        return True

    async def state_lost(self, node: str) -> bool:
        """Whether Redis lost what it held since the last call (restarted empty, flushed, failed
        over to an empty replica), told by a key of this process's that is set at every call
        and found gone. A restart is also seen by the receive loop; this also catches the rest."""
        key = f"{self.prefix}:cc.node:{node}"
        lost = False
        try:
            for index in range(self.ring_size):
                pipe = self.connection(index).pipeline(transaction=False)
                pipe.exists(key)
                pipe.set(key, b"1", ex=MARKER_TTL)
                existed, _ = await pipe.execute()
                lost = lost or (not existed and index in self._marked)
                self._marked.add(index)
        except REDIS_DOWN as error:
            self.went_down(error, "heartbeat")
            return False
        return lost
