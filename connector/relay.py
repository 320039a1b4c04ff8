"""The frame path, the registry of live sockets of this process, and its housekeeping.

The frame path (a POS frame to the device, a device frame to the POS) does no database
query and no thread hop. Channels 4.2+ runs `aclose_old_connections()` (a hop to a
thread) before every handler; the relay consumers' `dispatch` skips it for
`websocket.receive` and `relay.frame`, which touch no database.

Where the peer is:

- Same process: the registry below maps channel names to live consumers; a frame is
  handed straight to the peer consumer's ASGI `send` (one await, no queue, no copy).
- Another process: a direct `channel_layer.send` to the peer's channel name (never
  `group_send`); the receiving consumer writes it to its socket.
- Each consumer caches its peer's channel name. It learns it when it attaches (from the
  `SessionSocket` rows) and from the session group's `peer.attached` / `peer.detached`
  events, which follow every connect, reconnect, replacement, claim, release and
  takeover, because each of those attaches or detaches a socket. Since a socket joins
  the session group before it writes and reads the rows, either it reads its peer's row
  or it receives the peer's event: never neither.

Ordering: frames of one socket are handled one at a time by its consumer and each is
sent before the next is read, so order holds per direction and endpoint on both paths
(the channel layer keeps the order of one sender to one channel). Frames in flight at
the instant a peer vanishes cannot be delivered; on the same process this is detected
and answered (4503 to the POS), across processes a frame sent in the few milliseconds
before the `peer.detached` event arrives is lost, as it would be on a dying TCP link.

Message size: `MAX_MESSAGE_SIZE` (default 1 MiB); a larger message closes its sender with
1009. Under daphne, autobahn checks every incoming message against daphne's own limit
(`--websocket-max-message-size`, default 1 MiB) before the application sees it and, by
default, fails the connection by dropping TCP (the client sees 1006, not 1009); autobahn
also refuses to let an application close with any code but 1000 and 3000-4999 (it fails
the socket with 1011 instead). So `server_socket_tune` sets, per socket, autobahn's limit
to ours and failing to a close frame, and `close_with` sends 1001 and 1009 as close frames
on daphne's protocol object, reached through the ASGI `send` daphne hands over (a
`partial(server.handle_reply, protocol)`); both are feature-detected and do nothing on
other servers. Uvicorn hands every message up to `--ws-max-size` (default 16 MiB) to the
application, which checks `MAX_MESSAGE_SIZE` itself and closes with 1009 through ASGI;
run uvicorn with `--ws-max-size` at least `MAX_MESSAGE_SIZE`. Daphne drops empty frames it
is asked to send (its send path tests the payload's truth), so an empty frame is not
relayed under daphne; it is under uvicorn.

Backpressure (`MAX_SOCKET_BUFFER`, default 4 MiB per socket): neither server bounds what
it holds for a client that does not read. Daphne (Twisted) appends every write to its
transport's buffer, without limit and without telling the application, and keeps it until
the connection ends. Uvicorn (websockets-sansio) makes `send` wait once its transport holds
more than the high-water mark (64 KiB): the wait would fall on the sender's socket (on the
fast path the device's own task) and on the close frame behind it, and its graceful close
waits for the buffer to drain, forever. So each relay socket finds its server's write
buffer at connect (`socket_buffer`; uvicorn's high-water mark raised above the bound, so
that it never makes a relay send wait) and reads its size before each frame written to it
(attribute reads, no system call, no lock). Past the bound the socket is closed, a POS
session socket with 4503 and a device socket with 1013 (try again later), and its TCP
connection is dropped SLOW_CLOSE_GRACE later with the bytes it did not take, which gives the
memory back. The frame that found its peer too slow is not delivered: a device frame is
dropped and counted; a POS frame closes its POS socket with 4503 (its device is gone).
Across processes the receiving socket applies the same bound (`relay_frame`). Between
processes, what waits for one socket is bounded in messages by the channel layer's capacity
(`CHANNEL_LAYER_CAPACITY`, in Redis and in the receiving process's buffer per channel); a
full channel drops device frames and closes the POS with 4503, as above; the receiving
socket never waits on its client, so its channel drains as fast as its process runs.
Incoming frames: uvicorn reads a socket's next message once the application took the last;
daphne reads on, but the relay's consumers never wait on a write, so its queue drains too.

Quotas: a credential may hold `MAX_SESSION_SOCKETS_PER_CREDENTIAL` POS session sockets
(default 256), counted across the deployment from the `SessionSocket` rows at attach
(sessions.pos_socket_attach), and `MAX_LISTENERS_PER_CREDENTIAL` pos-listener sockets
(default 20) per process, counted in the registry below: listener sockets have no rows,
and a shared count would need its own writes at every connect and its own sweep after a
process dies. Past either, a new socket is accepted and closed with 4429.

Liveness (§8, "a socket that answers no ping within 30 s is closed"): ASGI gives an
application no ping, so the servers do it. Daphne pings a socket after `--ping-interval`
seconds without a frame from it (default 20, checked every 2 s) and autobahn drops it when
no pong comes within its ping timeout: daphne's `--ping-timeout` (default 30), which
`server_socket_tune` sets per socket to `PING_TIMEOUT` (default 30). Uvicorn pings every
`--ws-ping-interval` (default 20) and closes after `--ws-ping-timeout` (default 20, which
is stricter than the contract and may close a slow but live client): run it with
`--ws-ping-interval 10 --ws-ping-timeout 30` (`PING_INTERVAL`, `PING_TIMEOUT`). A process
that dies without closing its sockets is caught by the heartbeat below: its sockets are
forgotten after `NODE_TIMEOUT` (default 30 s) and their sessions go offline.

Shutdown (§8, "the server closes sockets with 1001"): on SIGTERM daphne stops its
reactor and drops connections without a close frame (clients see 1006), and uvicorn
closes them with 1012. The relay therefore chains its own SIGTERM/SIGINT handler in
front of the server's (installed with the first socket of the process): it closes every
socket of the process with 1001, flushes the frame counters, forgets this node's
sockets, waits up to `SHUTDOWN_GRACE` seconds (default 2) for the closes to finish, then
hands the signal to the server's own handler.

Heartbeat: every `SWEEP_INTERVAL` seconds (default 5) the process records itself in
`NodeHeartbeat` and runs `sessions.sessions_sweep`. If it finds its own heartbeat row gone
(it stalled past `NODE_TIMEOUT` and another node swept its rows), it writes the rows of its
live sockets again instead of serving sockets nobody can find.

Counters: frames relayed and dropped are counted in memory per session and added to the
`DeviceSession` rows every `COUNTER_FLUSH_INTERVAL` seconds and when a socket closes.

Redis restarts (`RedisChannelLayer` below, which the settings must name): no socket is
closed. While Redis is away, frames between peers of one process flow as ever; a frame for
another process waits up to `SEND_WAIT` for Redis and is sent then, never twice (each send
carries an id the queueing script records). A frame that cannot be sent by then is not
delivered: a POS frame closes its socket with 4503, a device frame is dropped and counted;
one queued in Redis when it died is lost with it. Connects and disconnects still
work, but control events (closes, peer changes, POS events) cannot be sent. When Redis
answers again (each process probes it), every process puts its sockets back in their groups,
which a Redis without persistence forgot, and replays to its relay sockets what they missed,
from the database: a session ended meanwhile closes with 4410, a socket replaced meanwhile
with 4409, a claim taken over with 4409 or released with 1000, and a peer that came or went
is learnt; POS sockets whose token was revoked meanwhile close (4410, 4401), and each
pos-listener socket hears `device_online`/`device_offline` for the claims whose state changed
since its last such event. The heartbeat also notices a Redis that lost its data without
dropping connections (a marker key gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import itertools
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer as StockRedisChannelLayer

from connector import sessions

logger = logging.getLogger(__name__)

NODE = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"

# Tests turn this off to drive the cross-process path (channel layer) within one process.
local_fast_path = True


class RelaySocket(Protocol):
    """What the relay needs from a consumer holding a socket."""

    channel_name: str
    session_id: str | None
    closed: bool

    async def base_send(self, message: dict[str, Any]) -> None: ...

    async def send_frame(self, message: dict[str, Any]) -> bool: ...

    async def close_socket(self, code: int) -> None: ...


class Counter:
    __slots__ = ("relayed", "dropped")

    def __init__(self) -> None:
        self.relayed = 0
        self.dropped = 0


class Registry:
    """The live sockets of this process, by channel name, and their sessions' counters."""

    def __init__(self) -> None:
        self.sockets: dict[str, RelaySocket] = {}
        self.counters: dict[str, Counter] = {}
        # The pos-listener sockets of this process by credential (application id).
        self.listeners: defaultdict[int, set[str]] = defaultdict(set)
        self.shutting_down = False

    def add(self, sock: RelaySocket) -> None:
        self.sockets[sock.channel_name] = sock
        ensure_housekeeping()

    def remove(self, sock: RelaySocket) -> None:
        if self.sockets.get(sock.channel_name) is sock:
            del self.sockets[sock.channel_name]
        listening_for = getattr(sock, "listening_for", None)
        if listening_for is not None:
            held = self.listeners.get(listening_for)
            if held is not None:
                held.discard(sock.channel_name)
                if not held:
                    del self.listeners[listening_for]

    def listener_admit(self, sock: RelaySocket, *, application_id: int, limit: int) -> bool:
        """Count a pos-listener socket for its credential, unless the credential already
        has `limit` of them on this process."""
        held = self.listeners[application_id]
        if len(held) >= limit:
            return False
        held.add(sock.channel_name)
        return True

    def local(self, channel_name: str | None) -> RelaySocket | None:
        if channel_name is None or not local_fast_path:
            return None
        return self.sockets.get(channel_name)

    def counter(self, session_id: str) -> Counter:
        counter = self.counters.get(session_id)
        if counter is None:
            counter = self.counters[session_id] = Counter()
        return counter

    def take_deltas(self, session_id: str | None = None) -> dict[str, tuple[int, int]]:
        """Counts not yet written, reset to zero; one session's or all of them."""
        keys = [session_id] if session_id is not None else list(self.counters)
        deltas = {}
        for key in keys:
            counter = self.counters.get(key)
            if counter is not None and (counter.relayed or counter.dropped):
                deltas[key] = (counter.relayed, counter.dropped)
                counter.relayed = counter.dropped = 0
        return deltas

    def give_back(self, deltas: dict[str, tuple[int, int]]) -> None:
        for key, (relayed, dropped) in deltas.items():
            counter = self.counter(key)
            counter.relayed += relayed
            counter.dropped += dropped

    def forget_idle_counters(self) -> None:
        busy = {sock.session_id for sock in self.sockets.values()}
        for key in [key for key, c in self.counters.items() if key not in busy and not (c.relayed or c.dropped)]:
            del self.counters[key]


