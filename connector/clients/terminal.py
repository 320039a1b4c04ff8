"""A simulated payment terminal: registers on the device-listener and serves its endpoints.

It follows docs/protocol.md §3–§4 as a real terminal application would: one registration
request on `device-listener`, then one socket per endpoint on `connection_url + E` with the
JWT from `authorization_header`. Requests from the POS are answered by a script; a lost
connection is re-registered (the server gives back the same session within its grace
period) after a bounded, jittered backoff.

    async with SimulatedTerminal("ws://127.0.0.1:8000", tsn="230123456",
                                 client_id=cid, client_secret=secret) as terminal:
        print(terminal.registration.session_id)
        await terminal.wait_stopped()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connector.clients.common import (
    DEVICE_LISTENER_PATH,
    TRY_AGAIN_LATER,
    ClientError,
    CloseReport,
    ControlError,
    Frame,
    ProtocolViolation,
    SocketClosed,
    bearer_header,
    close_of,
    close_retry_after,
    endpoint_url,
    parse_envelope,
    retry_after_value,
    retry_delay,
    websocket_base,
)

# Re-exported: it was defined here before the POS client needed it too, and callers import it from here.
from connector.clients.common import backoff_delay as backoff_delay
from connector.clients.local_server import local_server

logger = logging.getLogger(__name__)

Answer = Frame | None
Responder = Callable[[str, Frame], Answer | Awaitable[Answer]]
Script = Responder | Mapping[str, Responder | Frame]

# Close codes of a device socket after which coming back cannot help: the endpoint is
# not registered, another socket (another instance of this terminal) took it over, or
# the connection is not allowed at all. Reconnecting would only fight the other socket.
# 1013 (try again later) is never final: the server sheds load and asks to come back.
FINAL_CLOSE_CODES = frozenset({4403, 4404, 4409})


def echo(endpoint: str, frame: Frame) -> Answer:
    """Answer every frame with itself: text stays text, binary stays binary."""
    return frame


def upp_answer(endpoint: str, frame: Frame) -> Answer:
    """A small canned answer shaped like a UPP JSON response, for demos.

    A JSON request `{"request": {"flow_id": ..., "resource": {"type": "sale", ...}}}` gets
    `{"response": {"flow_id": <same>, "resource": {"type": "sale", "status": "ok", ...}}}`;
    anything that is not such JSON is echoed.
    """
    if isinstance(frame, bytes):
        return frame
    try:
        request = json.loads(frame)["request"]
        resource = dict(request.get("resource") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return frame
    answer = {
        "type": resource.get("type", "unknown"),
        "status": "ok",
        "status_code": 200,
        "result": "approved",
        "endpoint": endpoint,
    }
    for key in ("amount", "currency", "reference"):
        if key in resource:
            answer[key] = resource[key]
    return json.dumps({"response": {"flow_id": request.get("flow_id"), "resource": answer}})


class RegistrationRefused(ControlError):
    """The device-listener answered the registration with an error (§3 table)."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        super().__init__(resource, action="registration")
        self.level = resource.get("level")
        if self.level:
            self.args = (f"{self.args[0]} (level: {self.level})",)


class TerminalStopped(ClientError):
    """The terminal gave up: a final close code, a refused registration, or too many attempts."""


