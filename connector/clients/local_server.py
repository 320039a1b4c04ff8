"""The simulated terminal's own WebSocket server on the shop's network (contract v1.1 §14, the
seed's connectivity fallback mode): while its cloud link is down, the terminal switches "from
a client on the Cloud Connector to a server on the local network", and a POS on that network
opens `local_url + E` and exchanges the same frames it would through the relay.

One connection per endpoint at a time, as on the relay: a newer one replaces the older
(closed 4409). A path that is not one of the terminal's endpoints is refused (404 at the
handshake). No authentication: the simulator stands for a terminal whose local protocol is
its own business; a real terminal protects its local server as its maker decides.

The simulated terminal (connector.clients.terminal) gets one from its `local_port` and
`local_host` options (`local_server`), answers with the same script as on the cloud, and
closes it (1001) once back on the cloud, which tells a POS on the local network to return.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connector.clients.common import Frame, SocketClosed

logger = logging.getLogger(__name__)

#: The answer to one frame (None: no answer), as the terminal's script gives it.
Answerer = Callable[[str, Frame], Awaitable[Frame | None]]


class LocalServer:
    """Serves `endpoints` on ws://`host`:`port` while `start()`ed; `stop()` closes it and
    every connection (1001), so that a POS on the local network knows the cloud is back."""

    def __init__(self, *, host: str, port: int, endpoints: list[str], answer: Answerer) -> None:
        self.host = host
        self.port = port
        self.endpoints = endpoints
        self.answer = answer
        self.connections: dict[str, ServerConnection] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is None:
            self._server = await serve(self._handle, self.host, self.port, process_request=self._check_path)
            logger.info("serving %s locally on %s", ", ".join(self.endpoints), self.url)

    async def fall_back(self, tsn: str) -> None:
        """The cloud link is down: serve the endpoints meanwhile. A port that cannot be served
        is logged, not raised: the terminal keeps trying to come back to the cloud."""
        if self.serving:
            return
        try:
            await self.start()
        except OSError as exc:
            logger.warning("%s: cannot serve locally on %s: %s", tsn, self.url, exc)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=False)
        for ws in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await ws.close(1001, "the cloud is back")
        await server.wait_closed()
        self.connections.clear()
        logger.info("local server on %s stopped", self.url)

    async def send(self, endpoint: str, frame: Frame) -> None:
        ws = self.connections.get(endpoint)
        if ws is None:
            raise SocketClosed(f"local socket {endpoint}", None, "no POS connected locally")
        try:
            await ws.send(frame)
        except ConnectionClosed as exc:
            raise SocketClosed(f"local socket {endpoint}", exc.rcvd.code if exc.rcvd else None, "") from None

    def _endpoint(self, path: str) -> str:
        endpoint = path.split("?", 1)[0] or "/"
        return endpoint.rstrip("/") or "/"

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._endpoint(request.path) not in self.endpoints:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint on this terminal\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        endpoint = self._endpoint(ws.request.path)
        previous = self.connections.get(endpoint)
        self.connections[endpoint] = ws
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous.close(4409, "replaced")
        try:
            async for frame in ws:
                answer = await self.answer(endpoint, frame)
                if answer is not None:
                    await ws.send(answer)
        except ConnectionClosed:
            pass
        finally:
            if self.connections.get(endpoint) is ws:
                del self.connections[endpoint]


def local_server(port: int | None, *, host: str, endpoints: list[str], answer: Answerer) -> LocalServer | None:
    """The terminal's local server for its `local_port` and `local_host` options; None without a port."""
    return None if port is None else LocalServer(host=host, port=port, endpoints=endpoints, answer=answer)