registry = Registry()


async def notify(channel_name: str | None, message: dict[str, Any], channel_layer) -> None:
    """Deliver a control message to one socket, in process when it is here."""
    if channel_name is None:
        return
    local = registry.sockets.get(channel_name)
    if local is not None:
        await deliver(local, message)
        return
    try:
        await channel_layer.send(channel_name, message)
    except Exception:  # noqa: BLE001 - the peer is gone or its queue is full: nothing to tell
        logger.info("could not deliver %s to %s", message["type"], channel_name)


async def deliver(sock: RelaySocket, message: dict[str, Any]) -> None:
    """Hand a control message to a socket of this process, as its consumer's handler."""
    handler = getattr(sock, message["type"].replace(".", "_"), None)
    if handler is not None:
        await handler(message)


async def flush_counters(session_id: str | None = None) -> None:
    deltas = registry.take_deltas(session_id)
    if not deltas:
        return
    try:
        await database_sync_to_async(sessions.session_counters_add)(deltas=deltas)
    except Exception:  # noqa: BLE001 - keep the counts for the next flush
        registry.give_back(deltas)
        logger.exception("could not write frame counters")


# --- housekeeping: heartbeat, counters, sweep ------------------------------------------------

_housekeeping: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


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


def ensure_housekeeping() -> None:
    """Start this process's housekeeping task on the running loop, once."""
    loop = asyncio.get_running_loop()
    running = _housekeeping.get(loop)
    if running is None or running.done():
        task_of_loop(_housekeeping, _housekeep, "cloud-connector-housekeeping")
        install_shutdown_handler(loop)


