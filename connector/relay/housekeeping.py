"""The relay's housekeeping: one background task per process (per event loop), started with
its first socket.

Heartbeat: every `SWEEP_INTERVAL` seconds (default 5) the process records itself in
`NodeHeartbeat` and runs `nodes.sessions_sweep`. If it finds its own heartbeat row gone
(it stalled past `NODE_TIMEOUT` and another node swept its rows), it writes the rows of its
live sockets again instead of serving sockets nobody can find. A process that dies
without closing its sockets is caught by the other processes' sweeps: its sockets are
forgotten after `NODE_TIMEOUT` (default 30 s) and their sessions go offline.

Every `COUNTER_FLUSH_INTERVAL` seconds (default 2) it adds the frame counters to the
sessions' rows (connector.relay.registry), and at every heartbeat it asks the channel
layer whether Redis lost this process's state (connector.relay.recovery).

Every `LAST_SEEN_INTERVAL` seconds (default 10) it writes `last_seen_at` for the devices
whose sockets on this process sent a frame or a pong since their last write (each socket
sets a flag; one UPDATE for all of them: connector.history.seen_write), each device at most
every other round. Uvicorn (`make serve`) pings every socket every PING_INTERVAL (10 s), so
an online terminal's `last_seen_at` is at most about 2 × LAST_SEEN_INTERVAL (20 s) old;
daphne (`make run`) pings only a socket silent for 20 s, so there it may reach about 30 s.
The same round re-enqueues webhook deliveries whose task was lost (connector.webhooks).
"""

from __future__ import annotations

import asyncio
import logging
import math

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from connector import fleet, history, metrics, nodes
from connector.conf import connector_settings
from connector.relay import recovery, shutdown
from connector.relay.registry import NODE, flush_counters, registry
from connector.relay.tasks import task_of_loop
from connector.webhooks import delivery as webhook_deliveries

logger = logging.getLogger(__name__)

_housekeeping: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def ensure_housekeeping() -> None:
    """Start this process's housekeeping task on the running loop, once (each socket calls
    this as it connects), with the shutdown handler and the channel layer's recovery."""
    loop = asyncio.get_running_loop()
    running = _housekeeping.get(loop)
    if running is None or running.done():
        task_of_loop(_housekeeping, _housekeep, "cloud-connector-housekeeping")
        shutdown.install_shutdown_handler(loop)
        recovery.hook_into(get_channel_layer())


async def _housekeep() -> None:
    flush_every = max(0.05, connector_settings.COUNTER_FLUSH_INTERVAL)
    sweep_every = max(flush_every, connector_settings.SWEEP_INTERVAL)
    seen_every = max(flush_every, connector_settings.LAST_SEEN_INTERVAL)
    beaten = False
    since_sweep = sweep_every
    since_seen = 0.0
    while not registry.shutting_down:
        try:
            if since_seen >= seen_every:
                since_seen = 0.0
                await write_last_seen()
            if since_sweep >= sweep_every:
                since_sweep = 0.0
                alive = await _heartbeat()
                if beaten and not alive:
                    await _presumed_dead()
                beaten = True
                swept = await database_sync_to_async(nodes.sessions_sweep)()
                metrics.nodes_presumed_dead(swept.nodes_dead)
                await database_sync_to_async(webhook_deliveries.sweep)()
                await recovery.check_channel_layer()
            await flush_counters()
            registry.forget_idle_counters()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next round tries again
            logger.exception("relay housekeeping failed")
        await asyncio.sleep(flush_every)
        since_sweep += flush_every
        since_seen += flush_every


async def write_last_seen(*, interval: float | None = None) -> int:
    """`last_seen_at` for the devices heard from since their last write (see the module's
    doc), each written at most every two intervals: a terminal pinged every 10 s pongs every
    10 s, and writing it every other round halves the database's work while its
    `last_seen_at` stays under 2 × LAST_SEEN_INTERVAL (20 s) old."""
    interval = connector_settings.LAST_SEEN_INTERVAL if interval is None else interval
    now = asyncio.get_running_loop().time()
    due = now - 1.5 * interval  # written two rounds ago or earlier (rounds are `interval` apart)
    heard = []
    for sock in list(registry.sockets.values()):
        if getattr(sock, "heard", False) and getattr(sock, "device_id", None) is not None:
            if getattr(sock, "seen_written", -math.inf) > due:
                continue  # written last round: its flag waits for the next
            sock.heard = False
            sock.seen_written = now
            heard.append(sock.device_id)
    if not heard:
        return 0
    return await database_sync_to_async(history.seen_write)(device_ids=sorted(set(heard)), now=timezone.now())


async def _heartbeat() -> bool:
    """Write this node's heartbeat with its snapshot (read here, on the loop: the metric
    sources read the registry) and its refusals of the last minutes (connector.fleet)."""
    snapshot = fleet.node_snapshot()
    try:
        alive = await database_sync_to_async(_beat)(snapshot=snapshot)
    except Exception:
        metrics.heartbeat_recorded(ok=False)
        raise
    metrics.heartbeat_recorded(ok=True)
    return alive


def _beat(*, snapshot: dict) -> bool:
    alive = nodes.node_heartbeat(node=NODE, snapshot=snapshot)
    try:
        fleet.refusals_flush(node=NODE)
    except Exception:  # noqa: BLE001 - the tallies are kept for the next heartbeat; `alive` matters more
        logger.exception("could not write refusal tallies")
    return alive


async def _presumed_dead() -> None:
    # Another node swept our sockets' rows away while this one was stalled (or the rows
    # were deleted): write them again, so that peers on other nodes find them and the
    # sessions are online again; a socket whose slot or session is gone meanwhile closes.
    logger.warning("node %s was presumed dead; re-asserting its %d sockets", NODE, len(registry.sockets))
    metrics.node_reasserted()
    for sock in list(registry.sockets.values()):
        reassert = getattr(sock, "reassert", None)
        if reassert is not None:
            try:
                await reassert()
            except Exception:  # noqa: BLE001 - the others matter more
                logger.exception("could not re-assert %s", sock.channel_name)
