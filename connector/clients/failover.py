"""A POS session that survives the loss of the cloud (contract v1.1 §14, the seed's
connectivity fallback mode): it relays over Cloud Connector and, when the cloud path has
been gone for longer than `fallback_after` seconds (default 5) and the terminal registered
a `local_url`, carries on directly with the terminal's own server on the shop's network;
it returns to the cloud as soon as the cloud path works again.

    async with FailoverSession("https://cc.example.com", token=token, tsn="230123456") as till:
        await till.send('{"request": {...}}')
        print(await till.recv(timeout=30))
        switch = await till.next_switch()      # Switch(path="local", ...) when it happens

The cloud path works when the pos-listener answers, the claim holds, the terminal is online
(the `devices` answer; `device_offline` events while it lasts) and the session socket is
open. The caller sees one stream of frames, in the order they arrived, from whichever path
carried them, and a `Switch` for every change of path (`switches`, `on_switch`). What is
sent is never queued (a payment must not start late): `send` without a path raises
`NoPath`, and the caller decides, as it would for a 4503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connector.clients.common import ClientError, Frame, endpoint_url
from connector.clients.pos import Event, PosClient, SessionSocket

logger = logging.getLogger(__name__)

CLOUD = "cloud"
LOCAL = "local"


class NoPath(ClientError):
    """Neither the cloud nor the local network reaches the terminal right now."""


@dataclass(frozen=True)
class Switch:
    """The session changed path: now `path` ("cloud" or "local"), `at` (Unix time), why."""

    path: str
    at: float
    reason: str


class FailoverSession:
    """One endpoint of one terminal, over the cloud or the local network (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        tsn: str,
        endpoint: str | None = None,
        fallback_after: float = 5.0,
        retry_interval: float = 0.5,
        on_switch: Callable[[Switch], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if fallback_after < 0 or retry_interval <= 0:
            raise ValueError("fallback_after must be >= 0 and retry_interval > 0")
        self.url = url
        self.token = token
        self.tsn = tsn
        self.endpoint = endpoint
        self.fallback_after = fallback_after
        self.retry_interval = retry_interval
        self.on_switch = on_switch
        self.on_event = on_event
        self.connect_kwargs = dict(connect_kwargs or {})
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.switches: asyncio.Queue[Switch] = asyncio.Queue()
        self.path: str | None = None
        self.local_url: str | None = None
        self.session_id: str | None = None
        self._pos: PosClient | None = None
        self._cloud: SessionSocket | None = None
        self._local: ClientConnection | None = None
        self._lost = asyncio.Event()  # the current path went away
        self._device_offline = False
        self._task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- public ----------------------------------------------------------------------

    async def start(self) -> FailoverSession:
        """Claim the terminal and open its endpoint over the cloud; the cloud must work now
        (the local address is learnt from the claim)."""
        reason = await self._cloud_up()
        if reason is not None:
            await self._cloud_down()
            raise NoPath(f"the cloud path to {self.tsn} does not work: {reason}")
        self.path = CLOUD
        self._task = asyncio.create_task(self._supervise(), name=f"failover {self.tsn}")
        return self

    async def send(self, frame: Frame) -> None:
        """Send on the current path; NoPath when there is none (never queued)."""
        try:
            if self.path == CLOUD and self._cloud is not None:
                await self._cloud.send(frame)
                return
            if self.path == LOCAL and self._local is not None:
                await self._local.send(frame)
                return
        except (ClientError, ConnectionClosed) as exc:
            self._lost.set()
            raise NoPath(f"the {self.path} path to {self.tsn} just went away: {exc}") from None
        raise NoPath(f"no path to {self.tsn} right now")

    async def recv(self, timeout: float | None = None) -> Frame:
        """The next frame from the terminal, whichever path brought it."""
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def next_switch(self, timeout: float | None = None) -> Switch:
        async with asyncio.timeout(timeout):
            return await self.switches.get()

    async def close(self) -> None:
        """Stop switching, release the claim if the cloud answers, close both paths."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pos is not None and self.session_id is not None and self._pos.closed is None:
            with contextlib.suppress(ClientError, TimeoutError, OSError):
                await self._pos.release(self.session_id)
        await self._cloud_down()
        await self._local_down()
        for task in list(self._readers):
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def __aenter__(self) -> FailoverSession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- switching -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            lost_at = time.monotonic()
            was = self.path
            self.path = None
            if was == CLOUD:
                await self._cloud_down()
            else:
                await self._local_down()
            logger.info("%s: the %s path is lost", self.tsn, was)
            await self._regain(lost_at, was)

    async def _regain(self, lost_at: float, was: str | None) -> None:
        """Try the cloud again every `retry_interval`; past `fallback_after`, the local
        network too. Back on the cloud, a local connection is closed."""
        while not self._closing:
            reason = await self._cloud_up()
            if reason is None:
                self._set_path(CLOUD, "the cloud path works again" if was == LOCAL else "the cloud path is back")
                return
            await self._cloud_down()
            waited = time.monotonic() - lost_at
            if self.local_url and waited >= self.fallback_after:
                local = await self._local_up()
                if local is None:
                    self._set_path(LOCAL, f"the cloud path has been gone for {waited:.1f} s: {reason}")
                    await self._while_local()
                    return
                logger.info("%s: the local network does not answer either: %s", self.tsn, local)
            await asyncio.sleep(self.retry_interval)

    async def _while_local(self) -> None:
        """On the local network: ask the cloud every `retry_interval`; the first time its
        path works, switch back (the local connection closes after the cloud one opened)."""
        while not self._closing and not self._lost.is_set():
            await asyncio.sleep(self.retry_interval)
            if await self._cloud_up() is None:
                self._set_path(CLOUD, "the cloud path works again")
                await self._local_down()
                return
            await self._cloud_down()
        # The local connection went (the terminal is back on the cloud, or gone): the
        # supervisor's next round looks for a path again.

    def _set_path(self, path: str, reason: str) -> None:
        self._lost.clear()
        self.path = path
        switch = Switch(path=path, at=time.time(), reason=reason)
        logger.info("%s: now over the %s: %s", self.tsn, path, reason)
        self.switches.put_nowait(switch)
        if self.on_switch is not None:
            self.on_switch(switch)

    # -- the cloud path ------------------------------------------------------------------

    async def _cloud_up(self) -> str | None:
        """Open the cloud path (listener, claim, terminal online, session socket); None when
        it works, else why not."""
        pos = PosClient(self.url, token=self.token, on_event=self._event, connect_kwargs=self.connect_kwargs)
        self._pos = pos
        try:
            await pos.connect()
            claim = await pos.claim(self.tsn)
            self.session_id = claim.session_id
            self.local_url = claim.resource.get("local_url") or self.local_url
            self.endpoint = self.endpoint or claim.endpoints[0]
            statuses = await pos.devices()
            if not any(d.online for d in statuses if d.tsn.lower() == claim.tsn.lower()):
                return "the terminal is offline"
            self._device_offline = False
            session = await pos.open_session(claim, self.endpoint)
        except (ClientError, OSError, TimeoutError, InvalidHandshake) as exc:
            return str(exc) or type(exc).__name__
        self._cloud = session
        self._read(self._cloud_frames(session))
        self._read(self._cloud_listener(pos))
        return None

    async def _cloud_frames(self, session: SessionSocket) -> None:
        async for frame in session:
            self.frames.put_nowait(frame)
        if self._cloud is session:
            self._lost.set()

    async def _cloud_listener(self, pos: PosClient) -> None:
        """The listener closing (the server went away) loses the cloud path too: the events
        that tell the terminal's presence no longer come."""
        await pos.wait_closed()
        if self._pos is pos and self.path == CLOUD:
            self._lost.set()

    def _event(self, event: Event) -> None:
        if event.session_id == self.session_id and event.type in ("device_offline", "device_online"):
            self._device_offline = event.type == "device_offline"
            if self._device_offline and self.path == CLOUD:
                self._lost.set()  # its sockets are gone: a frame now would close ours with 4503
        if self.on_event is not None:
            self.on_event(event)

    async def _cloud_down(self) -> None:
        session, pos = self._cloud, self._pos
        self._cloud, self._pos = None, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        if pos is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await pos.close()

    # -- the local path ------------------------------------------------------------------

    async def _local_up(self) -> str | None:
        endpoint = self.endpoint or "/"
        try:
            async with asyncio.timeout(5):
                ws = await connect(endpoint_url(self.local_url or "", endpoint), **self.connect_kwargs)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            return str(exc) or type(exc).__name__
        self._local = ws
        self._read(self._local_frames(ws))
        return None

    async def _local_frames(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                self.frames.put_nowait(frame)
        if self._local is ws:
            self._lost.set()

    async def _local_down(self) -> None:
        ws, self._local = self._local, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "back on the cloud")

    def _read(self, reader: Any) -> None:
        task = asyncio.create_task(reader)
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