async def _housekeep() -> None:
    flush_every = max(0.05, float(sessions.setting("COUNTER_FLUSH_INTERVAL", 2)))
    sweep_every = max(flush_every, float(sessions.setting("SWEEP_INTERVAL", 5)))
    beaten = False
    since_sweep = sweep_every
    while not registry.shutting_down:
        try:
            if since_sweep >= sweep_every:
                since_sweep = 0.0
                alive = await database_sync_to_async(sessions.node_heartbeat)(node=NODE)
                if beaten and not alive:
                    await _presumed_dead()
                beaten = True
                await database_sync_to_async(sessions.sessions_sweep)()
                await _watch_channel_layer()
            await flush_counters()
            registry.forget_idle_counters()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next round tries again
            logger.exception("relay housekeeping failed")
        await asyncio.sleep(flush_every)
        since_sweep += flush_every


async def _presumed_dead() -> None:
    # Another node swept our sockets' rows away while this one was stalled (or the rows
    # were deleted): write them again, so that peers on other nodes find them and the
    # sessions are online again; a socket whose slot or session is gone meanwhile closes.
    logger.warning("node %s was presumed dead; re-asserting its %d sockets", NODE, len(registry.sockets))
    for sock in list(registry.sockets.values()):
        reassert = getattr(sock, "reassert", None)
        if reassert is not None:
            try:
                await reassert()
            except Exception:  # noqa: BLE001 - the others matter more
                logger.exception("could not re-assert %s", sock.channel_name)


