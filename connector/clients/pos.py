"""A POS client: access token, pos-listener control requests and events, session sockets.

It follows docs/protocol.md §1, §5 and §6 (the seed's steps 5 to 11):

    token = await fetch_token("http://127.0.0.1:8000", domain="demo", client_id=cid, client_secret=secret)
    async with PosClient("http://127.0.0.1:8000", token=token.access_token) as pos:
        claim = await pos.claim("230123456")
        session = await pos.open_session(claim, "/upp/v1/transaction")
        await session.send('{"request": {...}}')
        print(await session.recv())
        await pos.release(claim.session_id)

The token request uses the standard library (urllib, in a worker thread): it is one form
POST with HTTP Basic authentication, not worth a runtime dependency, and it keeps this
module importable wherever `websockets` is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connector.clients.common import (
    POS_LISTENER_PATH,
    ClientError,
    CloseReport,
    ControlError,
    Frame,
    ProtocolViolation,
    SocketClosed,
    bearer_header,
    close_of,
    close_retry_after,
    encode_request,
    endpoint_url,
    http_base,
    new_flow_id,
    parse_envelope,
    retry_delay,
    websocket_base,
)

logger = logging.getLogger(__name__)

EVENT_TYPES = ("device_online", "device_offline", "session_taken_over", "session_ended")


# -- §1 access tokens ----------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class TokenRefused(ClientError):
    """The token endpoint answered with an RFC 6749 §5.2 error."""

    def __init__(self, status: int, error: str, description: str = "") -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"token refused: {status} {error}" + (f" – {description}" if description else ""))


def token_url(url: str, domain: str) -> str:
    return f"{http_base(url)}/oauth2/v1/{quote(domain, safe='')}/token"


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-encoded before they are joined and base64ed."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def fetch_token_sync(
    url: str, *, domain: str, client_id: str, client_secret: str, scope: str | None = None, timeout: float = 10
) -> AccessToken:
    """Step 5: a client credentials grant against POST {url}/oauth2/v1/{domain}/token."""
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
    request = urllib.request.Request(
        token_url(url, domain),
        data=urlencode(form).encode(),
        headers={
            "Authorization": basic_credentials(client_id, client_secret),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise token_error(exc.code, exc.read()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"token request to {request.full_url} failed: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise ClientError(f"token endpoint {request.full_url} answered something that is not JSON") from None
    try:
        return AccessToken(
            access_token=str(body["access_token"]),
            token_type=str(body.get("token_type", "Bearer")),
            expires_in=int(body.get("expires_in") or 0),
            scope=str(body.get("scope") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"token endpoint answered without an access_token: {body}") from None


def token_error(status: int, body: bytes) -> TokenRefused:
    try:
        data = json.loads(body)
        return TokenRefused(status, str(data.get("error", "error")), str(data.get("error_description") or ""))
    except (ValueError, AttributeError):
        return TokenRefused(status, "error", body[:200].decode(errors="replace"))


async def fetch_token(
    url: str, *, domain: str, client_id: str, client_secret: str, scope: str | None = None, timeout: float = 10
) -> AccessToken:
    """fetch_token_sync in a worker thread, so that the event loop keeps running."""
    return await asyncio.to_thread(
        fetch_token_sync,
        url,
        domain=domain,
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        timeout=timeout,
    )


# -- §5 pos-listener ---------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A successful claim: where to open the session sockets (step 8)."""

    session_id: str
    session_url: str
    endpoints: list[str]
    tsn: str
    resource: dict[str, Any]

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> Claim:
        try:
            return cls(
                session_id=str(resource["session_id"]),
                session_url=str(resource["session_url"]),
                endpoints=[str(e) for e in resource.get("endpoints") or ["/"]],
                tsn=str(resource.get("tsn") or ""),
                resource=dict(resource),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolViolation(f"claim answer without {exc}: {dict(resource)}") from None

    def url(self, endpoint: str = "/") -> str:
        return endpoint_url(self.session_url, endpoint)


@dataclass(frozen=True)
class DeviceStatus:
    tsn: str
    online: bool
    claimed: bool
    claimed_by_you: bool


@dataclass(frozen=True)
class Event:
    """A pos-listener event (device_online, device_offline, session_taken_over, session_ended)."""

    type: str
    session_id: str | None
    tsn: str | None
    flow_id: str | None
    resource: dict[str, Any]


class SessionSocket:
    """One POS session socket on `session_url + E` (§6): frames go to and come from the device."""

    def __init__(self, endpoint: str, ws: ClientConnection) -> None:
        self.endpoint = endpoint
        self.ws = ws

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: Frame) -> None:
        try:
            await self.ws.send(frame)
        except ConnectionClosed as exc:
            raise SocketClosed(f"session socket {self.endpoint}", *close_of(exc)) from None

    async def recv(self, timeout: float | None = None) -> Frame:
        """The next frame from the device; SocketClosed with the close code when the socket ends."""
        try:
            async with asyncio.timeout(timeout):
                return await self.ws.recv()
        except ConnectionClosed as exc:
            raise SocketClosed(f"session socket {self.endpoint}", *close_of(exc)) from None

    async def wait_closed(self, timeout: float | None = None) -> CloseReport:
        """Wait for the server to close this socket, discarding frames; report the close."""
        with contextlib.suppress(SocketClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv()
        return CloseReport(self.endpoint, self.ws.close_code, self.ws.close_reason or "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def __aiter__(self) -> AsyncIterator[Frame]:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                yield frame


class PosClient:
    """A connection to the pos-listener: control requests matched by flow id, events queued.

    - `request()` sends `{"request": {"flow_id", "resource"}}` and returns the resource of
      the response with the same flow id; an error response raises ControlError.
    - Events go to `events` (an asyncio.Queue) and to `on_event` if given.
    - When the listener closes, pending requests fail with SocketClosed and `closed` tells
      the close code (4401: token, 4403: scope or origin, 1001: server going away, 1013:
      the server sheds load). `reconnect()` opens it again with backoff and jitter.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str,
        on_event: Callable[[Event], None] | None = None,
        request_timeout: float = 10,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = websocket_base(url)
        self.token = token
        self.on_event = on_event
        self.request_timeout = request_timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.closed: CloseReport | None = None
        self.sessions: list[SessionSocket] = []
        self._ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed_event = asyncio.Event()
        self._failures = 0  # reconnections since a request was last answered

    @classmethod
    async def with_credentials(
        cls, url: str, *, domain: str, client_id: str, client_secret: str, **kwargs: Any
    ) -> PosClient:
        """A client (not yet connected) holding a fresh token with scope cloud-connector."""
        token = await fetch_token(
            url, domain=domain, client_id=client_id, client_secret=client_secret, scope="cloud-connector"
        )
        return cls(url, token=token.access_token, **kwargs)

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> PosClient:
        """Step 6. The server accepts a bad token and then closes 4401: that shows on the
        first request (SocketClosed) and in `closed`."""
        try:
            self._ws = await connect(
                self.url + POS_LISTENER_PATH, additional_headers=bearer_header(self.token), **self.connect_kwargs
            )
        except (ConnectionClosed, InvalidHandshake) as exc:
            raise SocketClosed("pos-listener", *close_of(exc)) from None
        self._reader = asyncio.create_task(self._read(self._ws), name="pos-listener reader")
        return self

    async def reconnect(self, *, min_delay: float = 0.5, max_delay: float = 30.0, max_attempts: int = 10) -> PosClient:
        """Open the pos-listener again after the server closed it (1001 on a restart, 1013
        when it sheds load, 1006 on a lost connection), as docs/protocol.md ("Reconnecting
        after a loss or a restart") asks: wait a delay with full jitter, plus the last
        close's `retry_after` if it was a 1013, then connect; a refused handshake is tried
        again, up to `max_attempts` times, after which SocketClosed says why.

        Claims live on the server and survive a restart within the grace period: nothing is
        claimed again, and `open_session` reopens the session sockets as before. A shed
        listener shows on the next request (SocketClosed with 1013); calling `reconnect()`
        again then waits longer, the attempts counting on until a request is answered."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        await self._drop_listener()
        last = self.closed
        hint = close_retry_after(last.code, last.reason) if last is not None else None
        why = str(last) if last is not None else "not connected"
        for _ in range(max_attempts):
            self._failures += 1
            await asyncio.sleep(retry_delay(self._failures, min_delay=min_delay, max_delay=max_delay, retry_after=hint))
            self.closed = None
            self._closed_event = asyncio.Event()
            try:
                return await self.connect()
            except SocketClosed as exc:
                why, hint = str(exc), close_retry_after(exc.code, exc.reason)
            except (OSError, TimeoutError) as exc:
                why, hint = f"pos-listener: {exc or type(exc).__name__}", None
            self.closed = CloseReport("pos-listener", None, why)
        raise SocketClosed("pos-listener", None, f"not reopened after {max_attempts} attempts; last: {why}")

    async def _drop_listener(self) -> None:
        """Forget the listener (closing it if it is still open) and the closed session sockets."""
        if self._ws is not None and self.closed is None:
            await self._ws.close(1000, "reconnecting")
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._ws, self._reader = None, None
        self.sessions = [session for session in self.sessions if session.close_code is None]

    async def close(self) -> None:
        """Close the session sockets and the listener (1000)."""
        for session in self.sessions:
            await session.close()
        if self._ws is not None:
            await self._ws.close(1000)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> PosClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_closed(self, timeout: float | None = None) -> CloseReport:
        """Wait until the server closes the listener; report its close code."""
        async with asyncio.timeout(timeout):
            await self._closed_event.wait()
        assert self.closed is not None
        return self.closed

    # -- control requests ------------------------------------------------------------------

    async def request(self, resource: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send a control request and await the response with the same flow id."""
        if self._ws is None:
            raise ClientError("the POS client is not connected")
        if self.closed is not None:
            raise SocketClosed("pos-listener", self.closed.code, self.closed.reason)
        flow_id = new_flow_id()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[flow_id] = answer
        try:
            await self._ws.send(encode_request(flow_id, resource))
            async with asyncio.timeout(timeout or self.request_timeout):
                result = await answer
        except ConnectionClosed as exc:
            raise SocketClosed("pos-listener", *close_of(exc)) from None
        finally:
            self._pending.pop(flow_id, None)
        self._failures = 0  # answered: the listener is served, a later loss starts a new series
        if result.get("status") != "ok":
            raise ControlError(result, action=str(resource.get("action") or "request"))
        return result

    async def claim(self, tsn: str, *, force: bool = False) -> Claim:
        """Steps 7–8: claim the device's session; `force` takes it over from another holder."""
        return Claim.from_resource(await self.request({"action": "claim", "tsn": tsn, "force": force}))

    async def release(self, session_id: str) -> dict[str, Any]:
        return await self.request({"action": "release", "session_id": session_id})

    async def devices(self) -> list[DeviceStatus]:
        resource = await self.request({"action": "devices"})
        return [
            DeviceStatus(
                tsn=str(d.get("tsn")),
                online=bool(d.get("online")),
                claimed=bool(d.get("claimed")),
                claimed_by_you=bool(d.get("claimed_by_you")),
            )
            for d in resource.get("devices") or []
        ]

    async def next_event(self, *types: str, timeout: float | None = 10) -> Event:
        """The next event; with `types`, the next one of those types (others are discarded).
        Raises SocketClosed if the listener closes first."""
        async with asyncio.timeout(timeout):
            while True:
                if self.events.empty() and self.closed is not None:
                    raise SocketClosed("pos-listener", self.closed.code, self.closed.reason)
                event = await self._next_or_closed()
                if not types or event.type in types:
                    return event

    async def _next_or_closed(self) -> Event:
        getter = asyncio.ensure_future(self.events.get())
        closer = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        assert self.closed is not None
        raise SocketClosed("pos-listener", self.closed.code, self.closed.reason)

    # -- §6 session sockets ---------------------------------------------------------------

    async def open_session(self, claim: Claim | str, endpoint: str = "/") -> SessionSocket:
        """Step 9: open `session_url + E` with the bearer token."""
        base = claim.session_url if isinstance(claim, Claim) else claim
        try:
            ws = await connect(
                endpoint_url(base, endpoint), additional_headers=bearer_header(self.token), **self.connect_kwargs
            )
        except (ConnectionClosed, InvalidHandshake) as exc:
            raise SocketClosed(f"session socket {endpoint}", *close_of(exc)) from None
        session = SessionSocket(endpoint, ws)
        self.sessions.append(session)
        return session

    # -- the reader ------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed = CloseReport("pos-listener", ws.close_code, ws.close_reason or "")
            self._closed_event.set()
            for flow_id, future in list(self._pending.items()):
                if not future.done():
                    future.set_exception(SocketClosed("pos-listener", self.closed.code, self.closed.reason))
                self._pending.pop(flow_id, None)

    def _dispatch(self, frame: Frame) -> None:
        try:
            envelope = parse_envelope(frame)
        except ProtocolViolation as exc:
            logger.warning("pos-listener: %s", exc)
            return
        if envelope.kind == "response":
            future = self._pending.get(envelope.flow_id or "")
            if future is None or future.done():
                logger.warning("pos-listener: a response for no pending request: %s", envelope)
            else:
                future.set_result(envelope.resource)
        elif envelope.kind == "event":
            event = Event(
                type=str(envelope.resource.get("type")),
                session_id=envelope.resource.get("session_id"),
                tsn=envelope.resource.get("tsn"),
                flow_id=envelope.flow_id,
                resource=envelope.resource,
            )
            self.events.put_nowait(event)
            if self.on_event is not None:
                self.on_event(event)
        else:
            logger.warning("pos-listener: unexpected %s from the server", envelope.kind)
