"""Every reach into a library's internals, one test each, with the reason and our code that
relies on it. Each test first checks that the library is still the version the reach was
checked against, then that the internal still exists and behaves as our code expects: the
day an upgrade breaks one, this module fails, naming the reach to revisit, before anything
else does.

A reach is anything our code uses that the library does not document as its API: a private
(underscore) attribute or method, a method overridden or replaced whose body we reproduce, an
object reached through another's private structure, or an undocumented behaviour we depend
on. Our code is named by its function, not its file or line, as code moves.

One line per reach: the library's internal, then (our code relying on it).

Channels
- AsyncConsumer.__call__ replaced: the attributes it sets (BaseConsumer.serve).
- AsyncConsumer.dispatch's aclose_old_connections hop per message, skipped (BaseConsumer.dispatch).
- AsyncWebsocketConsumer.websocket_disconnect, reproduced without that hop (BaseConsumer.websocket_disconnect).
- channels.db.DatabaseSyncToAsync as a class, closing connections around each call (db_threads.run).

asgiref
- AsyncToSync.loop_thread_executors: the loops a sync caller waits on (db_threads._sync_caller_waits).
- SyncToAsync.threadlocal.main_event_loop and _pid, set in our pool threads (db_threads._closing).
- SyncToAsync(fn, thread_sensitive=True) called as a class (db_threads.run).

channels-redis (its RedisChannelLayer, subclassed by the relay's redis layer)
- __init__'s parameters; ring_size, prefix, expiry, group_expiry, capacity, brpop_timeout (RedisChannelLayer).
- new_channel's names, non_local_name, client_prefix (RedisChannelLayer.receive, receive_single).
- _brpop_with_clean(index, channel, timeout), overridden; None means "ask again" (RedisChannelLayer).
- _clean_receive_backup(index, channel), overridden, called by receive_single (RedisChannelLayer).
- _backup_channel_name: "<key>$inflight", called by our _clean_receive_backup override.
- receive's plain-channel path: receive_single(channel)[1] (RedisChannelLayer.receive).
- send's Redis layout: a sorted set scored by time, capacity, expiry (SEND_SCRIPT, RedisChannelLayer.send).
- _group_key and group_add's zadd and expire (RedisChannelLayer.group_add, restore_groups: the same layout, pipelined).
- group_send names its targets as a list in __asgi_channel__ (RedisChannelLayer._read).
- _map_channel_keys_to_connection(channel_names, message): keys per host, payload and capacity
  per key (RedisChannelLayer.group_send_many).
- group_send's Redis layout: members read from _group_key after dropping the expired ones,
  messages queued as send queues them (GROUP_MEMBERS_SCRIPT, GROUP_SEND_SCRIPT).
- connection(index): a redis-py client whose pool disconnect drops idle connections (RedisChannelLayer._probe).
- create_pool(index): each host's pool, made by the loop layer's get_connection (RedisChannelLayer.create_pool).

redis-py
- Pipeline.execute(raise_on_error=False) and the RedisError tree (REDIS_DOWN, RedisChannelLayer._execute_sends).
- Connection.send_packed_command(command, check_health): every command's and pipeline's send, through
  asyncio.wait_for when a socket timeout is set; ConnectionPool.connection_class, which make_connection
  instantiates (CancelSafeSend, cancel_safe_pool).

daphne, autobahn
- daphne's send is partial(server.handle_reply, protocol) (_daphne_protocol).
- autobahn's per-protocol failByDrop, maxMessagePayloadSize, maxFramePayloadSize, autoPingTimeout (server_socket_tune).
- sendCloseFrame(code, isReply) for the 1001 and 1009 that sendClose refuses; state constants (close_with).
- onPong replaced per protocol, called for every pong after the keepalive's; is_closed; sendPing (watch_pongs, ping).
- onAutoPingTimeout's wasNotCleanReason; the keepalive's 12-byte payload, not ours (ping_timed_out, ping).
- daphne's Twisted reactor runs on the asyncio loop of its applications (watch_pongs: the callback's thread).

Twisted
- FileDescriptor's _tempDataBuffer, _tempDataLen, dataBuffer and offset (twisted_unsent).
- TLSMemoryBIOProtocol.transport: the TCP transport beneath TLS (_twisted_tcp).

uvicorn
- send.__self__.transport, and send waiting on the transport's high-water mark (socket_buffer).
- "Invalid UTF-8 sequence received from client." on uvicorn.error (ClientFaultsWithoutTraceback).
- handle_pong and connection_lost replaced per protocol; conn.send_ping and data_to_send; handshake_complete,
  close_sent; the keepalive's 4-byte payload, not ours (watch_pongs, ping).
- keepalive_timeout's conn.fail(1011, "keepalive ping timeout"), read back as conn.close_sent (ping_timed_out).
- request and response on the protocol, read only until the accept is sent; dropped after it (handshake_forget).

Django
- SQL compiler: get_compiler, as_sql, select, col_count, Query.selected, get_converters... (Prepared).
- Model._state.adding and .db, Model.from_db(None, ...) (admin's _adopt, _device_from_row).
- ModelAdmin.changeform_view and delete_view run in transaction.atomic (ServiceModelAdmin).
- django.core.checks.security.base's SECRET_KEY_* constants (secret_key_is_strong).
- connection.ops.quote_name and connection.vendor in hand-written SQL (_credential_still_holds).
- LoginRequiredMiddleware.handle_no_permission(request, view_func) (PortalLoginRequiredMiddleware).
- load_backend(engine).DatabaseWrapper(settings_dict, alias) (the readiness check's database_ping).

django-oauth-toolkit, oauthlib
- OAuth2Validator._check_secret(provided, stored) (TenantOAuth2Validator.authenticate_client).
- get_oauthlib_core's cache, hasattr(cls, "_oauthlib_core") (DomainEndpointMixin.get_oauthlib_core).
- oauth2_settings.server_kwargs and get_server's parts (DomainEndpointMixin.get_server).
- create_token_response and create_revocation_response's 4-tuple (DomainEndpointMixin.answer).
- TokenChecksumField: the hex SHA-256 of the raw token (credentials.token_checksum).
- AccessTokenAdmin: tokens masked, a revoke action (ReadOnlyTokenMixin).
- revoke_access_token(access_token) (oauth.access_token_revoke).
- RequestValidator's method signatures (TenantOAuth2Validator's overrides).

Django REST framework, django-filter
- Request._request (ApiCredentialRateThrottle.ident).
- APIView.initial checks throttles last (ThrottledBeforeAuthentication).
- rest_framework.views.set_rollback(), which marks only ATOMIC_REQUESTS transactions (_database_response).
- PageNumberPagination.get_page_number(request, paginator) (Pagination.get_page_number).
- Filter.field_class and its extra arguments, django_filters.fields.ChoiceField (IdFilter, NotBlankChoiceField).

prometheus-client
- prometheus_client.exposition.choose_encoder(accept) (the /metrics view).

urllib3
- HTTP(S)Connection.sock: the TCP socket from before the TLS handshake on, kept by our connect (_Deadline).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import re
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any
from unittest import mock

import pytest

# The versions each reach below was checked against. An upgrade fails here first: read the
# reaches of that library in this module, check each against the new version, then move its
# number here (and in requirements.txt, then `make lock`).
CHECKED_AGAINST = {
    "channels": "4.3.2",
    "asgiref": "3.13.0",
    "channels-redis": "4.3.0",
    "redis": "8.1.0",
    "daphne": "4.2.3",
    "autobahn": "26.11.1",
    "Twisted": "26.10.0",
    "uvicorn": "0.54.0",
    "Django": "5.2.19",
    "django-oauth-toolkit": "3.4.1",
    "oauthlib": "4.0.1",
    "djangorestframework": "3.18.3",
    "django-filter": "26.2",
    "prometheus-client": "0.26.0",
    "urllib3": "2.8.0",
}


def checked_against(distribution: str) -> None:
    installed = version(distribution)
    assert installed == CHECKED_AGAINST[distribution], (
        f"{distribution} {installed} is installed; its reaches below were checked against "
        f"{CHECKED_AGAINST[distribution]}: check each of them, then update CHECKED_AGAINST"
    )


def source(obj: Any) -> str:
    """The source of a function or class, whitespace collapsed (formatting is not the reach)."""
    return " ".join(inspect.getsource(obj).split())


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("distribution", sorted(CHECKED_AGAINST))
def test_each_library_reached_into_is_the_version_its_reaches_were_checked_against(distribution):
    checked_against(distribution)


# --- Channels ----------------------------------------------------------------------------------


def test_channels_consumer_call_sets_what_the_consumers_own_serve_reproduces():
    # BaseConsumer.serve replaces AsyncConsumer.__call__ (one task per socket instead of an
    # asyncio.wait per message). It must set what the rest of Channels reads from the
    # instance: scope, channel_layer, channel_name, channel_receive and base_send, and end
    # quietly on StopConsumer. A new step in __call__ would be missing from ours.
    from channels.consumer import AsyncConsumer

    checked_against("channels")
    call = source(AsyncConsumer.__call__)
    for step in (
        "self.scope = scope",
        "self.channel_layer = get_channel_layer(self.channel_layer_alias)",
        "self.channel_name = await self.channel_layer.new_channel()",
        "self.channel_receive = functools.partial( self.channel_layer.receive, self.channel_name )",
        "self.base_send = send",
        "await await_many_dispatch( [receive, self.channel_receive], self.dispatch )",
        "except StopConsumer:",
    ):
        assert step in call, step
    assigned = set(re.findall(r"self\.(\w+) =", call))
    assert assigned == {"scope", "channel_layer", "channel_name", "channel_receive", "base_send"}


async def test_channels_websocket_consumer_writes_through_the_base_send_serve_sets():
    # BaseConsumer.serve stores the server's `send` as base_send, as __call__ does: accept,
    # send and close of AsyncWebsocketConsumer must write through it.
    from channels.generic.websocket import AsyncWebsocketConsumer

    checked_against("channels")
    consumer = AsyncWebsocketConsumer()
    sent: list[dict] = []

    async def base_send(message: dict) -> None:
        sent.append(message)

    consumer.base_send = base_send
    await consumer.accept()
    await consumer.send(text_data="hello")
    await consumer.close(code=4000)
    assert [message["type"] for message in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello" and sent[2]["code"] == 4000


def test_channels_dispatch_hops_to_a_thread_before_every_handler_which_the_consumers_skip():
    # BaseConsumer.dispatch finds the handler as AsyncConsumer.dispatch does but skips its
    # `aclose_old_connections()` (a thread hop per frame); the consumers' `db` closes stale
    # connections around each database call instead.
    from channels.consumer import AsyncConsumer, get_handler_name

    checked_against("channels")
    dispatch = source(AsyncConsumer.dispatch)
    assert "handler = getattr(self, get_handler_name(message), None)" in dispatch
    assert "await aclose_old_connections()" in dispatch
    assert get_handler_name({"type": "relay.frame"}) == "relay_frame"
    with pytest.raises(ValueError):
        get_handler_name({"type": "_private.call"})


def test_channels_websocket_disconnect_is_what_the_consumers_reproduce_without_its_thread_hop():
    # BaseConsumer.websocket_disconnect is the library's, less the aclose_old_connections hop:
    # leave every group, call disconnect(code), stop the consumer.
    from channels.generic.websocket import AsyncWebsocketConsumer

    checked_against("channels")
    disconnect = source(AsyncWebsocketConsumer.websocket_disconnect)
    steps = [
        "for group in self.groups: await self.channel_layer.group_discard(group, self.channel_name)",
        'await self.disconnect(message["code"])',
        "await aclose_old_connections()",
        "raise StopConsumer()",
    ]
    positions = [disconnect.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), disconnect


async def test_channels_database_sync_to_async_closes_stale_connections_around_each_call():
    # db_threads.run hands work to DatabaseSyncToAsync(fn) on SQLite (Channels' one database
    # thread) and relies on it closing stale connections before and after the call; the pool
    # path (db_threads._closing) does the same by hand.
    from asgiref.sync import SyncToAsync
    from channels.db import DatabaseSyncToAsync, database_sync_to_async

    checked_against("channels")
    assert database_sync_to_async is DatabaseSyncToAsync and issubclass(DatabaseSyncToAsync, SyncToAsync)
    events: list[str] = []

    def work() -> str:
        events.append("work")
        return threading.current_thread().name

    with mock.patch("channels.db.close_old_connections", lambda: events.append("close")):
        thread = await DatabaseSyncToAsync(work)()
    assert events == ["close", "work", "close"]
    assert thread != threading.current_thread().name


# --- asgiref -----------------------------------------------------------------------------------


def test_asgiref_lists_the_loops_a_sync_caller_is_waiting_on():
    # db_threads._sync_caller_waits: a loop in AsyncToSync.loop_thread_executors is one that
    # async_to_sync started for a synchronous caller (Django's test client, a management
    # command), which then runs the database work in its own thread and transaction.
    from asgiref.sync import AsyncToSync, async_to_sync

    checked_against("asgiref")

    async def waited_on() -> bool:
        return asyncio.get_running_loop() in AsyncToSync.loop_thread_executors

    assert isinstance(AsyncToSync.loop_thread_executors, dict)
    assert async_to_sync(waited_on)() is True
    assert asyncio.run(waited_on()) is False


async def test_asgiref_sends_async_to_sync_back_to_the_loop_named_in_its_threadlocal():
    # db_threads._closing sets SyncToAsync.threadlocal.main_event_loop (and its pid) in our own
    # pool threads, as sync_to_async's threads do, so that async_to_sync inside the database
    # work (the events a call sends) runs on the caller's loop instead of a new one.
    from asgiref.sync import SyncToAsync, async_to_sync

    checked_against("asgiref")
    caller_loop = asyncio.get_running_loop()

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def in_pool_thread() -> asyncio.AbstractEventLoop:
        SyncToAsync.threadlocal.main_event_loop = caller_loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        try:
            return async_to_sync(running_loop)()
        finally:
            del SyncToAsync.threadlocal.main_event_loop, SyncToAsync.threadlocal.main_event_loop_pid

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert await caller_loop.run_in_executor(pool, in_pool_thread) is caller_loop
    assert "self.threadlocal.main_event_loop = loop" in source(SyncToAsync.thread_handler)


def test_asgiref_sync_to_async_is_a_class_taking_the_function_and_thread_sensitivity():
    # db_threads.run calls SyncToAsync(fn) for a waiting synchronous caller (thread-sensitive:
    # the caller's own thread, its connection and transaction).
    from asgiref.sync import SyncToAsync

    checked_against("asgiref")
    signature = inspect.signature(SyncToAsync.__init__)
    assert parameters(SyncToAsync.__init__)[:3] == ["self", "func", "thread_sensitive"]
    assert signature.parameters["thread_sensitive"].default is True


# --- channels-redis ----------------------------------------------------------------------------


@dataclass
class Call:
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


class RecordingRedis:
    """Stands for a redis.asyncio.Redis: records every command, answers from `answers`."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[Call] = []

    def __getattr__(self, name: str):
        async def command(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(Call(name, args, kwargs))
            return self.answers.get(name)

        return command

    def pipeline(self, transaction: bool = True) -> RecordingPipeline:
        return RecordingPipeline(self)


class RecordingPipeline:
    def __init__(self, redis: RecordingRedis) -> None:
        self.redis = redis
        self.queued = 0

    def __getattr__(self, name: str):
        def queue(*args: Any, **kwargs: Any) -> RecordingPipeline:
            self.redis.calls.append(Call(f"pipeline.{name}", args, kwargs))
            self.queued += 1
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[None]:
        return [None] * self.queued


def stock_layer(redis: RecordingRedis | None = None, cls: type | None = None, **config: Any):
    """channels_redis's own layer (no subclass of ours), talking to a RecordingRedis."""
    from channels_redis.core import RedisChannelLayer

    layer = (cls or RedisChannelLayer)(hosts=["redis://127.0.0.1:1/0"], **config)
    recording = redis or RecordingRedis()
    layer.connection = lambda index: recording
    return layer, recording


def test_channels_redis_layer_takes_the_settings_and_sets_the_attributes_the_relay_reads():
    # RedisChannelLayer.__init__ passes the settings' CONFIG through; the subclass reads
    # ring_size, prefix, expiry, group_expiry, capacity, client_prefix and brpop_timeout
    # (its receive, send, batch pop, group restore and probe).
    from channels_redis.core import RedisChannelLayer

    checked_against("channels-redis")
    assert parameters(RedisChannelLayer.__init__) == [
        "self",
        "hosts",
        "prefix",
        "expiry",
        "group_expiry",
        "capacity",
        "channel_capacity",
        "symmetric_encryption_keys",
        "random_prefix_length",
        "serializer_format",
    ]
    layer, _ = stock_layer(capacity=7, expiry=60)
    assert (layer.ring_size, layer.prefix, layer.expiry, layer.group_expiry) == (1, "asgi", 60, 86400)
    assert layer.capacity == 7 and layer.get_capacity("specific.x!y") == 7
    assert layer.brpop_timeout == 5
    assert re.fullmatch(r"[0-9a-f]{32}", layer.client_prefix)


async def test_channels_redis_names_process_channels_as_the_relays_receive_expects():
    # RedisChannelLayer.receive and receive_single tell this process's channels by "!", check
    # the client prefix and read the process's queue under `prefix + non_local_name(channel)`.
    checked_against("channels-redis")
    layer, _ = stock_layer()
    channel = await layer.new_channel()
    assert re.fullmatch(rf"specific\.{layer.client_prefix}![0-9a-f]{{32}}", channel)
    process_channel = layer.non_local_name(channel)
    assert process_channel == f"specific.{layer.client_prefix}!"
    assert layer.require_valid_channel_name(channel)
    assert layer.require_valid_channel_name(process_channel, receive=True)
    assert 0 <= layer.consistent_hash(channel) < layer.ring_size


async def test_channels_redis_brpop_with_clean_pops_into_the_backup_queue_and_answers_none_for_nothing():
    # RedisChannelLayer._brpop_with_clean overrides it (riding out an outage, answering None)
    # and calls it through super(): the signature, the backup queue's name and the answer
    # (the popped member, None when the blocking pop timed out) are relied on.
    from channels_redis.core import RedisChannelLayer

    checked_against("channels-redis")
    assert parameters(RedisChannelLayer._brpop_with_clean) == ["self", "index", "channel", "timeout"]
    layer, redis = stock_layer(RecordingRedis(bzpopmin=(b"asgi:q", b"member", 12.5)))
    assert layer._backup_channel_name("asgi:q") == "asgi:q$inflight"  # the key our batch pop also names
    assert await layer._brpop_with_clean(0, "asgi:q", timeout=5) == b"member"
    assert [call.name for call in redis.calls] == ["eval", "bzpopmin", "zadd"]
    assert redis.calls[0].args[1:] == (0, "asgi:q", "asgi:q$inflight")
    assert redis.calls[1] == Call("bzpopmin", ("asgi:q",), {"timeout": 5})
    assert redis.calls[2].args == ("asgi:q$inflight", {b"member": 12.5})
    redis.answers["bzpopmin"] = None
    assert await layer._brpop_with_clean(0, "asgi:q", timeout=5) is None


async def test_channels_redis_receive_single_asks_again_on_none_then_cleans_the_backup():
    # Our _brpop_with_clean answers None while Redis is down, which the library's receive
    # loop takes as "nothing yet, ask again"; our _clean_receive_backup(index, channel) is
    # what it calls once a message is taken. The message's own channel comes from
    # __asgi_channel__, removed from the message.
    from channels_redis.core import RedisChannelLayer

    checked_against("channels-redis")
    asked: list[tuple] = []
    cleaned: list[tuple] = []

    class Probe(RedisChannelLayer):
        answers: list[Any] = []

        async def _brpop_with_clean(self, index, channel, timeout):
            asked.append((index, channel, timeout))
            return self.answers.pop(0)

        async def _clean_receive_backup(self, index, channel):
            cleaned.append((index, channel))

    layer, _ = stock_layer(cls=Probe)
    channel = await layer.new_channel()
    process_channel = layer.non_local_name(channel)
    layer.answers = [None, layer.serialize({"type": "relay.frame", "__asgi_channel__": channel})]
    assert await layer.receive_single(process_channel) == (channel, {"type": "relay.frame"})
    key = layer.prefix + process_channel
    assert asked == [(layer.consistent_hash(process_channel), key, layer.brpop_timeout)] * 2
    await layer.wait_received()
    assert cleaned == [(layer.consistent_hash(process_channel), key)]
    # A plain channel's receive is receive_single's message (our receive hands those to super).
    layer.answers = [layer.serialize({"type": "plain"})]
    assert await layer.receive("plain") == {"type": "plain"}
    assert "return (await self.receive_single(channel))[1]" in source(RedisChannelLayer.receive)


async def test_channels_redis_send_queues_in_the_layout_our_send_script_reproduces():
    # RedisChannelLayer.send runs SEND_SCRIPT instead: drop what expired, refuse at capacity,
    # add the message to the channel's sorted set scored by time, expire the set. The
    # library's receive and group_send share that layout, so ours must stay the same.
    from channels.exceptions import ChannelFull

    checked_against("channels-redis")
    layer, redis = stock_layer(RecordingRedis(zcount=0), capacity=3, expiry=60)
    channel = "specific.abc!xyz"
    key = layer.prefix + layer.non_local_name(channel)
    before = time.time()
    await layer.send(channel, {"type": "relay.frame", "text": "hi"})
    assert [call.name for call in redis.calls] == ["zremrangebyscore", "zcount", "zadd", "expire"]
    low, high = int(before) - 60, int(time.time()) - 60
    assert redis.calls[0].args == (key,) and redis.calls[0].kwargs["min"] == 0
    assert low <= redis.calls[0].kwargs["max"] <= high
    assert redis.calls[1].args == (key, "-inf", "+inf")
    ((payload, score),) = redis.calls[2].args[1].items()
    assert redis.calls[2].args[0] == key and before <= score <= time.time()
    assert layer.deserialize(payload) == {"type": "relay.frame", "text": "hi", "__asgi_channel__": channel}
    assert redis.calls[3].args == (key, 60)
    redis.answers["zcount"] = 3
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "relay.frame"})