# --- the Redis channel layer: riding out a Redis restart ---------------------------------------

# What a Redis that restarts, is unreachable, is still loading or was demoted to a replica
# raises. Treated alike: wait for it, never kill a socket over it.
REDIS_DOWN = (redis.exceptions.RedisError, OSError)
PROBE_MAX_DELAY = 0.5  # seconds between PINGs while Redis is down, at most
RECEIVE_MAX_PAUSE = 1.0  # a receive that keeps failing while PING answers waits this long at most
SEND_WAIT = 3.0  # how long a send waits for a Redis known to be down before giving up
SEND_ID_SECONDS = 10  # how long a send's id is kept against a repeat: longer than SEND_WAIT
RECEIVE_BATCH = 100  # messages one receive round trip takes off this process's channel, at most

# Atomically: nothing if this send (KEYS[2], its id) queued the message already; else drop
# expired messages, refuse (0) at capacity, queue the message and remember the send's id.
SEND_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[6])
return 1
"""

# Atomically: unless the backup queue (KEYS[2]) holds the batch the receiver says it buffered
# (generation ARGV[2], as KEYS[3] records), put it back in the queue (KEYS[1]): its taker
# was cancelled. Then take up to ARGV[1] messages, oldest first, into the emptied backup
# as generation ARGV[3].
POP_BATCH_SCRIPT = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
    local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = #backed_up, 1, -2 do
        redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
    end
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[2], popped[i + 1], popped[i])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return popped
"""
_SCRIPT_SHAS = {
    script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    for script in (SEND_SCRIPT, POP_BATCH_SCRIPT)
}
MARKER_TTL = 3600  # the per-process marker key (see RedisChannelLayer.state_lost)


async def run_script(connection: Any, script: str, numkeys: int, *keys_and_args: Any) -> Any:
    """EVALSHA, so that the script's text is not sent (and hashed by Redis) with every
    message; EVAL when Redis does not have it yet (first use, or after a restart)."""
    try:
        return await connection.evalsha(_SCRIPT_SHAS[script], numkeys, *keys_and_args)
    except redis.exceptions.NoScriptError:  # not run: safe to run now
        return await connection.eval(script, numkeys, *keys_and_args)


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


