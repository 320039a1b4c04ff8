"""Held answers (contract v1.1 §13): a terminal's frames kept while the claim holder's POS
has no session socket on their endpoint, then delivered to it first and in order.

Where they live: with the device socket that received them, in its process (`Held`, the
device consumer's `held` attribute), so that a frame costs no trip through Redis or the
database to be kept. A POS session socket of the holder that opens on another worker is
told to the device socket as any peer is (`peer.attached`, through the channel layer); the
device socket then sends the held frames through the channel layer to the POS socket's
channel, first, and its live frames after them on the same channel (first in, first out).

Order: while anything is held, every frame of the device socket goes through `Held.lock`
(`forward_after_held`): the held frames are handed over first, then the live one; a live
frame that cannot be handed over joins the end of the queue. When nothing is held the frame
path pays one attribute test (`RelayConsumer.forward`), measured by bench/held.py.

Whose: the held frames belong to the claim holder that was absent (`Held.holder`). The
device socket learns of every claim change from its session group (`claim.changed`, sent
on a first claim and on a takeover; `claim.released`; `session.end`) and discards what it
holds for anybody else, counting it as dropped. A POS socket of this process is checked
by its credential before anything goes to it; one on another process comes after the
`claim.changed` of its claim, on the same channel, so the discard is done by then.

Bounds: `HELD_FRAMES` frames and `HELD_BYTES` bytes per endpoint, `HELD_TOTAL_BYTES` per
process (`budget`), `GRACE_PERIOD` seconds per frame. A frame past a bound is dropped and
counted (`DeviceSession.frames_dropped`, through the session's frame counter), and the
holder's listeners hear `frames_dropped` (`endpoint`, `count`): one event per
`REPORT_DELAY` seconds of dropping, not one per frame. Frames discarded on a release, a
takeover or the end of the session are counted but not reported (the holder is gone).
A device socket that closes discards what it held: its terminal is gone too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from connector import groups, metrics, protocol
from connector.conf import connector_settings
from connector.relay.tasks import spawn

if TYPE_CHECKING:
    from connector.consumers.relay_sockets import DeviceSocketConsumer

logger = logging.getLogger(__name__)

# Dropping goes on while the POS is away: its listeners hear the count once per this many
# seconds rather than once per frame.
REPORT_DELAY = 0.5


class Budget:
    """The bytes held by every device socket of this process (`HELD_TOTAL_BYTES`)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


budget = Budget()
metrics.register_source("held_bytes", lambda: budget.bytes)


class Held:
    """The frames one device socket holds for the claim holder `holder`, oldest first:
    (message to send, payload size, monotonic time held)."""

    __slots__ = ("holder", "frames", "bytes", "lock", "timer")

    def __init__(self, holder: int) -> None:
        self.holder = holder
        self.frames: deque[tuple[dict[str, Any], int, float]] = deque()
        self.bytes = 0
        self.lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, out: dict[str, Any], size: int, now: float) -> bool:
        """Keep a frame at the end, unless a bound would be passed."""
        settings = connector_settings
        if (
            len(self.frames) >= settings.HELD_FRAMES
            or self.bytes + size > settings.HELD_BYTES
            or budget.bytes + size > settings.HELD_TOTAL_BYTES
        ):
            return False
        self.frames.append((out, size, now))
        self.bytes += size
        budget.bytes += size
        return True

    def pop(self) -> None:
        """Forget the oldest frame (handed over or expired)."""
        _out, size, _at = self.frames.popleft()
        self.bytes -= size
        budget.bytes -= size

    def clear(self) -> int:
        """Forget every frame; how many there were."""
        count = len(self.frames)
        budget.bytes -= self.bytes
        self.frames.clear()
        self.bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return count


# --- the device socket's side -----------------------------------------------------------------


def hold(sock: DeviceSocketConsumer, out: dict[str, Any], size: int) -> bool:
    """A device frame nobody took: keep it for the claim holder (True, counted as held or,
    past a bound, as dropped), or False when v1's rule applies (an unclaimed session; a POS
    socket known but the channel layer refusing, with nothing held before it)."""
    holder = sock.holder
    held = sock.held
    if holder is None or (sock.peer_channel is not None and held is None):
        if held is not None:
            discard(sock)
        return False
    if held is not None and held.holder != holder:
        discard(sock)
        held = None
    if held is None:
        held = sock.held = Held(holder)
    now = time.monotonic()
    if not held.add(out, size, now):
        dropped(sock, 1, report=True)
        return True
    metrics.frames.held += 1
    if held.timer is None:
        held.timer = asyncio.get_running_loop().call_later(connector_settings.GRACE_PERIOD, _expire, sock, held)
    return True


