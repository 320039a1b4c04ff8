"""A real webhook receiver for the webhook tests: stdlib http.server on 127.0.0.1 in a thread,
checking each delivery's signature with the client library, answering from a script.

Answers, in order, then `default` (200): a status code (3xx ones carry a Location), "close"
(the connection is closed without an answer), ("sleep", seconds) then 200, or "hold" (the
request waits until `release` is set, then 200: a worker caught mid-delivery).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils import timezone

from connector.clients.webhooks import SIGNATURE_HEADER, verify
from connector.models import WEBHOOK_EVENT_TYPES, Device, Event, WebhookEndpoint
from connector.webhooks.secrets import new_secret

HOLD_LIMIT = 30.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self, secret: str, answers: list[Any] | None = None) -> None:
        self.secret = secret
        self.script: deque[Any] = deque(answers or [])
        self.default: Any = 200
        self.requests: list[Received] = []
        self.release = threading.Event()
        self._changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/cloud-connector?source=test"

    def ids(self) -> list[str]:
        return [request.json["id"] for request in self.requests]

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _record(self, received: Received) -> Any:
        with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
            return self.script.popleft() if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                signed = verify(receiver.secret, self.headers.get(SIGNATURE_HEADER, ""), body)
                answer = receiver._record(Received(self.path, dict(self.headers.items()), body, signed))
                if answer == "close":
                    self.close_connection = True
                    return
                if answer == "hold":
                    receiver.release.wait(HOLD_LIMIT)
                    answer = 200
                if isinstance(answer, tuple):
                    time.sleep(answer[1])
                    answer = 200
                try:
                    self.send_response(answer)
                    if 300 <= answer < 400:
                        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    self.close_connection = True  # the sender gave up waiting (a timeout test)

        return Handler

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def running_receiver(answers: list[Any] | None = None, *, secret: str | None = None) -> Iterator[Receiver]:
    receiver = Receiver(secret or new_secret(), answers).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def endpoint_for(
    receiver_url: str,
    secret: str,
    *,
    tenant: Any,
    merchant: Any = None,
    merchant_aggregator: Any = None,
    events: list[str] | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        tenant=tenant,
        merchant=merchant,
        merchant_aggregator=merchant_aggregator,
        url=receiver_url,
        secret=secret,
        events=list(WEBHOOK_EVENT_TYPES) if events is None else events,
        enabled=enabled,
    )


def record_event(device: Device, event_type: str = Event.Type.DEVICE_ONLINE, **data: Any) -> Event:
    """An event as connector.history records it: the device's next seq, `tsn` in data."""
    device.event_seq = (device.event_seq or 0) + 1
    device.save(update_fields=["event_seq"])
    return Event.objects.create(
        device=device,
        type=event_type,
        session_id="session-1",
        seq=device.event_seq,
        occurred_at=timezone.now(),
        data={"tsn": device.tsn, **data},
    )
