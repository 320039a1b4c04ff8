"""Run a simulated terminal against a Cloud Connector server (steps 1–4, 10 and 11).

    python manage.py simulate_device --url ws://127.0.0.1:8000 --tsn 230123456 \
        --client-id <id> --client-secret <secret> --endpoint /upp/v1/transaction

It registers, opens one socket per endpoint, prints every request and the answer it
sends, comes back after a loss, and stops on Ctrl-C (closing its sockets with 1000).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connector.clients.common import ClientError, CloseReport, Frame, preview
from connector.clients.terminal import Registration, SimulatedTerminal, echo, upp_answer

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

    def handle(self, *args: Any, **options: Any) -> None:
        has_credentials = bool(options["client_id"] and options["client_secret"])
        if not has_credentials and not options["token"]:
            raise CommandError("give --client-id and --client-secret, or --token")
        if options["max_delay"] <= 0:
            raise CommandError("--max-delay must be positive")
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
        )

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