async def test_channels_redis_groups_are_sorted_sets_under_group_key_with_the_group_expiry():
    # RedisChannelLayer.group_add and restore_groups write memberships as the stock group_add does, in one
    # pipeline per host: zadd(_group_key(group), {channel: now}) and expire(group_expiry), on
    # the host consistent_hash(group) picks.
    checked_against("channels-redis")
    hosts: list[int] = []
    layer, redis = stock_layer()
    connection = layer.connection
    layer.connection = lambda index: hosts.append(index) or connection(index)
    assert layer._group_key("cc.session.s1") == b"asgi:group:cc.session.s1"
    before = time.time()
    await layer.group_add("cc.session.s1", "specific.abc!xyz")
    assert hosts == [layer.consistent_hash("cc.session.s1")]
    assert [call.name for call in redis.calls] == ["zadd", "expire"]
    ((member, score),) = redis.calls[0].args[1].items()
    assert redis.calls[0].args[0] == b"asgi:group:cc.session.s1" and member == "specific.abc!xyz"
    assert before <= score <= time.time()
    assert redis.calls[1].args == (b"asgi:group:cc.session.s1", layer.group_expiry)


async def test_channels_redis_group_send_names_its_targets_as_a_list_in_each_message():
    # RedisChannelLayer._read buffers a message for every channel its __asgi_channel__ names:
    # one name for a send, a list for a group_send (one message per process's queue).
    checked_against("channels-redis")
    channel = "specific.abc!xyz"
    layer, redis = stock_layer(RecordingRedis(zrange=[channel.encode()], eval=0))
    await layer.group_send("cc.session.s1", {"type": "session.end"})
    (script_call,) = [call for call in redis.calls if call.name == "eval"]
    _script, numkeys, *keys_and_args = script_call.args
    assert numkeys == 1 and keys_and_args[0] == layer.prefix + layer.non_local_name(channel)
    message = layer.deserialize(keys_and_args[1])
    assert message == {"type": "session.end", "__asgi_channel__": [channel]}


