"""Run a simulated terminal against a Cloud Connector server (steps 1–4, 10 and 11).

    python manage.py simulate_device --url ws://127.0.0.1:8000 --tsn 230123456 \
        --client-id <id> --client-secret <secret> --endpoint /upp/v1/transaction

It registers, opens one socket per endpoint, prints every request and the answer it
sends, comes back after a loss, and stops on Ctrl-C (closing its sockets with 1000).

With `--local-port N` it registers `local_url` ws://127.0.0.1:N (`--local-host` for another
address of the shop's network) and serves its endpoints there while its cloud link is down,
for `pos_client --fallback` (docs/protocol.md, "Loss of connection, end to end").

With `--cert terminal.pem --key terminal.key` (and a wss:// or https:// URL) every socket
presents that client certificate: enrolled for the device, it registers without
`--client-id`/`--client-secret` (v1.1 §15, docs/deploy.md "Device certificates").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connector.clients.common import ClientError, CloseReport, Frame, preview, websocket_base
from connector.clients.terminal import Registration, SimulatedTerminal, echo, upp_answer
from connector.clients.tls import client_certificate_context

RESPONDERS = {"upp": upp_answer, "echo": echo}


class Command(BaseCommand):
    help = "Simulate a payment terminal on the Cloud Connector device-listener (Ctrl-C stops)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL (ws, wss, http or https)")
        parser.add_argument("--tsn", required=True, help="serial number, or {make}-{model}-{serial}")
        parser.add_argument("--client-id", help="POS or application client id (custom_registration_data)")
        parser.add_argument("--client-secret", help="its client secret")
        parser.add_argument("--token", help="register with this bearer access token instead of client credentials")
        parser.add_argument(
            "--endpoint",
            action="append",
            dest="endpoints",
            metavar="PATH",
            help="an endpoint the terminal serves (repeat for several; default: /)",
        )
        parser.add_argument("--answer", choices=sorted(RESPONDERS), default="upp", help="how to answer (default: upp)")
        parser.add_argument(
            "--as-string", action="store_true", help="send custom_registration_data as a JSON string, as a PBT file"
        )
        parser.add_argument("--max-delay", type=float, default=30.0, help="bound of the reconnection backoff (s)")
        parser.add_argument(
            "--local-port", type=int, metavar="N", help="serve the endpoints on this port while the cloud is down"
        )
        parser.add_argument("--local-host", default="127.0.0.1", help="address of the local server (default 127.0.0.1)")
        parser.add_argument(
            "--cert", metavar="PEM", help="client certificate to present (mTLS: registers without credentials)"
        )
        parser.add_argument("--key", metavar="PEM", help="the client certificate's private key")

    def handle(self, *args: Any, **options: Any) -> None:
        has_credentials = bool(options["client_id"] and options["client_secret"])
        if bool(options["cert"]) != bool(options["key"]):
            raise CommandError("give --cert and --key together")
        if not has_credentials and not options["token"] and not options["cert"]:
            raise CommandError("give --client-id and --client-secret, --token, or --cert and --key")
        if options["max_delay"] <= 0:
            raise CommandError("--max-delay must be positive")
        if options["local_port"] is not None and not 0 < options["local_port"] < 65536:
            raise CommandError("--local-port must be between 1 and 65535")
        # The command prints what happens itself; the library's own log would say it twice.
        logging.getLogger("connector.clients").setLevel(logging.WARNING)
        try:
            terminal = self.terminal(options)
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        try:
            asyncio.run(self.serve(terminal))
        except KeyboardInterrupt:
            self.stdout.write("stopped")
        except ClientError as exc:
            raise CommandError(str(exc)) from None

    def terminal(self, options: dict[str, Any]) -> SimulatedTerminal:
        return SimulatedTerminal(
            options["url"],
            tsn=options["tsn"],
            endpoints=options["endpoints"],
            client_id=options["client_id"],
            client_secret=options["client_secret"],
            token=options["token"],
            registration_data_as_string=options["as_string"],
            responder=RESPONDERS[options["answer"]],
            max_delay=options["max_delay"],
            on_registered=self.registered,
            on_frame=self.frame,
            on_close=self.closed,
            on_retry=self.retry,
            local_port=options["local_port"],
            local_host=options["local_host"],
            connect_kwargs=self.tls(options),
        )

    def tls(self, options: dict[str, Any]) -> dict[str, Any]:
        """With --cert and --key: every socket presents the client certificate (v1.1 §15)."""
        if not options["cert"]:
            return {}
        if not websocket_base(options["url"]).startswith("wss://"):
            raise CommandError("a client certificate needs a TLS URL (wss:// or https://)")
        return {"ssl": client_certificate_context(options["cert"], options["key"])}

    async def serve(self, terminal: SimulatedTerminal) -> None:
        try:
            await terminal.run()
        finally:
            await terminal.stop()

    def registered(self, registration: Registration) -> None:
        self.stdout.write(
            self.style.SUCCESS(f"registered: session {registration.session_id}")
            + f", endpoints {', '.join(registration.endpoints)}, JWT valid {registration.expires_in} s"
        )

    def frame(self, endpoint: str, received: Frame, answer: Frame | None) -> None:
        self.stdout.write(f"{endpoint} ← {preview(received)}")
        self.stdout.write(f"{endpoint} → {preview(answer)}" if answer is not None else f"{endpoint} → (no answer)")

    def closed(self, report: CloseReport) -> None:
        self.stdout.write(self.style.WARNING(f"device socket {report}"))

    def retry(self, why: str, delay: float) -> None:
        self.stdout.write(self.style.WARNING(f"{why}; registering again in {delay:.1f} s"))