@dataclass(frozen=True)
class Registration:
    """The device-listener's answer to a successful registration (§3)."""

    session_id: str
    connection_url: str
    headers: dict[str, str]
    endpoints: list[str]
    expires_in: int
    ssl_profile: str | None
    resource: dict[str, Any]

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> Registration:
        try:
            return cls(
                session_id=str(resource["session_id"]),
                connection_url=str(resource["connection_url"]),
                headers={str(k): str(v) for k, v in dict(resource["authorization_header"]).items()},
                endpoints=[str(e) for e in resource.get("endpoints") or ["/"]],
                expires_in=int(resource.get("expires_in") or 0),
                ssl_profile=resource.get("connection_ssl_profile"),
                resource=dict(resource),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolViolation(f"registration answer without {exc}: {dict(resource)}") from None


def registration_request(
    *,
    tsn: str,
    endpoints: Iterable[str] | None,
    client_id: str | None,
    client_secret: str | None,
    as_string: bool = False,
    flow_id: str = "1",
    local_url: str | None = None,
) -> dict[str, Any]:
    """The registration request of §3; `as_string` sends the credentials as a terminal's
    configuration file writes them (a string holding the JSON object); `local_url` the
    terminal's own server on the shop's network (v1.1 §14)."""
    resource: dict[str, Any] = {"tsn": tsn}
    if endpoints is not None:
        resource["endpoints"] = list(endpoints)
    if local_url is not None:
        resource["local_url"] = local_url
    if client_id is not None or client_secret is not None:
        data = {"client_id": client_id, "client_secret": client_secret}
        resource["custom_registration_data"] = json.dumps(data) if as_string else data
    return {"request": {"flow_id": flow_id, "resource": resource}}


async def register(
    url: str,
    *,
    tsn: str,
    endpoints: Iterable[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    token: str | None = None,
    as_string: bool = False,
    timeout: float = 10,
    connect_kwargs: Mapping[str, Any] | None = None,
    local_url: str | None = None,
) -> Registration:
    """Steps 1–3: one registration on the device-listener. Raises RegistrationRefused with
    the server's error, SocketClosed when the server closes without an answer."""
    request = registration_request(
        tsn=tsn,
        endpoints=endpoints,
        client_id=client_id,
        client_secret=client_secret,
        as_string=as_string,
        local_url=local_url,
    )
    headers = bearer_header(token) if token else None
    listener = websocket_base(url) + DEVICE_LISTENER_PATH
    try:
        async with asyncio.timeout(timeout):
            async with connect(listener, additional_headers=headers, **dict(connect_kwargs or {})) as ws:
                await ws.send(json.dumps(request))
                envelope = parse_envelope(await ws.recv())
    except ConnectionClosed as exc:
        raise SocketClosed("device-listener", *close_of(exc)) from None
    except InvalidHandshake as exc:
        raise SocketClosed("device-listener", *close_of(exc)) from None
    if envelope.kind != "response" or envelope.flow_id != "1":
        raise ProtocolViolation(f"expected the registration response, got a {envelope.kind} ({envelope.flow_id})")
    if envelope.resource.get("status") != "ok":
        raise RegistrationRefused(envelope.resource)
    return Registration.from_resource(envelope.resource)


class SimulatedTerminal:
    """A terminal that registers, keeps one socket per endpoint, answers, and comes back.

    - `responder`: a callable `(endpoint, frame) -> answer | None` (sync or async), or a
      mapping from endpoint to such a callable or to a fixed answer; None answers nothing.
      Default: echo.
    - `record`: keep every received frame in `inbox[endpoint]` (an asyncio.Queue).
    - `on_frame(endpoint, received, answer)`, `on_close(CloseReport)`,
      `on_registered(Registration)`, `on_retry(why, delay)`: callbacks for a person
      watching (the simulate_device command).
    - Reconnection (docs/protocol.md, "Reconnecting after a loss or a restart"): after a
      loss the terminal registers again after a delay drawn with full jitter from
      [0, min(max_delay, min_delay * 2**(failures - 1))] (`backoff_delay`), plus the server's
      hint when it gave one: the `retry_after=N` of a 1013 close (on the device-listener or
      a device socket) or the `retry_after` of a 429 answer (`retry_delay`). Failures are
      counted until a connection is served and lost other than by a 1013;
      `max_attempts` consecutive failures stop it (None: never). A 1013 never does.
    - `attempts` counts the registrations tried, `sheds` the 1013 closes seen.
    - `local_port` (v1.1 §14): registers `local_url` ws://`local_host`:`local_port` and serves
      its endpoints there while the cloud link is down (connector.clients.local_server).
    """

    def __init__(
        self,
        url: str,
        *,
        tsn: str,
        endpoints: Iterable[str] | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token: str | None = None,
        registration_data_as_string: bool = False,
        responder: Script | None = echo,
        record: bool = False,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        max_attempts: int | None = None,
        on_frame: Callable[[str, Frame, Answer], None] | None = None,
        on_close: Callable[[CloseReport], None] | None = None,
        on_registered: Callable[[Registration], None] | None = None,
        on_retry: Callable[[str, float], None] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        local_port: int | None = None,
        local_host: str = "127.0.0.1",
    ) -> None:
        self.url = websocket_base(url)
        self.tsn = tsn
        self.endpoints = list(endpoints) if endpoints is not None else None
        self.client_id = client_id
        self.client_secret = client_secret
        self.token = token
        self.registration_data_as_string = registration_data_as_string
        self.responder = responder
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.on_frame = on_frame
        self.on_close = on_close
        self.on_registered = on_registered
        self.on_retry = on_retry
        self.connect_kwargs = dict(connect_kwargs or {})
        self.record = record
        self.inbox: dict[str, asyncio.Queue[Frame]] = {}
        self.registration: Registration | None = None
        self.registrations = 0
        self.attempts = 0
        self.sheds = 0
        self.closes: deque[CloseReport] = deque(maxlen=1000)
        self.last_error: str | None = None
        self._sockets: dict[str, ClientConnection] = {}
        self._online = asyncio.Event()
        self._may_connect = asyncio.Event()
        self._may_connect.set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.local = local_server(local_port, host=local_host, endpoints=self.endpoints or ["/"], answer=self._take)

    # -- public ----------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self._online.is_set()

    @property
    def stopped_by(self) -> BaseException | None:
        """What ended the background run on its own (TerminalStopped: a final close, a refused
        registration, `max_attempts` exhausted); None while it runs or once `stop()` ended it."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def start(self, timeout: float = 10) -> Registration:
        """Run in the background and return once every endpoint socket is open."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"terminal {self.tsn}")
        return await self.wait_online(timeout)

    async def wait_online(self, timeout: float = 10) -> Registration:
        """Wait until every endpoint socket is open; raise the run's error if it stopped.

        Online means online when this returns: a socket the server sheds (1013) right after
        opening it makes the terminal online for an instant only, and the wait goes on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self._online.is_set() and self.registration is not None):
            left = deadline - loop.time()
            if left <= 0:
                last = f"; last: {self.last_error}" if self.last_error else ""
                raise TimeoutError(f"terminal {self.tsn} not online within {timeout} s{last}")
            waiter = asyncio.create_task(self._online.wait())
            watched: set[asyncio.Future[Any]] = {waiter} | ({self._task} if self._task else set())
            try:
                done, _ = await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if self._task is not None and self._task in done:
                self._task.result()
                raise TerminalStopped("the terminal stopped")
            if waiter in done:
                await asyncio.sleep(0)  # let a socket closed as soon as opened be noticed
        return self.registration

    async def wait_stopped(self) -> None:
        """Wait for the background run to end; raise its error if it failed."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Close every socket with 1000 and end the background run."""
        self._stopping = True
        for ws in list(self._sockets.values()):
            await ws.close(1000, "terminal stopping")
        if self.local is not None:
            await self.local.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await self._task

    async def drop_connection(self, *, reconnect: bool = True) -> None:
        """Lose every socket without a close frame, as a network outage would (for tests).

        With `reconnect=False` the outage lasts until `reconnect()` is called, so that a test
        can watch the server notice it before the terminal comes back."""
        if not reconnect:
            self._may_connect.clear()
        for ws in list(self._sockets.values()):
            ws.transport.abort()

    def reconnect(self) -> None:
        """End an outage begun with `drop_connection(reconnect=False)`."""
        self._may_connect.set()

    async def send(self, endpoint: str, frame: Frame) -> None:
        """Send a frame of the terminal's own to the POS on `endpoint` (step 11); to the POS
        on the local network while the cloud is down and one is connected there."""
        ws = self._sockets.get(endpoint)
        if ws is None and self.local is not None and endpoint in self.local.connections:
            await self.local.send(endpoint, frame)
            return
        if ws is None:
            raise SocketClosed(f"device socket {endpoint}", None, "not connected")
        try:
            await ws.send(frame)
        except ConnectionClosed as exc:
            raise SocketClosed(f"device socket {endpoint}", *close_of(exc)) from None

    async def __aenter__(self) -> SimulatedTerminal:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Register, serve, and after each loss come back, until stopped or refused."""
        failures = 0
        while not self._stopping:
            await self._may_connect.wait()
            hint: float | None = None
            try:
                registration = await self._register()
                report = await self._serve(registration)
                why = f"device socket {report}"
            except RegistrationRefused as exc:
                if exc.status_code != 429:
                    raise TerminalStopped(str(exc)) from exc
                why, hint = str(exc), retry_after_value(exc.resource.get("retry_after"))
            except SocketClosed as exc:
                why, hint = str(exc), self._shed_hint(exc.code, exc.reason)
            except (ClientError, OSError, TimeoutError, InvalidHandshake) as exc:
                why = str(exc) or type(exc).__name__
            else:
                if report.code in FINAL_CLOSE_CODES and not self._stopping:
                    raise TerminalStopped(why)
                hint = self._shed_hint(report.code, report.reason)
                if report.code != TRY_AGAIN_LATER:
                    # The terminal was served: a new loss starts a new series of attempts.
                    # A shed socket was not served, and its attempt counts on.
                    failures = 0
            if self._stopping:
                return
            if self.local is not None:
                await self.local.fall_back(self.tsn)
            failures += 1
            if self.max_attempts is not None and failures > self.max_attempts:
                raise TerminalStopped(f"gave up after {self.max_attempts} attempts; last: {why}")
            self.last_error = why
            delay = retry_delay(failures, min_delay=self.min_delay, max_delay=self.max_delay, retry_after=hint)
            logger.info("%s: %s; again in %.1f s", self.tsn, why, delay)
            if self.on_retry is not None:
                self.on_retry(why, delay)
            await asyncio.sleep(delay)

    def _shed_hint(self, code: int | None, reason: str) -> float | None:
        """Count a 1013 close and return its retry hint (None for any other close)."""
        if code == TRY_AGAIN_LATER:
            self.sheds += 1
        return close_retry_after(code, reason)

    async def _register(self) -> Registration:
        self.attempts += 1
        registration = await register(
            self.url,
            tsn=self.tsn,
            endpoints=self.endpoints,
            client_id=self.client_id,
            client_secret=self.client_secret,
            token=self.token,
            as_string=self.registration_data_as_string,
            connect_kwargs=self.connect_kwargs,
            local_url=self.local.url if self.local is not None else None,
        )
        self.registration = registration
        self.registrations += 1
        if self.on_registered is not None:
            self.on_registered(registration)
        return registration

    async def _serve(self, registration: Registration) -> CloseReport:
        """Steps 4, 10 and 11: open every endpoint, answer until the first socket ends."""
        opened = await asyncio.gather(
            *(self._open(registration, endpoint) for endpoint in registration.endpoints), return_exceptions=True
        )
        pairs = zip(registration.endpoints, opened, strict=True)
        sockets = {e: ws for e, ws in pairs if isinstance(ws, ClientConnection)}
        failure = next((ws for ws in opened if isinstance(ws, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(ws.close(1000) for ws in sockets.values()))
            raise failure
        self._sockets = sockets
        readers = {asyncio.create_task(self._answer_all(e, ws), name=f"{self.tsn} {e}"): e for e, ws in sockets.items()}
        self._online.set()
        if self.local is not None:
            await self.local.stop()  # back on the cloud: the local POS returns there
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._online.clear()
            self._sockets = {}
            # One endpoint gone means the connection is gone: close the others so that
            # the next registration starts from a clean slate.
            await asyncio.gather(*(ws.close(1000, "reconnecting") for ws in sockets.values()))
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        first = next(iter(done))
        first.result()  # a responder that raised is a bug of the script: let it surface
        return self._report(readers[first], sockets[readers[first]])

    async def _open(self, registration: Registration, endpoint: str) -> ClientConnection:
        try:
            return await connect(
                endpoint_url(registration.connection_url, endpoint),
                additional_headers=registration.headers,
                **self.connect_kwargs,
            )
        except (ConnectionClosed, InvalidHandshake) as exc:
            # A connection lost during the handshake (a server restarting, or shedding under
            # load) is a failed attempt like any other, retried after the backoff.
            raise SocketClosed(f"device socket {endpoint}", *close_of(exc)) from None

    async def _answer_all(self, endpoint: str, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                answer = await self._take(endpoint, frame)
                if answer is not None:
                    await ws.send(answer)

    async def _take(self, endpoint: str, frame: Frame) -> Answer:
        """Record a frame, answer it by the script and tell `on_frame`: the same for a frame
        from the cloud or from the local server."""
        if self.record:
            self.inbox.setdefault(endpoint, asyncio.Queue()).put_nowait(frame)
        answer = await self._answer(endpoint, frame)
        if self.on_frame is not None:
            self.on_frame(endpoint, frame, answer)
        return answer

    async def _answer(self, endpoint: str, frame: Frame) -> Answer:
        script = self.responder
        if isinstance(script, Mapping):
            script = script.get(endpoint)
        if script is None or isinstance(script, (str, bytes)):
            return script
        answer = script(endpoint, frame)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    def _report(self, endpoint: str, ws: ClientConnection) -> CloseReport:
        report = CloseReport(endpoint=endpoint, code=ws.close_code, reason=ws.close_reason or "")
        self.closes.append(report)
        logger.info("%s: device socket %s", self.tsn, report)
        if self.on_close is not None:
            self.on_close(report)
        return report
