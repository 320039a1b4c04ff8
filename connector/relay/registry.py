"""The live sockets of this process (the registry), their sessions' frame counters, and
handing a control message to one socket.

Every socket of the process is in the registry while it is open, listeners included, so
that a shutdown can close each of them (connector.relay.shutdown); relay sockets are found
here by their peers on the same process (the fast path, see connector.relay).

Quotas: a credential may hold `MAX_SESSION_SOCKETS_PER_CREDENTIAL` POS session sockets
(default 256), counted across the deployment from the `SessionSocket` rows at attach
(session_sockets.pos_socket_attach), and `MAX_LISTENERS_PER_CREDENTIAL` pos-listener sockets
(default 20) per process, counted here (`Registry.listener_admit`): listener sockets have
no rows, and a shared count would need its own writes at every connect and its own sweep
after a process dies. Past either, a new socket is accepted and closed with 4429.

Counters: frames relayed and dropped are counted in memory per session and added to the
`DeviceSession` rows every `COUNTER_FLUSH_INTERVAL` seconds (connector.relay.housekeeping)
and when a socket closes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections import defaultdict
from typing import Any, Protocol

from channels.db import database_sync_to_async

from connector import metrics, nodes

logger = logging.getLogger(__name__)

# This process's name in the database (SessionSocket.node, NodeHeartbeat).
NODE = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


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
        # Tests turn this off to drive the cross-process path (channel layer) within one process.
        self.local_fast_path = True

    def add(self, sock: RelaySocket) -> None:
        self.sockets[sock.channel_name] = sock

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
        if channel_name is None or not self.local_fast_path:
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

    def sockets_open(self) -> dict[str, int]:
        """This process's open sockets by kind (connector.metrics' `sockets_open` source)."""
        counts = dict.fromkeys(metrics.KINDS, 0)
        for sock in self.sockets.values():
            kind = getattr(sock, "kind", None)
            if kind in counts:
                counts[kind] += 1
        return counts

    def sessions_held(self) -> int:
        """Sessions with at least one attached socket on this process (`sessions_held`)."""
        return len({sock.session_id for sock in self.sockets.values() if getattr(sock, "attached", False)})

    def forget_idle_counters(self) -> None:
        busy = {sock.session_id for sock in self.sockets.values()}
        for key in [key for key, c in self.counters.items() if key not in busy and not (c.relayed or c.dropped)]:
            del self.counters[key]


registry = Registry()
metrics.register_source("sockets_open", registry.sockets_open)
metrics.register_source("sessions_held", registry.sessions_held)


def shutting_down() -> bool:
    """Whether this process is draining (portal.health's readiness asks, see portal.apps)."""
    return registry.shutting_down


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
        await database_sync_to_async(nodes.session_counters_add)(deltas=deltas)
    except Exception:  # noqa: BLE001 - keep the counts for the next flush
        registry.give_back(deltas)
        logger.exception("could not write frame counters")