class LayerUnavailable(ChannelFull):
    """A message not queued because Redis is unreachable. A ChannelFull, so that callers treat it
    as the layer's other "not delivered": a POS frame closes its socket with 4503, a device
    frame is dropped and counted, a control message is logged."""


class RedisChannelLayer(StockRedisChannelLayer):
    """channels_redis's layer (configure it as `connector.relay.RedisChannelLayer`), made to ride
    out a Redis restart without closing a socket.

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
    - Every failure flags `recovery_needed`; when Redis answers again, `schedule_recovery`
      puts this process's sockets back in their groups (a Redis without persistence restarts
      empty) and catches them up on the control events they missed.
    """

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
        if self.recovery_needed:
            schedule_recovery(self)

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
        buffer = self.receive_buffer[channel]
        try:
            message = await buffer.get()
        except asyncio.CancelledError:
            # The socket is closing: what is still buffered for it goes (as in the library).
            if self.receive_buffer.get(channel) is buffer:
                del self.receive_buffer[channel]
            raise
        if buffer.empty() and self.receive_buffer.get(channel) is buffer:
            del self.receive_buffer[channel]  # no entry kept per idle socket
        return message

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
            for name in target if isinstance(target, list) else [target]:
                self.receive_buffer[name].put_nowait(message)

    async def close_pools(self) -> None:
        for reader in self._readers.values():
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
            for name in target if isinstance(target, list) else [target]:
                self.receive_buffer[name].put_nowait(message)
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
        backup = self._backup_channel_name(channel_key)
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
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_index_generator)
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
                        await asyncio.wait_for(self.reachable(), earliest - now)
                batch, outbox[:] = [item for item in outbox if not item.future.done()], []
                try:
                    # Bounded by the earliest deadline: a Redis that stopped answering without
                    # closing its connections must not hold every send of the process for the
                    # socket timeout. Cancelling is safe: the send ids stop doubles.
                    earliest = min(item.deadline for item in batch)
                    results = await asyncio.wait_for(
                        self._execute_sends(self.connection(key[1]), batch), max(earliest - now, 0.05)
                    )
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
                _SCRIPT_SHAS[SEND_SCRIPT],
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
        try:
            await super().group_add(group, channel)
        except REDIS_DOWN as error:
            self.went_down(error, "group_add")  # recovery adds it once Redis is back

    async def group_discard(self, group: str, channel: str) -> None:
        try:
            await super().group_discard(group, channel)
        except REDIS_DOWN as error:
            self.went_down(error, "group_discard")  # a restarted Redis forgot it; else it expires

    async def group_send(self, group: str, message: dict) -> None:
        try:
            await super().group_send(group, message)
        except REDIS_DOWN as error:
            self.went_down(error, "group_send")
            raise

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


_recoveries: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def schedule_recovery(layer: RedisChannelLayer) -> None:
    """Restore this process's channel-layer state after Redis came back or lost its data:
    one recovery at a time per event loop; a request during one makes it go round again."""
    layer.recovery_needed = True
    task_of_loop(_recoveries, lambda: _recover(layer), "cloud-connector-layer-recovery")


async def _watch_channel_layer() -> None:
    layer = get_channel_layer()
    running = _recoveries.get(asyncio.get_running_loop())
    if not isinstance(layer, RedisChannelLayer) or (running is not None and not running.done()):
        return  # a running recovery sets the marker again itself
    if await layer.state_lost(NODE) or layer.recovery_needed:
        schedule_recovery(layer)


async def _recover(layer: RedisChannelLayer) -> None:
    while layer.recovery_needed and not registry.shutting_down:
        layer.recovery_needed = False
        try:
            await _restore(layer)
        except Exception:  # noqa: BLE001 - the next heartbeat or outage tries again
            logger.exception("could not restore the channel layer's state")
        if layer.recovery_needed:  # Redis failed again meanwhile
            await asyncio.sleep(RECEIVE_MAX_PAUSE)
            await layer.reachable()