def test_channels_redis_maps_a_group_message_to_one_payload_per_process_queue():
    # RedisChannelLayer.group_send_many hands each group's members to
    # _map_channel_keys_to_connection and queues, per host index, each key's payload (the
    # message naming every channel of that queue in __asgi_channel__) up to its capacity.
    checked_against("channels-redis")
    layer, _redis = stock_layer(capacity=7)
    one, two, plain = "specific.abc!x", "specific.abc!y", "plain.channel"
    keys_by_host, payloads, capacities = layer._map_channel_keys_to_connection([one, two, plain], {"type": "e"})
    process_key, plain_key = layer.prefix + layer.non_local_name(one), layer.prefix + plain
    assert sorted(key for keys in keys_by_host.values() for key in keys) == sorted([process_key, plain_key])
    assert set(keys_by_host) <= set(range(layer.ring_size))
    assert layer.deserialize(payloads[process_key]) == {"type": "e", "__asgi_channel__": [one, two]}
    assert layer.deserialize(payloads[plain_key]) == {"type": "e", "__asgi_channel__": [plain]}
    assert capacities == {process_key: 7, plain_key: 7}
    # The stock group_send drops expired members before reading them, as our script does.
    group_send = source(type(layer).group_send)
    assert "zremrangebyscore" in group_send and "self.group_expiry" in group_send and "zrange(key, 0, -1)" in group_send


