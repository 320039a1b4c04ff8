"""Every reach into a library's private internals, one test each, with the reason. Each
test checks that the library is still the version requirements.txt pins and that the
internals still look and behave as the code relies on: the day an upgrade breaks one,
the test names the reach to revisit."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path

from connector import relay

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def assert_pinned(distribution: str) -> None:
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE))
    pinned = {name.lower(): value for name, value in pins.items()}.get(distribution.lower())
    assert pinned is not None, f"{distribution} is not pinned in requirements.txt"
    assert version(distribution) == pinned, (
        f"{distribution} {version(distribution)} is installed, {pinned} pinned: check the reach this test guards"
    )


def test_the_relay_reads_twisteds_unsent_bytes_from_a_transports_private_buffers():
    # relay.twisted_unsent: daphne gives the application no way to see what its transport
    # holds for a client, and Twisted's producer API only says "above 64 KiB"; the relay's
    # per-socket bound (CC_MAX_SOCKET_BUFFER) reads FileDescriptor's buffers directly.
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.tcp import Server

    assert_pinned("Twisted")

    class Reactor:
        def addWriter(self, writer) -> None: ...

        def removeWriter(self, writer) -> None: ...

    class Partial(FileDescriptor):
        def writeSomeData(self, data) -> int:
            return 4  # the kernel took 4 bytes

    transport = Partial(reactor=Reactor())
    transport.connected = True
    transport.write(b"x" * 10)
    transport.write(b"y" * 5)
    assert relay.twisted_unsent(transport) == 15
    transport.doWrite()  # the reactor moves the bytes to dataBuffer and sends some
    assert relay.twisted_unsent(transport) == 11
    assert relay._twisted_tcp(transport) is transport
    assert issubclass(Server, FileDescriptor)  # what daphne's sockets are written through
    assert callable(Server.abortConnection)  # drops the connection with its buffer


def test_daphne_hands_the_application_its_protocol_object_inside_the_asgi_send():
    # relay._daphne_protocol: the relay reaches daphne's (autobahn's) protocol object through
    # the ASGI `send`, to tune autobahn's limits, close with 1001/1009, and find the TCP
    # transport whose buffer it bounds.
    from daphne.server import Server

    assert_pinned("daphne")
    assert "send=partial(self.handle_reply, protocol)" in inspect.getsource(Server.create_application)


def test_uvicorns_send_is_a_method_of_its_protocol_which_holds_the_transport_and_waits_on_its_high_water_mark():
    # relay.socket_buffer: under uvicorn the relay reads the socket's transport through
    # `send.__self__.transport` and raises its high-water mark above CC_MAX_SOCKET_BUFFER,
    # because uvicorn's send waits (pause_writing) once the transport passes it.
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    assert_pinned("uvicorn")
    assert "self.transport = transport" in inspect.getsource(WebSocketsSansIOProtocol.connection_made)
    assert "await self.writable.wait()" in inspect.getsource(WebSocketsSansIOProtocol.send)
    assert "self.writable.clear()" in inspect.getsource(WebSocketsSansIOProtocol.pause_writing)
    assert "self.app(self.scope, self.receive, self.send)" in inspect.getsource(WebSocketsSansIOProtocol.run_asgi)