async def _restore(layer: RedisChannelLayer) -> None:
    # Groups first, then the database: an event committed after the read reaches the socket
    # and one committed before is seen by the read (the same order as at connect).
    started = time.monotonic()
    await layer.state_lost(NODE)  # set the marker again, so the heartbeat does not redo this
    sockets = [sock for sock in registry.sockets.values() if not sock.closed]
    memberships = [(group, sock.channel_name) for sock in sockets for group in getattr(sock, "groups", None) or ()]
    if not await layer.restore_groups(memberships):
        return
    attached = [sock for sock in sockets if getattr(sock, "attached", False)]
    missed = await _catch_up(attached) if attached else 0
    missed += await _revoked_meanwhile([sock for sock in sockets if not sock.closed])
    missed += await _resync_listeners([sock for sock in sockets if not sock.closed and hasattr(sock, "told")])
    logger.warning(
        "channel layer restored: %d sockets back in their groups (%d memberships), %d missed events "
        "replayed, in %.2f s",
        len(sockets),
        len(memberships),
        missed,
        time.monotonic() - started,
    )


async def _catch_up(sockets: list[Any]) -> int:
    """Replay to relay sockets the control events they missed while Redis was away: the
    difference between what each socket believes and what the database says, handed to its
    consumer's own handlers (which choose the close codes). Returns how many were replayed."""
    peers_before = {sock.channel_name: sock.peer_channel for sock in sockets}
    states, slots = await database_sync_to_async(sessions.sessions_now)(
        session_ids=sorted({s.session_id for s in sockets})
    )
    replayed = 0
    for sock in sockets:
        if sock.closed:
            continue
        holder = slots.get((sock.session_id, sock.side, sock.endpoint))
        session = states.get(sock.session_id)
        if holder is None and session is not None and not session.ended:
            await sock.reassert()  # its row was swept: write it again (or close, as it says)
            continue
        for message in _missed(sock, session, holder, slots, peers_before[sock.channel_name]):
            replayed += 1
            await deliver(sock, message)
            if sock.closed:
                break
    return replayed


async def _revoked_meanwhile(sockets: list[Any]) -> int:
    """Close the POS sockets (listeners and sessions) whose access token was revoked, or
    whose credential was deleted, while Redis was away and the event could not be sent:
    their own token_revoked handlers choose the codes (4401, 4410). Returns how many."""
    checksums = {_token_checksum(sock) for sock in sockets} - {None}
    if not checksums:
        return 0
    revoked = await database_sync_to_async(sessions.tokens_revoked)(checksums=sorted(checksums))
    closing = [sock for sock in sockets if _token_checksum(sock) in revoked]
    for sock in closing:
        if not sock.closed:
            await deliver(sock, {"type": "token.revoked", "token_checksum": sock.caller.token_checksum})
    return len(closing)


async def _resync_listeners(listeners: list[Any]) -> int:
    """§5 for what changed while Redis was away: each pos-listener socket hears
    `device_online` or `device_offline` for every session its credential holds whose state
    differs from the last it was told (a claim is made online). Ended and taken-over
    sessions are told through their session sockets (_catch_up: 4410, 4409). Returns how
    many events were sent."""
    if not listeners:
        return 0
    told_before = {id(sock): dict(sock.told) for sock in listeners}
    held = await database_sync_to_async(sessions.claims_held)(
        application_ids=sorted({sock.caller.application_id for sock in listeners})
    )
    sent = 0
    for sock in listeners:
        before = told_before[id(sock)]
        mine = [claim for claim in held if claim.application_id == sock.caller.application_id]
        for gone in set(before) - {claim.session_id for claim in mine}:
            if sock.told.get(gone) == before[gone]:
                del sock.told[gone]
        for claim in mine:
            event = "device_online" if claim.online else "device_offline"
            # Only if no event reached the socket during the read: such an event is newer.
            unchanged = sock.told.get(claim.session_id) == before.get(claim.session_id)
            if unchanged and before.get(claim.session_id, "device_online") != event and not sock.closed:
                await deliver(
                    sock, {"type": "pos.event", "event": event, "session_id": claim.session_id, "tsn": claim.tsn}
                )
                sent += 1
    return sent