def _expire(sock: DeviceSocketConsumer, held: Held) -> None:
    """Drop the frames held longer than the grace period; wake again for the next one."""
    held.timer = None
    if sock.held is not held:
        return
    loop = asyncio.get_running_loop()
    if held.lock.locked():  # being handed over right now: look again in a moment
        held.timer = loop.call_later(0.1, _expire, sock, held)
        return
    grace = connector_settings.GRACE_PERIOD
    deadline = time.monotonic() - grace
    count = 0
    while held.frames and held.frames[0][2] <= deadline:
        held.pop()
        count += 1
    if count:
        dropped(sock, count, report=True)
    if held.frames:
        held.timer = loop.call_later(max(held.frames[0][2] + grace - time.monotonic(), 0.01), _expire, sock, held)
    else:
        sock.held = None


def discard(sock: DeviceSocketConsumer) -> int:
    """Forget what the socket holds, counted as dropped (a release, a takeover, the end of
    the session, the socket closing); how many frames."""
    held = sock.held
    if held is None:
        return 0
    sock.held = None
    count = held.clear()
    if count:
        dropped(sock, count, report=False)
    return count


def claim_moved(sock: DeviceSocketConsumer, holder: int | None) -> None:
    """The session's claim changed hands (or was released: None)."""
    if holder != sock.holder:
        discard(sock)
    sock.holder = holder
    sock.holder_told = True


def dropped(sock: DeviceSocketConsumer, count: int, *, report: bool) -> None:
    """Count frames lost on the device's side: the session's counter (written to
    DeviceSession.frames_dropped and the connection history) and the metric; `report`
    tells the holder's listeners (`frames_dropped`), coalesced."""
    sock.counter.dropped += count
    metrics.frames.dropped_no_peer += count
    if not report or sock.holder is None:
        return
    pending = sock.drops_unreported
    sock.drops_unreported = pending + count
    if not pending:
        asyncio.get_running_loop().call_later(REPORT_DELAY, _report, sock, sock.holder)


def _report(sock: DeviceSocketConsumer, holder: int) -> None:
    count, sock.drops_unreported = sock.drops_unreported, 0
    if count:
        spawn(_send_report(sock, holder, count), name="frames-dropped")


async def _send_report(sock: DeviceSocketConsumer, holder: int, count: int) -> None:
    message = groups.pos_event_message(
        event="frames_dropped",
        session_id=sock.session_id,
        tsn=sock.log_fields.get("tsn", ""),
        event_id=str(uuid.uuid4()),
        occurred_at=protocol.timestamp(timezone.now()),
        fields={"endpoint": sock.endpoint, "count": count},
    )
    try:
        await sock.channel_layer.group_send(groups.listener_group(holder), message)
    except Exception:  # noqa: BLE001 - the drops are counted; only the event is lost
        logger.warning("could not tell %d dropped frames of %s", count, sock.session_id)


# --- handing over ---------------------------------------------------------------------------------


def peer_known(sock: DeviceSocketConsumer) -> None:
    """The device socket learned of a POS session socket: hand the held frames over now,
    not only when the terminal's next frame comes."""
    if sock.held is not None and sock.peer_channel is not None:
        spawn(_flush_locked(sock), name="held-frames")


async def _flush_locked(sock: DeviceSocketConsumer) -> None:
    held = sock.held
    if held is None:
        return
    async with held.lock:
        await _flush(sock, held)


async def forward_after_held(sock: DeviceSocketConsumer, out: dict[str, Any]) -> bool:
    """A live frame while frames are held: those first, then this one (`forward`'s answer),
    or False, and the frame goes to the end of the queue (`hold`)."""
    held = sock.held
    async with held.lock:
        if sock.held is held and not await _flush(sock, held):
            return False
        return await sock.forward(out, after_held=True)


async def _flush(sock: DeviceSocketConsumer, held: Held) -> bool:
    """Hand the held frames to the peer, oldest first; True once none is left. The caller
    holds `held.lock`."""
    peer = sock.peer_local
    if peer is not None and getattr(getattr(peer, "caller", None), "application_id", held.holder) != held.holder:
        discard(sock)  # this process's POS socket is another holder's: its claim.changed is on its way
        return True
    while held.frames:
        if sock.held is not held or sock.peer_channel is None or sock.closed:
            return False
        out, size, _at = held.frames[0]
        if not await sock.forward(out, after_held=True):
            return False
        if sock.held is held and held.frames and held.frames[0][0] is out:
            held.pop()
        sock.relayed(size)
    if sock.held is held:
        sock.held = None
        held.clear()
    return True