def test_redis_py_pipelines_can_answer_errors_in_place_and_its_errors_are_one_tree():
    # RedisChannelLayer._execute_sends reads each script run's own answer, a NoScriptError
    # included, from execute(raise_on_error=False); REDIS_DOWN is (RedisError, OSError).
    import redis.asyncio.client
    import redis.exceptions

    checked_against("redis")
    assert inspect.signature(redis.asyncio.client.Pipeline.execute).parameters["raise_on_error"].default is True
    assert issubclass(redis.exceptions.NoScriptError, redis.exceptions.ResponseError)
    assert issubclass(redis.exceptions.ResponseError, redis.exceptions.RedisError)
    assert issubclass(redis.exceptions.ConnectionError, redis.exceptions.RedisError)
    assert issubclass(redis.exceptions.TimeoutError, redis.exceptions.RedisError)


def test_channels_redis_builds_each_hosts_pool_through_the_layers_create_pool():
    # RedisChannelLayer.create_pool wraps the library's to make the pool's connections
    # cancel-safe; the library's loop layer must still build every pool through it.
    from channels_redis.core import RedisChannelLayer, RedisLoopLayer

    checked_against("channels-redis")
    assert parameters(RedisChannelLayer.create_pool) == ["self", "index"]
    assert "pool = self.channel_layer.create_pool(index)" in source(RedisLoopLayer.get_connection)


def test_redis_py_sends_every_command_through_send_packed_command_of_the_pools_connection_class():
    # CancelSafeSend wraps send_packed_command, the one place a command's send waits (with
    # asyncio.wait_for, which loses a cancel on Python 3.11); commands and pipelines alike go
    # through it, on connections the pool makes from its connection_class.
    import redis.asyncio.client
    from redis.asyncio.connection import Connection, ConnectionPool

    checked_against("redis")
    assert parameters(Connection.send_packed_command) == ["self", "command", "check_health"]
    assert "asyncio.wait_for(" in source(Connection.send_packed_command)
    assert "await self.send_packed_command(" in source(Connection.send_command)
    pipeline = redis.asyncio.client.Pipeline
    for execute in (pipeline._execute_pipeline, pipeline._execute_transaction):
        assert "await connection.send_packed_command(all_cmds)" in source(execute)
    pool = ConnectionPool.from_url("redis://127.0.0.1:1/0")
    pool.connection_class = type("Marked", (Connection,), {})
    assert type(pool.make_connection()).__name__ == "Marked"


# --- daphne, autobahn --------------------------------------------------------------------------


def test_daphne_hands_the_application_its_protocol_object_inside_the_asgi_send():
    # _daphne_protocol: the relay reaches daphne's (autobahn's) protocol object through the
    # ASGI `send` daphne makes, partial(server.handle_reply, protocol), and recognises it by
    # its handle_reply and sendCloseFrame.
    from autobahn.twisted.websocket import WebSocketServerProtocol
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    checked_against("daphne")
    assert "send=partial(self.handle_reply, protocol)" in source(Server.create_application)
    assert issubclass(WebSocketProtocol, WebSocketServerProtocol)
    assert callable(WebSocketProtocol.handle_reply) and callable(WebSocketProtocol.sendCloseFrame)