def _token_checksum(sock: Any) -> str | None:
    caller = getattr(sock, "caller", None)
    return getattr(caller, "token_checksum", None)


def _missed(
    sock: Any, session: sessions.SessionNow | None, holder: str | None, slots: dict, peer_before: str | None
) -> list:
    if session is None or session.ended:
        return [{"type": "session.end"}]
    if holder != sock.channel_name:
        return [{"type": "socket.replaced"}]
    missed: list[dict[str, Any]] = []
    if sock.endpoint not in session.endpoints:
        missed.append({"type": "session.endpoints", "endpoints": session.endpoints})
    caller = getattr(sock, "caller", None)
    if caller is not None and session.claimed_by != caller.application_id:
        if session.claimed_by is None:
            missed.append({"type": "claim.released", "application_id": caller.application_id})
        else:
            missed.append({"type": "claim.changed", "holder": session.claimed_by})
    peer = slots.get((sock.session_id, sock.peer_side, sock.endpoint))
    # Only if no event changed the peer since the read began: such an event is newer.
    if peer != peer_before and sock.peer_channel == peer_before:
        if peer is not None:
            missed.append({"type": "peer.attached", "side": sock.peer_side, "endpoint": sock.endpoint, "channel": peer})
        else:
            missed.append(
                {"type": "peer.detached", "side": sock.peer_side, "endpoint": sock.endpoint, "channel": peer_before}
            )
    return missed


def _daphne_protocol(send: Any) -> Any:
    """The daphne (autobahn) protocol object behind an ASGI `send`, if that is what it is:
    daphne passes `partial(server.handle_reply, protocol)`."""
    if isinstance(send, functools.partial) and send.args:
        candidate = send.args[0]
        if hasattr(candidate, "sendCloseFrame") and hasattr(candidate, "handle_reply"):
            return candidate
    return None


def server_socket_tune(consumer: Any, *, max_message: int) -> None:
    """Make daphne enforce our message limit with a 1009 close frame and our ping timeout,
    whatever it was started with (see the module's notes). Nothing on other servers,
    which hand every message to the application (it checks `max_message` itself)."""
    protocol = _daphne_protocol(consumer.base_send)
    if protocol is None:
        return
    protocol.failByDrop = False
    protocol.maxMessagePayloadSize = max_message
    protocol.maxFramePayloadSize = max_message
    protocol.autoPingTimeout = float(sessions.setting("PING_TIMEOUT", 30))


async def close_with(consumer: Any, code: int) -> None:
    """Close a socket with any close code of the contract.

    Autobahn, under daphne, lets an application close only with 1000 or 3000-4999 and
    fails the socket with 1011 for anything else, so 1001 (going away) and 1009 (too big)
    go to daphne's protocol object directly as a close frame; every other server takes
    them through ASGI.
    """
    if code == 1000 or 3000 <= code <= 4999:
        await consumer.close(code)
        return
    protocol = _daphne_protocol(consumer.base_send)
    if protocol is None:
        await consumer.close(code)
    elif protocol.state == protocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, isReply=False)
    elif protocol.state == protocol.STATE_CONNECTING:
        await consumer.close()  # not accepted yet: daphne refuses the handshake


MAX_FRAME_OVERHEAD = 64 * 1024  # more than a frame's header and a ping or close frame
SLOW_CLOSE_GRACE = 1.0  # seconds


@dataclass(frozen=True, slots=True)
class SocketBuffer:
    """What the server of one socket holds that its client has not taken yet (`size()`, in
    bytes; read from memory, no system call) and how to drop the connection with it
    (`drop()`); see "Backpressure" in the module's notes."""

    size: Callable[[], int]
    drop: Callable[[], None]


def twisted_unsent(tcp: Any) -> int:
    """The bytes a Twisted TCP transport holds unsent. twisted.internet.abstract.FileDescriptor
    keeps written bytes in `_tempDataBuffer` (`_tempDataLen` of them) until the reactor moves
    them to `dataBuffer`, sent up to `offset` (tests/test_private_internals.py)."""
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def _twisted_tcp(transport: Any) -> Any:
    # Under TLS the application's transport is twisted's TLS protocol; the encrypted bytes
    # wait in the TCP transport beneath it.
    while transport is not None and not hasattr(transport, "_tempDataLen"):
        transport = getattr(transport, "transport", None)
    return transport


