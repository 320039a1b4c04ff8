"""The webhook timeout bounds the whole attempt (connector.webhooks.transport.post), not each
socket operation: a receiver that drips its TLS handshake, its headers or its body a byte at
a time, each byte well within urllib3's per-operation timeout, is cut off at the deadline.
Otherwise one hostile endpoint holds a delivery worker for as long as it drips, and with two
workers stops webhook delivery for every tenant."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from connector.webhooks import transport
from connector.webhooks.transport import post

DRIP_EVERY = 0.5
DRIP_FOR = 30.0
TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def private_ok(settings) -> None:
    """The dripping receivers live on 127.0.0.1."""
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": True}


class Dripper:
    """A TCP server on 127.0.0.1 that answers each connection with `head` at once (after
    reading the request, unless `read_request` is false), then `drip` one byte every
    DRIP_EVERY seconds for DRIP_FOR seconds, or until the client is gone."""

    def __init__(self, head: bytes, drip: bytes, *, read_request: bool = True) -> None:
        self.head, self.drip, self.read_request = head, drip, read_request
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        self.client_gone = threading.Event()
        self.dripped = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(DRIP_EVERY)
            if self.read_request:
                received = b""
                while b"\r\n\r\n" not in received and not self.stopped.is_set():
                    try:
                        received += connection.recv(65536)
                    except TimeoutError:
                        continue
            until = time.monotonic() + DRIP_FOR
            try:
                connection.sendall(self.head)
                for byte in self.drip * int(DRIP_FOR / DRIP_EVERY + 1):
                    if self.stopped.wait(DRIP_EVERY) or time.monotonic() > until:
                        return
                    connection.sendall(bytes([byte]))
                    self.dripped += 1
            except OSError:
                self.client_gone.set()  # the sender shut its socket: the worker is free

    @contextmanager
    def running(self) -> Iterator[Dripper]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            self.listener.close()
            self.thread.join(5)


def post_to(url: str) -> tuple[transport.Outcome, float]:
    started = time.monotonic()
    outcome = post(url, b'{"id": "evt"}', {"Content-Type": "application/json"}, timeout=TIMEOUT)
    return outcome, time.monotonic() - started


def assert_cut_off_at_the_deadline(outcome: transport.Outcome, took: float, dripper: Dripper) -> None:
    assert took < 3.0, f"the attempt took {took:.1f} s with a {TIMEOUT:g} s timeout"
    assert took >= TIMEOUT * 0.9
    assert not outcome.succeeded
    assert outcome.error.startswith("timeout:"), outcome.error
    assert outcome.duration_ms <= 3000
    assert dripper.dripped >= 1  # it did drip: each byte came well within a read timeout
    # The watchdog's thread ends with the attempt.
    deadline = time.monotonic() + 2
    while any(thread.name == "webhook-deadline" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "a deadline watchdog outlived its attempt"
        time.sleep(0.02)


def test_a_receiver_dripping_its_headers_is_cut_off_at_the_deadline():
    dripper = Dripper(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 200)
    with dripper.running():
        outcome, took = post_to(f"http://127.0.0.1:{dripper.port}/hook")
        assert_cut_off_at_the_deadline(outcome, took, dripper)
        assert outcome.response_code is None
        assert outcome.error == f"timeout: no answer within {TIMEOUT:g} s"
        assert dripper.client_gone.wait(3)  # its connection is closed, not left to drip on


def test_a_receiver_dripping_its_body_is_cut_off_at_the_deadline():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
    dripper = Dripper(head, b"ok")
    with dripper.running():
        outcome, took = post_to(f"http://127.0.0.1:{dripper.port}/hook")
        assert_cut_off_at_the_deadline(outcome, took, dripper)
        assert outcome.response_code == 200  # the status came in time; the answer did not
        assert outcome.error == f"timeout: the answer exceeded the {TIMEOUT:g} s deadline"
        assert dripper.client_gone.wait(3)


def test_a_receiver_that_closes_the_connection_and_drips_its_body_is_cut_off_too():
    """With `Connection: close` http.client hands the socket to the response and forgets it
    on the connection: the watchdog still holds it."""
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    dripper = Dripper(head, b"ok")
    with dripper.running():
        outcome, took = post_to(f"http://127.0.0.1:{dripper.port}/hook")
        assert_cut_off_at_the_deadline(outcome, took, dripper)
        assert outcome.error == f"timeout: the answer exceeded the {TIMEOUT:g} s deadline"


def test_a_receiver_dripping_its_tls_handshake_is_cut_off_at_the_deadline():
    # A TLS record header announcing 16 KiB of handshake, then its bytes one at a time.
    dripper = Dripper(b"\x16\x03\x03\x40\x00", b"\x00", read_request=False)
    with dripper.running():
        outcome, took = post_to(f"https://127.0.0.1:{dripper.port}/hook")
        assert_cut_off_at_the_deadline(outcome, took, dripper)
        assert outcome.response_code is None
        assert outcome.error == f"timeout: no answer within {TIMEOUT:g} s"


def test_an_answer_within_the_deadline_is_read_and_succeeds():
    head = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    dripper = Dripper(head, b"")
    with dripper.running():
        outcome, took = post_to(f"http://127.0.0.1:{dripper.port}/hook")
    assert outcome.succeeded and outcome.response_code == 204 and outcome.error == ""
    assert took < TIMEOUT
