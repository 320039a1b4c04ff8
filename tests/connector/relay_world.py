"""The relay's tests in process: Channels communicators on the WebSocket routes, and the
protocol's steps (register, open a listener, claim, open a session socket) as helpers. The
callers are the personas of tests/world.py: its home POS (the owner of the store's terminal),
the aggregator's application (a member), the neighbour POS and the far POS (outsiders)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from connector.routing import websocket_urlpatterns

APP = URLRouter(websocket_urlpatterns)
TIMEOUT = 5
HOST = "testserver"


def communicator(
    path: str,
    *,
    token: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("192.0.2.10", 40000),
) -> WebsocketCommunicator:
    all_headers = [(b"host", HOST.encode())] + list(headers or [])
    if token is not None:
        all_headers.append((b"authorization", f"Bearer {token}".encode()))
    comm = WebsocketCommunicator(APP, path, headers=all_headers)
    comm.scope["client"] = list(client)
    comm.scope["server"] = ["127.0.0.1", 80]
    return comm


def local_path(url: str) -> str:
    """The path of a ws:// URL handed out by the server."""
    prefix = f"ws://{HOST}"
    assert url.startswith(prefix), url
    return url[len(prefix) :]


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    """The server closes the socket with `code`; the client side then hangs up."""
    message = await comm.receive_output(TIMEOUT)
    assert message == {"type": "websocket.close", "code": code}, message
    await comm.send_input({"type": "websocket.disconnect", "code": code})
    await comm.wait(TIMEOUT)


async def refused_with(comm: WebsocketCommunicator, code: int) -> None:
    """Accepted, then closed with `code`: how every refusal of the contract looks."""
    connected, _ = await comm.connect(TIMEOUT)
    assert connected
    await expect_close(comm, code)


async def opened(comm: WebsocketCommunicator) -> WebsocketCommunicator:
    connected, _ = await comm.connect(TIMEOUT)
    assert connected
    assert await comm.receive_nothing(0.05), "the socket was closed right after opening"
    return comm


async def hang_up(comm: WebsocketCommunicator) -> None:
    await comm.disconnect(1000, TIMEOUT)


def request(resource: dict[str, Any], flow_id: str = "1") -> str:
    return json.dumps({"request": {"flow_id": flow_id, "resource": resource}})


async def register(
    tsn: str,
    credentials: dict | str | None = None,
    *,
    endpoints: list[str] | None = None,
    token: str | None = None,
    client: tuple[str, int] = ("192.0.2.10", 40000),
) -> dict[str, Any]:
    """One registration on device-listener; returns the response resource (the socket is
    closed with 1000 afterwards, as the contract says)."""
    resource: dict[str, Any] = {"tsn": tsn}
    if endpoints is not None:
        resource["endpoints"] = endpoints
    if credentials is not None:
        resource["custom_registration_data"] = credentials
    comm = communicator("/cloud-connector/v1/device-listener", token=token, client=client)
    await opened(comm)
    await comm.send_to(text_data=request(resource))
    answer = json.loads(await comm.receive_from(TIMEOUT))
    await expect_close(comm, 1000)
    assert answer["response"]["flow_id"] == "1"
    return answer["response"]["resource"]


async def device_socket(registration: dict[str, Any], endpoint: str = "/") -> WebsocketCommunicator:
    url = registration["connection_url"] + ("" if endpoint == "/" else endpoint)
    header = registration["authorization_header"]["Authorization"]
    comm = communicator(local_path(url), headers=[(b"authorization", header.encode())])
    return await opened(comm)


RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class EventNumbers:
    """What one listener socket's events must carry besides their v1 fields (v1.1 §12):
    a unique `event_id`, `occurred_at` in RFC 3339 with milliseconds, and `seq` counting
    1, 2, 3 ... with no gap."""

    def __init__(self) -> None:
        self.seq = 0
        self.ids: set[str] = set()

    def checked(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource without those three fields, once they are checked."""
        resource = dict(resource)
        event_id, occurred_at, seq = resource.pop("event_id"), resource.pop("occurred_at"), resource.pop("seq")
        uuid.UUID(event_id)
        assert event_id not in self.ids, f"event {event_id} told twice to one socket"
        self.ids.add(event_id)
        assert RFC3339_MS.fullmatch(occurred_at), occurred_at
        assert seq == self.seq + 1, (seq, self.seq)
        self.seq = seq
        return resource


class Listener:
    """A pos-listener socket with request/response helpers."""

    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.numbers = EventNumbers()
        self.comm = comm
        self.flow = 0

    @classmethod
    async def open(cls, token: str) -> Listener:
        return cls(await opened(communicator("/cloud-connector/v1/pos-listener", token=token)))

    async def ask(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.flow += 1
        await self.comm.send_to(text_data=request(resource, flow_id=f"f{self.flow}"))
        while True:
            message = json.loads(await self.comm.receive_from(TIMEOUT))
            if "response" in message:
                assert message["response"]["flow_id"] == f"f{self.flow}"
                return message["response"]["resource"]

    async def claim(self, tsn: str, force: bool = False) -> dict[str, Any]:
        return await self.ask({"action": "claim", "tsn": tsn, "force": force})

    async def event(self) -> dict[str, Any]:
        message = json.loads(await self.comm.receive_from(TIMEOUT))
        assert "event" in message, message
        return self.numbers.checked(message["event"]["resource"])

    async def close(self) -> None:
        await hang_up(self.comm)


async def session_socket(claim: dict[str, Any], token: str, endpoint: str = "/") -> WebsocketCommunicator:
    url = claim["session_url"] + ("" if endpoint == "/" else endpoint)
    return await opened(communicator(local_path(url), token=token))


def late_peer_attached(monkeypatch, delays=None, *, lost: bool = False) -> set:
    """Deliver `peer.attached` events (sent straight to the peer socket's channel,
    connector.session_sockets) late, as a busy channel layer might: each after the next of
    `delays` (seconds, default half a second each), or never (`lost`). Every other message
    goes at once. Returns the pending deliveries (the event loop holds tasks only weakly)."""
    import asyncio
    import itertools

    from channels.layers import channel_layers

    layer = channel_layers["default"]
    original = layer.send
    delays = iter(delays if delays is not None else itertools.repeat(0.5))
    pending: set[asyncio.Task] = set()

    async def later(channel: str, message: dict, delay: float) -> None:
        await asyncio.sleep(delay)
        await original(channel, message)

    async def send(channel: str, message: dict) -> None:
        if message.get("type") != "peer.attached":
            await original(channel, message)
            return
        if not lost:
            task = asyncio.get_running_loop().create_task(later(channel, message, next(delays)))
            pending.add(task)
            task.add_done_callback(pending.discard)

    monkeypatch.setattr(layer, "send", send)
    return pending
