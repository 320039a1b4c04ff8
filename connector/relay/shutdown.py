"""Shutdown (§8, "the server closes sockets with 1001").

On SIGTERM daphne stops its reactor and drops connections without a close frame (clients
see 1006), and uvicorn closes them with 1012. The relay therefore chains its own
SIGTERM/SIGINT handler in front of the server's (installed with the first socket of the
process, connector.relay.housekeeping): it closes every socket of the process with 1001,
flushes the frame counters, forgets this node's sockets, waits up to `SHUTDOWN_GRACE`
seconds (default 2) for the closes to finish, then hands the signal to the server's own
handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from connector import nodes
from connector.conf import connector_settings
from connector.relay.registry import NODE, flush_counters, registry
from connector.relay.tasks import spawn

logger = logging.getLogger(__name__)


async def close_all(code: int) -> None:
    for sock in list(registry.sockets.values()):
        try:
            await sock.close_socket(code)
        except Exception:  # noqa: BLE001 - closing the others matters more
            logger.exception("could not close %s", sock.channel_name)


async def leave_groups(memberships: list[tuple[str, str]]) -> None:
    """The channel-layer groups of the closed sockets, left together (their disconnects skip
    it while the process shuts down): with a layer that can (connector.relay.broker's
    `discard_groups`), in a few round trips instead of one per socket."""
    layer = get_channel_layer()
    if layer is None or not memberships:
        return
    discard_groups = getattr(layer, "discard_groups", None)
    if discard_groups is not None:
        await discard_groups(memberships)
        return
    for group, channel in memberships:
        await layer.group_discard(group, channel)


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
        loop.call_soon_threadsafe(lambda: spawn(_going_away(previous, signum, frame)), context=contextvars.Context())

    return handler


async def _going_away(previous: Any, signum: int, frame: Any) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        count = len(registry.sockets)
        memberships = [(group, sock.channel_name) for sock in registry.sockets.values() for group in sock.groups]
        await close_all(1001)
        closed = loop.time()
        deadline = closed + connector_settings.SHUTDOWN_GRACE
        while registry.sockets and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await leave_groups(memberships)
        await flush_counters()
        forgetting = loop.time()
        await database_sync_to_async(nodes.node_forget)(node=NODE)
        logger.info(
            "relay shutdown: %d sockets closed in %.2f s, their clients gone after %.2f s, node forgotten in %.2f s",
            count,
            closed - started,
            forgetting - started,
            loop.time() - forgetting,
            extra={"event": "shutdown"},
        )
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