def open_autobahn_socket():
    """An autobahn server protocol past its handshake, on an in-memory transport."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=1024 * 1024, failByDrop=True, autoPingTimeout=30)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert protocol.state == protocol.STATE_OPEN, transport.value()
    transport.clear()
    return protocol, transport


def client_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_autobahn_reads_its_limits_from_the_protocol_so_one_socket_can_close_1009_instead_of_dropping():
    # server_socket_tune sets failByDrop, maxMessagePayloadSize, maxFramePayloadSize and
    # autoPingTimeout on one live daphne protocol (autobahn copies the factory's options onto
    # each protocol at connect and reads them from there), so that a message over our limit
    # gets a 1009 close frame rather than a dropped TCP connection (1006 for the client).
    from autobahn.websocket.protocol import WebSocketServerProtocol
    from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol

    checked_against("autobahn")
    for option in ("failByDrop", "maxMessagePayloadSize", "maxFramePayloadSize", "autoPingTimeout"):
        assert option in WebSocketServerProtocol.CONFIG_ATTRS, option
    protocol, transport = open_autobahn_socket()
    protocol.failByDrop = False
    protocol.maxMessagePayloadSize = 10
    protocol.maxFramePayloadSize = 10
    protocol.dataReceived(client_frame(b"x" * 11))
    written = transport.value()
    assert written[0] == 0x88 and struct.unpack(">H", written[2:4]) == (1009,)
    assert not transport.disconnecting
    # daphne's ping (check_timeouts -> _sendAutoPing) waits autoPingTimeout for the pong.
    assert "self._sendAutoPing()" in source(DaphneWebSocketProtocol.check_timeouts)
    assert "self.autoPingTimeout" in source(WebSocketServerProtocol._sendAutoPing)


def test_autobahn_refuses_1001_through_send_close_but_sends_it_as_a_close_frame():
    # close_with sends 1001 (going away) and 1009 (too big) with sendCloseFrame(code=...,
    # isReply=False) when the socket is open, because sendClose (what daphne's ASGI close
    # uses) accepts only 1000 and 3000-4999.
    from autobahn.websocket.protocol import WebSocketProtocol

    checked_against("autobahn")
    assert parameters(WebSocketProtocol.sendCloseFrame) == ["self", "code", "reasonUtf8", "isReply"]
    assert (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_OPEN) == (1, 3)
    protocol, transport = open_autobahn_socket()
    with pytest.raises(Exception, match="invalid close code 1001"):
        protocol.sendClose(code=1001)
    protocol.sendCloseFrame(code=1001, isReply=False)
    written = transport.value()
    assert written[0] == 0x88 and struct.unpack(">H", written[2:4]) == (1001,)


def client_control_frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x05\x06\x07\x08"
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_autobahn_calls_a_protocols_own_on_pong_for_every_pong_and_fires_is_closed_once_closed():
    # watch_pongs replaces onPong on daphne's protocol object (daphne defines none): autobahn
    # calls it for every pong, its keepalive's or not, after matching its keepalive payload;
    # and adds a callback to is_closed, the Deferred autobahn fires when the state becomes
    # closed. ping sends with sendPing(payload) while state is STATE_OPEN.
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol
    from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from connector.relay.servers import PING_PAYLOAD_SIZE

    checked_against("autobahn")
    assert "onPong" not in vars(DaphneWebSocketProtocol)
    assert "self.onPong(payload)" in source(WebSocketAdapterProtocol._onPong)
    control = source(WebSocketProtocol.processControlFrame)
    assert control.find("if payload == self.autoPingPending:") < control.find("self._onPong(payload)")
    protocol, transport = open_autobahn_socket()
    pongs: list[bytes] = []
    protocol.onPong = pongs.append
    protocol.dataReceived(client_control_frame(0xA, b"unsolicited"))
    assert pongs == [b"unsolicited"]
    protocol.sendPing(b"p" * PING_PAYLOAD_SIZE)
    assert transport.value() == bytes([0x89, PING_PAYLOAD_SIZE]) + b"p" * PING_PAYLOAD_SIZE
    assert isinstance(protocol.is_closed, Deferred) and not protocol.is_closed.called
    closed: list[bool] = []
    protocol.is_closed.addBoth(lambda result: closed.append(True) or result)
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert closed == [True] and protocol.state == protocol.STATE_CLOSED


def test_autobahn_tells_a_keepalive_timeout_by_its_not_clean_reason_and_pings_with_12_bytes():
    # ping_timed_out reads wasNotCleanReason, which onAutoPingTimeout sets before dropping
    # the connection (is_closed fires there too); daphne's keepalive payload has autoPingSize
    # (12) bytes, never PING_PAYLOAD_SIZE, so neither side takes the other's pong.
    from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerFactory
    from daphne.server import Server

    from connector.relay.servers import AUTOBAHN_PING_TIMEOUT_REASON, PING_PAYLOAD_SIZE

    checked_against("autobahn")
    assert WebSocketServerFactory().autoPingSize == 12 != PING_PAYLOAD_SIZE
    assert "os.urandom(self.autoPingSize - 12)" in source(WebSocketProtocol._sendAutoPing)
    assert "autoPingSize" not in source(Server.run)
    protocol, transport = open_autobahn_socket()
    transport.registerProducer(mock.Mock(), True)  # a TCP transport needs none; this one does
    closed: list[bool] = []
    protocol.is_closed.addBoth(lambda result: closed.append(True) or result)
    assert protocol.wasNotCleanReason is None
    protocol.onAutoPingTimeout()
    assert protocol.wasNotCleanReason == AUTOBAHN_PING_TIMEOUT_REASON
    assert closed == [True]


def test_daphne_runs_twisted_on_the_asyncio_loop_of_its_applications():
    # watch_pongs' callback runs in autobahn's frame handling, on the reactor: daphne installs
    # Twisted's asyncio reactor on its loop and runs each application as a task on that loop,
    # so the callback runs on the application's thread and loop.
    import daphne.server
    from daphne.server import Server

    checked_against("daphne")
    module = source(daphne.server)
    assert "twisted_loop = asyncio.new_event_loop()" in module
    assert "asyncioreactor.install(twisted_loop)" in module
    create = source(Server.create_application)
    assert "asyncio.ensure_future( application_instance, loop=asyncio.get_event_loop(), )" in create


# --- Twisted -----------------------------------------------------------------------------------


def test_twisted_transports_hold_unsent_bytes_in_two_private_buffers():
    # twisted_unsent: daphne gives the application no way to see what its transport holds for
    # a client, and Twisted's producer API only says "above 64 KiB"; the relay's per-socket
    # bound (CC_MAX_SOCKET_BUFFER) reads FileDescriptor's buffers directly:
    # len(dataBuffer) - offset + _tempDataLen. abortConnection drops a slow client.
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.tcp import Server

    checked_against("Twisted")

    class Reactor:
        def addWriter(self, writer) -> None: ...

        def removeWriter(self, writer) -> None: ...

    class Partial(FileDescriptor):
        def writeSomeData(self, data) -> int:
            return 4  # the kernel took 4 bytes

    def unsent(tcp: FileDescriptor) -> int:
        return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen

    transport = Partial(reactor=Reactor())
    transport.connected = True
    transport.write(b"x" * 10)
    transport.write(b"y" * 5)
    assert transport._tempDataBuffer == [b"x" * 10, b"y" * 5]
    assert unsent(transport) == 15
    transport.doWrite()  # the reactor moves the bytes to dataBuffer and sends some
    assert unsent(transport) == 11 and transport.offset == 4
    assert issubclass(Server, FileDescriptor)  # what daphne's sockets are written through
    assert callable(Server.abortConnection)


def test_twisted_tls_keeps_the_tcp_transport_beneath_it_as_its_transport():
    # _twisted_tcp: under TLS daphne writes to Twisted's TLS protocol, whose encrypted bytes
    # wait in the TCP transport beneath it; the relay walks `.transport` down until it finds
    # an object with _tempDataLen.
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    checked_against("Twisted")
    tls = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol)).buildProtocol(None)
    tcp = StringTransport()
    tls.makeConnection(tcp)
    assert isinstance(tls, TLSMemoryBIOProtocol)
    assert tls.wrappedProtocol.transport is tls  # what the application's protocol writes to
    assert tls.transport is tcp and not hasattr(tls, "_tempDataLen")


# --- uvicorn -----------------------------------------------------------------------------------


def test_uvicorns_send_is_a_method_of_its_protocol_which_holds_the_transport_and_waits_on_its_high_water_mark():
    # socket_buffer: under uvicorn the relay reads the socket's transport through
    # `send.__self__.transport` and raises its high-water mark above CC_MAX_SOCKET_BUFFER,
    # because uvicorn's send waits (pause_writing) once the transport passes it. `make serve`
    # (portal.serve.worker_command) runs this implementation: --ws websockets-sansio.
    from uvicorn.config import WS_PROTOCOLS
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    checked_against("uvicorn")
    assert WS_PROTOCOLS["websockets-sansio"].endswith(":WebSocketsSansIOProtocol")
    assert "self.transport = transport" in source(WebSocketsSansIOProtocol.connection_made)
    assert "await self.writable.wait()" in source(WebSocketsSansIOProtocol.send)
    assert "self.writable.clear()" in source(WebSocketsSansIOProtocol.pause_writing)
    assert "self.app(self.scope, self.receive, self.send)" in source(WebSocketsSansIOProtocol.run_asgi)


def test_uvicorn_reads_the_handshake_request_and_response_only_until_the_socket_is_accepted():
    # handshake_forget sets the protocol's `request` and `response` to None once the socket is
    # accepted (about 3 KiB per idle terminal): uvicorn must read them nowhere else than in
    # handle_connect and in send's accept branch, which runs only before handshake_complete.
    import inspect

    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from connector.relay import servers

    checked_against("uvicorn")
    readers = {
        name
        for name, function in inspect.getmembers(WebSocketsSansIOProtocol, inspect.isfunction)
        if "self.request" in source(function) or "self.response" in source(function)
    }
    assert readers == {"handle_connect", "send"}
    send = source(WebSocketsSansIOProtocol.send)
    guard = send.index("if not self.handshake_complete and self.initial_response is None:")
    assert all(guard < position for position in (send.index("self.response"), send.rindex("self.response")))
    assert send.index('message["type"] == "websocket.accept"') > guard
    assert send.index("self.handshake_complete = True") < send.rindex("self.response")

    class Accepted:
        handshake_complete, request, response = True, object(), object()

        async def send(self, message):
            pass

    class Handshaking(Accepted):
        handshake_complete = False

    accepted, handshaking = Accepted(), Handshaking()
    servers.handshake_forget(accepted.send)
    servers.handshake_forget(handshaking.send)
    assert accepted.request is None and accepted.response is None
    assert handshaking.request is not None and handshaking.response is not None


def test_uvicorn_logs_a_client_s_bad_utf8_with_the_words_the_log_filter_matches():
    # server_logs.ClientFaultsWithoutTraceback turns this record of uvicorn.error into a warning
    # without a traceback, matched by its exact message.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    checked_against("uvicorn")
    protocol = source(WebSocketsSansIOProtocol)
    assert 'self.logger.exception("Invalid UTF-8 sequence received from client.")' in protocol
    assert 'self.logger = logging.getLogger("uvicorn.error")' in protocol


def test_uvicorn_hands_each_pong_to_a_method_the_relay_wraps_and_pings_through_its_sans_io_connection():
    # watch_pongs replaces handle_pong and connection_lost on uvicorn's protocol object: its
    # handle_events calls self.handle_pong(event) for every pong frame, and asyncio's
    # transport (uvloop's too) calls connection_lost once. uvicorn ignores a pong whose
    # payload is not its keepalive's 4 bytes, so ours (PING_PAYLOAD_SIZE) never answer it.
    # ping writes as send_keepalive_ping does (conn.send_ping, then data_to_send to the
    # transport) while handshake_complete and not close_sent.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from connector.relay.servers import PING_PAYLOAD_SIZE

    checked_against("uvicorn")
    assert "elif event.opcode == Opcode.PONG: self.handle_pong(event)" in source(WebSocketsSansIOProtocol.handle_events)
    assert "bytes(event.data) != self.pending_ping_payload" in source(WebSocketsSansIOProtocol.handle_pong)
    keepalive = source(WebSocketsSansIOProtocol.send_keepalive_ping)
    assert 'self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))' in keepalive
    assert "self.conn.send_ping(self.pending_ping_payload)" in keepalive
    assert 'self.transport.write(b"".join(self.conn.data_to_send()))' in keepalive
    assert len(struct.pack("!I", 0)) != PING_PAYLOAD_SIZE
    init = source(WebSocketsSansIOProtocol.__init__)
    for attribute in ("self.conn = ServerProtocol(", "self.handshake_complete = False", "self.close_sent = False"):
        assert attribute in init, attribute
    assert parameters(WebSocketsSansIOProtocol.connection_lost) == ["self", "exc"]
    conn = ServerProtocol(state=State.OPEN)
    conn.send_ping(b"p" * PING_PAYLOAD_SIZE)
    assert b"".join(conn.data_to_send()) == bytes([0x89, PING_PAYLOAD_SIZE]) + b"p" * PING_PAYLOAD_SIZE


def test_uvicorn_closes_a_keepalive_timeout_with_a_close_frame_the_relay_reads_back():
    # ping_timed_out: uvicorn's keepalive_timeout fails the connection with 1011 and
    # "keepalive ping timeout", which websockets keeps as conn.close_sent.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from connector.relay.servers import UVICORN_PING_TIMEOUT_CLOSE

    checked_against("uvicorn")
    assert UVICORN_PING_TIMEOUT_CLOSE == (1011, "keepalive ping timeout")
    assert 'self.conn.fail(1011, "keepalive ping timeout")' in source(WebSocketsSansIOProtocol.keepalive_timeout)
    conn = ServerProtocol(state=State.OPEN)
    conn.fail(*UVICORN_PING_TIMEOUT_CLOSE)
    assert (conn.close_sent.code, conn.close_sent.reason) == UVICORN_PING_TIMEOUT_CLOSE


# --- Django ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_django_compiles_a_values_query_into_sql_parameters_selected_columns_and_converters():
    # Prepared._compile has the ORM compile a values() queryset once, with markers for the
    # values, and Prepared.rows sends that SQL again with the values in the parameters' places
    # and converts each column as ValuesIterable would. It reads: query.get_compiler(using=),
    # compiler.as_sql() -> (sql, params) with each value its own parameter, EmptyResultSet for
    # a query that can match nothing, compiler.select[:col_count] as (expression, sql, alias),
    # Query.selected (the values() names), has_composite_fields, and get_converters ->
    # {position: (functions, expression)}, each called as function(value, expression, connection).
    # On the toolkit's AccessToken, as credentials' bearer lookup (a big-integer primary key:
    # the markers are far below zero).
    from django.core.exceptions import EmptyResultSet
    from django.db import connections, models
    from oauth2_provider.models import AccessToken

    checked_against("Django")

    class Tagged(models.CharField):
        def from_db_value(self, value, expression, connection):
            return f"tagged:{value}"

    marker_text, marker_id = "\u2063cc-marker-guard-1", -(2**62) - 1
    queryset = (
        AccessToken.objects.filter(token_checksum=marker_text, id=marker_id)
        .values("id", "token_checksum")
        .annotate(tag=models.Value("raw", output_field=Tagged(max_length=10)))
    )
    query = queryset.query
    compiler = query.get_compiler(using=queryset.db)
    sql, params = compiler.as_sql()
    assert marker_text in params and marker_id in params
    assert marker_text not in sql and str(marker_id) not in sql
    selected = compiler.select[0 : compiler.col_count]
    assert all(len(entry) == 3 for entry in selected)
    names = [alias for _expression, _sql, alias in selected]
    assert names == ["id", "token_checksum", "tag"] == list(query.selected)
    expressions = [expression for expression, _sql, _alias in selected]
    assert compiler.has_composite_fields(expressions) is False
    converters = compiler.get_converters(expressions)
    functions, expression = converters[2]
    value = "raw"
    for function in functions:
        value = function(value, expression, connections[queryset.db])
    assert value == "tagged:raw"
    empty = AccessToken.objects.filter(id__in=[]).values("id")
    with pytest.raises(EmptyResultSet):
        empty.query.get_compiler(using=empty.db).as_sql()


def test_django_model_state_tells_a_saved_instance_from_a_new_one():
    # The admin's _adopt makes its unsaved form instance stand for the object a service
    # created (_state.adding = False, _state.db = the created one's); sessions'
    # _device_from_row builds a Device from a prepared row with Model.from_db(None, ...).
    from django.contrib.contenttypes.models import ContentType
    from django.db.models.base import ModelState

    checked_against("Django")
    new = ContentType(app_label="a", model="b")
    assert isinstance(new._state, ModelState) and new._state.adding is True and new._state.db is None
    loaded = ContentType.from_db(None, ["id", "app_label", "model"], [7, "a", "b"])
    assert (loaded.pk, loaded.app_label, loaded.model) == (7, "a", "b")
    assert loaded._state.adding is False and loaded._state.db is None
    assert parameters(ContentType.from_db) == ["db", "field_names", "values"]


def test_django_admin_runs_a_posted_change_form_and_delete_in_one_transaction():
    # ServiceModelAdmin lets a service's DomainError out of save_model and delete_model and
    # relies on the admin's transaction.atomic around the view to roll the request back,
    # then shows the form again with the error (changeform_view) or a message (delete_view).
    from django.contrib.admin import ModelAdmin

    checked_against("Django")
    for view, inner in ((ModelAdmin.changeform_view, "_changeform_view"), (ModelAdmin.delete_view, "_delete_view")):
        body = source(view)
        assert f"with transaction.atomic(using=router.db_for_write(self.model)): return self.{inner}(" in body


def test_django_secret_key_rule_constants_are_what_the_settings_check_uses():
    # secret_key_is_strong (portal settings) applies Django's own security.W009 rule with the
    # constants of django.core.checks.security.base, an undocumented module.
    from django.core.checks.security import base

    checked_against("Django")
    assert (base.SECRET_KEY_MIN_LENGTH, base.SECRET_KEY_MIN_UNIQUE_CHARACTERS) == (50, 5)
    assert base.SECRET_KEY_INSECURE_PREFIX == "django-insecure-"
    rule = source(base._check_secret_key)
    for name in ("SECRET_KEY_MIN_LENGTH", "SECRET_KEY_MIN_UNIQUE_CHARACTERS", "SECRET_KEY_INSECURE_PREFIX"):
        assert name in rule


def test_django_backend_operations_quote_names_for_raw_sql():
    # _credential_still_holds (registrations) writes one SELECT by hand, FOR SHARE on PostgreSQL:
    # table and column names quoted by connection.ops.quote_name, the engine by
    # connection.vendor.
    from django.db import connection

    checked_against("Django")
    assert connection.vendor in {"sqlite", "postgresql"}
    assert connection.ops.quote_name("oauth2_provider_accesstoken") == '"oauth2_provider_accesstoken"'
    assert connection.ops.quote_name('"already"') == '"already"'


def test_django_login_required_middleware_answers_anonymous_requests_through_one_method():
    # PortalLoginRequiredMiddleware overrides handle_no_permission(request, view_func) to
    # answer htmx and admin requests its own way.
    from django.contrib.auth.middleware import LoginRequiredMiddleware

    checked_against("Django")
    assert parameters(LoginRequiredMiddleware.handle_no_permission) == ["self", "request", "view_func"]
    assert "return self.handle_no_permission(request, view_func)" in source(LoginRequiredMiddleware.process_view)


def test_django_builds_a_connection_of_its_own_from_a_settings_dict_and_a_backend_module():
    # database_ping (portal health, /readyz) opens a connection apart from the request's:
    # load_backend(ENGINE).DatabaseWrapper(settings_dict, alias), undocumented, used by
    # Django's own connection handler. It connects only when first used.
    import copy

    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.utils import load_backend

    checked_against("Django")
    settings_dict = copy.deepcopy(connections[DEFAULT_DB_ALIAS].settings_dict)
    backend = load_backend(settings_dict["ENGINE"])
    assert parameters(backend.DatabaseWrapper.__init__) == ["self", "settings_dict", "alias"]
    wrapper = backend.DatabaseWrapper(settings_dict, alias="readiness")
    assert isinstance(wrapper, BaseDatabaseWrapper) and wrapper.alias == "readiness"
    assert wrapper.connection is None  # nothing opened yet
    wrapper.close()
    create = source(type(connections).create_connection)
    assert 'backend = load_backend(db["ENGINE"]) return backend.DatabaseWrapper(db, alias)' in create


# --- django-oauth-toolkit, oauthlib ------------------------------------------------------------


def test_oauth_toolkit_checks_a_client_secret_against_its_hash_with_a_private_method():
    # TenantOAuth2Validator.authenticate_client replaces the toolkit's client authentication
    # (one method, bound to the URL's domain) but checks the secret with the toolkit's own
    # _check_secret(provided, stored): a hashed stored secret by check_password.
    from django.contrib.auth.hashers import make_password
    from oauth2_provider.oauth2_validators import OAuth2Validator
    from oauth2_provider.settings import oauth2_settings

    checked_against("django-oauth-toolkit")
    assert parameters(OAuth2Validator._check_secret) == ["self", "provided_secret", "stored_secret"]
    stored = make_password("the-secret", hasher=oauth2_settings.CLIENT_SECRET_HASHER)
    validator = OAuth2Validator()
    assert validator._check_secret("the-secret", stored) is True
    assert validator._check_secret("another", stored) is False


def test_oauth_toolkit_caches_its_oauthlib_core_on_the_view_class_found_by_hasattr():
    # DomainEndpointMixin.get_oauthlib_core caches the core built with our server arguments
    # under the toolkit's own name, `_oauthlib_core`, and tests its own class's __dict__,
    # because the toolkit's hasattr() would also find a core cached on a parent view class.
    from oauth2_provider.views.mixins import OAuthLibMixin

    checked_against("django-oauth-toolkit")
    get_core = source(OAuthLibMixin.get_oauthlib_core)
    assert 'if not hasattr(cls, "_oauthlib_core") or oauth2_settings.ALWAYS_RELOAD_OAUTHLIB_CORE:' in get_core
    assert "cls._oauthlib_core = core_class(server)" in get_core


def test_oauth_toolkit_builds_its_server_from_settings_kwargs_the_token_endpoint_overrides():
    # DomainEndpointMixin.get_server builds the server as the toolkit's get_server does, from
    # oauth2_settings.server_kwargs with token_expires_in replaced by a per-request callable.
    from oauth2_provider.settings import oauth2_settings
    from oauth2_provider.views.mixins import OAuthLibMixin

    checked_against("django-oauth-toolkit")
    assert oauth2_settings.server_kwargs["token_expires_in"] == oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS
    for name in ("get_server_class", "get_validator_class", "get_oauthlib_backend_class"):
        assert inspect.ismethod(getattr(OAuthLibMixin, name)), name  # classmethods
    assert "return server_class(validator_class(), **server_kwargs)" in source(OAuthLibMixin.get_server)


def test_oauth_toolkit_answers_token_and_revocation_requests_as_four_values():
    # DomainEndpointMixin.answer unpacks `_, headers, body, status = respond(request)` for
    # create_token_response and create_revocation_response.
    from oauth2_provider.oauth2_backends import OAuthLibCore

    checked_against("django-oauth-toolkit")
    for method in (OAuthLibCore.create_token_response, OAuthLibCore.create_revocation_response):
        assert "return uri, headers, body, status" in source(method), method.__name__


def test_oauth_toolkit_stores_the_sha256_of_the_raw_token_as_its_checksum():
    # credentials.token_checksum finds access tokens (REST API, relay, revocation) by the
    # checksum the toolkit stores: the hex SHA-256 of the raw token.
    from oauth2_provider.models import AccessToken

    checked_against("django-oauth-toolkit")
    token = AccessToken(token="raw-access-token")
    AccessToken._meta.get_field("token_checksum").pre_save(token, add=True)
    assert token.token_checksum == hashlib.sha256(b"raw-access-token").hexdigest()


def test_oauth_toolkit_admin_lists_tokens_masked_with_a_revoke_action():
    # ReadOnlyTokenMixin subclasses the toolkit's AccessTokenAdmin and RefreshTokenAdmin for
    # their masked token column, and drops their actions (revoking goes through our services,
    # which also close the sockets that used the token).
    from oauth2_provider.admin import AccessTokenAdmin, RefreshTokenAdmin

    checked_against("django-oauth-toolkit")
    assert "masked_token" in AccessTokenAdmin.list_display and "token" not in AccessTokenAdmin.list_display
    assert "token" not in RefreshTokenAdmin.list_display
    assert "revoke_tokens" in AccessTokenAdmin.actions


def test_oauth_toolkit_revokes_an_access_token_given_the_token():
    # oauth.access_token_revoke calls oauth2_provider.models.revoke_access_token(token).
    from oauth2_provider.models import revoke_access_token

    checked_against("django-oauth-toolkit")
    assert parameters(revoke_access_token) == ["access_token"]


def test_oauthlib_request_validator_methods_keep_the_signatures_the_validator_overrides():
    # TenantOAuth2Validator overrides these oauthlib validator methods, positionally.
    from oauthlib.oauth2 import RequestValidator

    checked_against("oauthlib")
    expected = {
        "client_authentication_required": ["self", "request", "args", "kwargs"],
        "authenticate_client": ["self", "request", "args", "kwargs"],
        "authenticate_client_id": ["self", "client_id", "request", "args", "kwargs"],
        "validate_scopes": ["self", "client_id", "scopes", "client", "request", "args", "kwargs"],
        "revoke_token": ["self", "token", "token_type_hint", "request", "args", "kwargs"],
    }
    assert {name: parameters(getattr(RequestValidator, name)) for name in expected} == expected


# --- Django REST framework, django-filter -----------------------------------------------------


def test_drf_request_wraps_the_django_request_as_a_private_attribute():
    # ApiCredentialRateThrottle.ident reads the session of the underlying HttpRequest through
    # request._request: the throttle runs before DRF's authentication has touched the request.
    from django.http import HttpRequest
    from rest_framework.request import Request

    checked_against("djangorestframework")
    django_request = HttpRequest()
    assert Request(django_request)._request is django_request


def test_drf_checks_throttles_after_authentication_which_the_api_moves_first():
    # ThrottledBeforeAuthentication.initial runs check_throttles before the library's initial,
    # which then calls it again after authentication and permissions (a no-op the second time,
    # by a flag on the request); throttled(request, wait) refuses.
    from rest_framework.views import APIView

    checked_against("djangorestframework")
    initial = source(APIView.initial)
    order = [initial.find(f"self.{step}(request)") for step in ("perform_authentication", "check_permissions")]
    order.append(initial.find("self.check_throttles(request)"))
    assert -1 not in order and order == sorted(order)
    assert parameters(APIView.throttled) == ["self", "request", "wait"]
    assert "for throttle in self.get_throttles():" in source(APIView.check_throttles)


def test_drf_set_rollback_marks_only_atomic_request_transactions():
    # The API's exception handler (_database_response) calls set_rollback() as DRF's own
    # handler does. It marks only a transaction ATOMIC_REQUESTS opened; this project does not
    # set it, so the service's own transaction.atomic is what rolls a refused write back.
    from rest_framework import views

    checked_against("djangorestframework")
    assert parameters(views.set_rollback) == []
    assert "if db.settings_dict['ATOMIC_REQUESTS'] and db.in_atomic_block: db.set_rollback(True)" in source(
        views.set_rollback
    )


def test_drf_page_number_pagination_reads_the_page_number_through_one_method():
    # Pagination.get_page_number answers `?page=` given empty with 404; DRF reads the page
    # number through that undocumented method from paginate_queryset.
    from rest_framework.pagination import PageNumberPagination

    checked_against("djangorestframework")
    assert parameters(PageNumberPagination.get_page_number) == ["self", "request", "paginator"]
    assert "page_number = self.get_page_number(request, paginator)" in source(PageNumberPagination.paginate_queryset)


def test_django_filter_builds_a_filters_form_field_from_field_class_and_its_extra_arguments():
    # The API's IdFilter and StrictBooleanFilter set field_class, and IdFilter passes
    # min_value and max_value through to the field; NotBlankChoiceField subclasses
    # django_filters.fields.ChoiceField.
    import django_filters
    import django_filters.fields
    from django import forms

    checked_against("django-filter")

    class Bounded(django_filters.Filter):
        field_class = forms.IntegerField

    built = Bounded(field_name="id", min_value=1, max_value=9).field
    assert isinstance(built, forms.IntegerField) and (built.min_value, built.max_value) == (1, 9)
    assert issubclass(django_filters.fields.ChoiceField, forms.ChoiceField)


# --- prometheus-client -------------------------------------------------------------------------


def test_prometheus_client_chooses_the_exposition_format_from_the_accept_header():
    # The /metrics view (portal health) answers in the format the scraper asks for with
    # prometheus_client.exposition.choose_encoder(accept) -> (encoder, content type), a helper
    # of the library's own HTTP handlers.
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

    checked_against("prometheus-client")
    registry = CollectorRegistry()
    Counter("guard_checks", "a counter", registry=registry).inc()
    encoder, content_type = choose_encoder("")
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4 and b"guard_checks_total 1.0" in encoder(registry)
    encoder, content_type = choose_encoder("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and encoder(registry).endswith(b"# EOF\n")


# --- urllib3 -----------------------------------------------------------------------------------


def test_urllib3_connections_hold_their_socket_in_sock_from_before_the_tls_handshake():
    # The webhook transport's deadline watchdog (_Deadline, for post) shuts down the socket a
    # connection holds in `sock` (http.client's attribute, undocumented) when the attempt's
    # time is up. For https it relies on HTTPSConnection.connect setting `sock` to the TCP
    # socket before the TLS handshake (a dripped handshake is then cut too), and on our
    # connect override (_Watched.connect) finding the connected socket in `sock` afterwards.
    # The pool makes its connections from ConnectionCls with its extra keyword arguments.
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    checked_against("urllib3")
    assert "self.sock = self._new_conn()" in source(HTTPConnection.connect)
    tls_connect = source(HTTPSConnection.connect)
    raw = tls_connect.find("self.sock = sock = self._new_conn()")
    handshake = tls_connect.find("_ssl_wrap_socket_and_match_hostname( sock=sock,")
    assert -1 < raw < handshake < tls_connect.find("self.sock = wrapped_socket")
    for pool in (HTTPConnectionPool, HTTPSConnectionPool):
        new_conn = source(pool._new_conn)
        assert "self.ConnectionCls(" in new_conn and "**self.conn_kw," in new_conn
    assert parameters(HTTPConnection.connect) == ["self"]