def socket_buffer(send: Any, *, limit: int) -> SocketBuffer | None:
    """The write buffer of the socket behind an ASGI `send`: daphne's (Twisted's TCP
    transport) or uvicorn's (an asyncio transport), None on any other server. Under uvicorn
    the transport's high-water mark is raised above `limit`, so that uvicorn never makes a
    send wait for the client before the relay has closed it (a wait that would stall the
    sender's own socket, and a close frame behind it)."""
    protocol = _daphne_protocol(send)
    if protocol is not None:
        tcp = _twisted_tcp(protocol.transport)
        if tcp is None:
            return None
        return SocketBuffer(size=functools.partial(twisted_unsent, tcp), drop=tcp.abortConnection)
    # uvicorn's `send` is a method of its protocol, which holds the transport (a reach:
    # tests/test_private_internals.py).
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    transport.set_write_buffer_limits(high=limit + 2 * MAX_FRAME_OVERHEAD + _max_message())
    return SocketBuffer(size=transport.get_write_buffer_size, drop=transport.abort)



def _max_message() -> int:
    return int(sessions.setting("MAX_MESSAGE_SIZE", 1024 * 1024))


def drop_later(buffer: SocketBuffer) -> None:
    """Drop a slow socket's connection, and the bytes it did not take, after SLOW_CLOSE_GRACE:
    time for a client that is merely slow to read its close frame. Uvicorn would not: it
    closes its transport gracefully, which waits for the buffer to drain, forever for a
    client that reads nothing (autobahn, under daphne, aborts after its own 1 s)."""
    asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE, buffer.drop)



async def close_all(code: int) -> None:
    for sock in list(registry.sockets.values()):
        try:
            await sock.close_socket(code)
        except Exception:  # noqa: BLE001 - closing the others matters more
            logger.exception("could not close %s", sock.channel_name)


# --- shutdown: 1001 before the server's own handler --------------------------------------------

_installed_signals: set[int] = set()


def install_shutdown_handler(loop: asyncio.AbstractEventLoop) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signum in _installed_signals:
            continue
        previous = signal.getsignal(signum)
        signal.signal(signum, _make_handler(loop, previous))
        _installed_signals.add(signum)


def _make_handler(loop: asyncio.AbstractEventLoop, previous: Any) -> Callable:
    def handler(signum: int, frame: Any) -> None:
        if registry.shutting_down or loop.is_closed() or not loop.is_running():
            _chain(previous, signum, frame)
            return
        registry.shutting_down = True
        # In a context of its own: the signal interrupts whatever the main thread was running,
        # and a task made from there inherits that context, asgiref's "inside a database call"
        # flag included; its database call would then fail ("would deadlock") and the node's
        # rows would wait for the sweep.
        loop.call_soon_threadsafe(
            lambda: loop.create_task(_going_away(previous, signum, frame)), context=contextvars.Context()
        )

    return handler


async def _going_away(previous: Any, signum: int, frame: Any) -> None:
    try:
        await close_all(1001)
        deadline = asyncio.get_running_loop().time() + float(sessions.setting("SHUTDOWN_GRACE", 2))
        while registry.sockets and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await flush_counters()
        await database_sync_to_async(sessions.node_forget)(node=NODE)
    except Exception:  # noqa: BLE001 - the server must stop whatever happened here
        logger.exception("relay shutdown did not finish cleanly")
    finally:
        _chain(previous, signum, frame)


def _chain(previous: Any, signum: int, frame: Any) -> None:
    if previous in (signal.SIG_DFL, signal.default_int_handler):
        # Python's own behaviour (exit, KeyboardInterrupt) must happen in the main flow,
        # not inside this task: restore it and let the signal arrive again.
        signal.signal(signum, previous)
        signal.raise_signal(signum)
    elif callable(previous):
        previous(signum, frame)
