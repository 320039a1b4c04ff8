"""Drive a terminal through Cloud Connector as a POS would (steps 5–11).

    python manage.py pos_client --url http://127.0.0.1:8000 --domain demo \
        --client-id <id> --client-secret <secret> --tsn 230123456 --message '{"request": {}}'

It gets a token, claims the device, opens the session endpoint, sends the message (or every
line read from standard input), prints what comes back, releases the claim and exits.
Failures are one line on standard error and a non-zero exit code.

With `--fallback` the session fails over to the terminal's own server on the local network
when the cloud path has been gone for `--fallback-after` seconds, and comes back to the
cloud when it works again (connector.clients.failover; run the terminal with
`simulate_device --local-port N`). Each switch is printed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connector.clients.common import ClientError, Frame, preview
from connector.clients.failover import FailoverSession, NoPath, Switch
from connector.clients.pos import Claim, Event, PosClient, SessionSocket, fetch_token


class Command(BaseCommand):
    help = "Claim a terminal through Cloud Connector and exchange messages with it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (http(s) or ws(s))")
        parser.add_argument("--domain", required=True, help="the tenant's domain, as in /oauth2/v1/{domain}/token")
        parser.add_argument("--client-id", help="POS or application client id")
        parser.add_argument("--client-secret", help="its client secret")
        parser.add_argument("--token", help="use this access token instead of requesting one")
        parser.add_argument("--tsn", help="the terminal: serial number or {make}-{model}-{serial}")
        parser.add_argument("--endpoint", help="the endpoint to open (default: the device's first)")
        parser.add_argument("--message", help="send this and print the answer; without it, send stdin lines")
        parser.add_argument("--binary", action="store_true", help="send messages as binary frames (UTF-8)")
        parser.add_argument("--force", action="store_true", help="take the claim over from another POS")
        parser.add_argument("--devices", action="store_true", help="list the devices the credential reaches")
        parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
        parser.add_argument(
            "--fallback",
            action="store_true",
            help="fail over to the terminal's local_url when the cloud path is lost, and back",
        )
        parser.add_argument(
            "--fallback-after",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="how long the cloud path must be gone before --fallback switches (default 5)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        has_credentials = bool(options["client_id"] and options["client_secret"])
        if not has_credentials and not options["token"]:
            raise CommandError("give --client-id and --client-secret, or --token")
        if not options["tsn"] and not options["devices"]:
            raise CommandError("give --tsn (the device to claim), or --devices")
        if options["wait"] <= 0:
            raise CommandError("--wait must be positive")
        if options["fallback_after"] < 0:
            raise CommandError("--fallback-after cannot be negative")
        if options["fallback"] and not options["tsn"]:
            raise CommandError("--fallback needs --tsn")
        # The command prints what happens itself; the library's own log would say it twice.
        logging.getLogger("connector.clients").setLevel(logging.WARNING)
        try:
            asyncio.run(self.main(options))
        except KeyboardInterrupt:
            self.stdout.write("interrupted")
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        except TimeoutError:
            raise CommandError(f"no answer within {options['wait']:g} s") from None
        except OSError as exc:
            raise CommandError(f"cannot reach {options['url']}: {exc.strerror or exc}") from None

    async def main(self, options: dict[str, Any]) -> None:
        token = options["token"] or await self.token(options)
        if options["fallback"]:
            await self.use_failover(token, options)
            return
        async with PosClient(options["url"], token=token, on_event=self.event, request_timeout=options["wait"]) as pos:
            if options["devices"]:
                await self.list_devices(pos)
            if options["tsn"]:
                await self.use_device(pos, options)

    async def token(self, options: dict[str, Any]) -> str:
        token = await fetch_token(
            options["url"],
            domain=options["domain"],
            client_id=options["client_id"],
            client_secret=options["client_secret"],
            scope="cloud-connector",
        )
        self.stdout.write(f"token: {token.token_type}, scope {token.scope or '-'}, valid {token.expires_in} s")
        return token.access_token

    async def list_devices(self, pos: PosClient) -> None:
        devices = await pos.devices()
        if not devices:
            self.stdout.write("no devices in scope")
        for device in devices:
            claim = "claimed by you" if device.claimed_by_you else "claimed" if device.claimed else "free"
            self.stdout.write(f"{device.tsn}: {'online' if device.online else 'offline'}, {claim}")

    async def use_device(self, pos: PosClient, options: dict[str, Any]) -> None:
        claim = await pos.claim(options["tsn"], force=options["force"])
        endpoint = options["endpoint"] or claim.endpoints[0]
        self.stdout.write(
            self.style.SUCCESS(f"claimed {claim.tsn}: session {claim.session_id}")
            + f", endpoints {', '.join(claim.endpoints)}; using {endpoint}"
        )
        try:
            session = await pos.open_session(claim, endpoint)
            if options["message"] is not None:
                await self.exchange(session, self.frame(options["message"], options["binary"]), options["wait"])
            else:
                await self.interactive(session, options["binary"])
        finally:
            await self.release(pos, claim)

    async def exchange(self, session: SessionSocket, message: Frame, wait: float) -> None:
        await session.send(message)
        self.stdout.write(f"→ {preview(message)}")
        self.stdout.write(f"← {preview(await session.recv(timeout=wait))}")

    async def interactive(self, session: SessionSocket, binary: bool) -> None:
        self.stdout.write("type a message per line; Ctrl-D ends")
        lines = stdin_lines()
        printer = asyncio.create_task(self.print_frames(session))
        try:
            while True:
                reader = asyncio.ensure_future(lines.get())
                await asyncio.wait({reader, printer}, return_when=asyncio.FIRST_COMPLETED)
                if printer.done():
                    reader.cancel()
                    printer.result()  # the session socket closed: raise why
                line = reader.result()
                if line is None:
                    return
                await session.send(self.frame(line.rstrip("\n"), binary))
        finally:
            printer.cancel()

    async def use_failover(self, token: str, options: dict[str, Any]) -> None:
        """--fallback: one session over the cloud or the local network, whichever works."""
        till = FailoverSession(
            options["url"],
            token=token,
            tsn=options["tsn"],
            endpoint=options["endpoint"],
            fallback_after=options["fallback_after"],
            on_switch=self.switched,
            on_event=self.event,
        )
        await till.start()
        self.stdout.write(
            self.style.SUCCESS(f"claimed {options['tsn']}: session {till.session_id}")
            + f", using {till.endpoint}; local_url {till.local_url or '(none: no fallback possible)'}"
        )
        try:
            if options["message"] is not None:
                message = self.frame(options["message"], options["binary"])
                await till.send(message)
                self.stdout.write(f"→ {preview(message)}")
                self.stdout.write(f"← {preview(await till.recv(timeout=options['wait']))}")
            else:
                await self.interactive_failover(till, options["binary"])
        finally:
            await till.close()

    async def interactive_failover(self, till: FailoverSession, binary: bool) -> None:
        self.stdout.write("type a message per line; Ctrl-D ends")
        lines = stdin_lines()
        printer = asyncio.create_task(self.print_failover_frames(till))
        try:
            while (line := await lines.get()) is not None:
                try:
                    await till.send(self.frame(line.rstrip("\n"), binary))
                except NoPath as exc:
                    self.stderr.write(f"not sent: {exc}")
        finally:
            printer.cancel()

    async def print_failover_frames(self, till: FailoverSession) -> None:
        while True:
            self.stdout.write(f"← {preview(await till.recv())}")

    def switched(self, switch: Switch) -> None:
        self.stdout.write(self.style.WARNING(f"now over the {switch.path}: {switch.reason}"))

    async def print_frames(self, session: SessionSocket) -> None:
        while True:
            self.stdout.write(f"← {preview(await session.recv())}")

    async def release(self, pos: PosClient, claim: Claim) -> None:
        try:
            await pos.release(claim.session_id)
            self.stdout.write(f"released {claim.session_id}")
        except (ClientError, TimeoutError) as exc:
            self.stderr.write(f"could not release: {exc or 'no answer'}")

    def event(self, event: Event) -> None:
        self.stdout.write(self.style.WARNING(f"event: {event.type} (session {event.session_id}, {event.tsn})"))

    @staticmethod
    def frame(text: str, binary: bool) -> Frame:
        return text.encode() if binary else text


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input, read by a daemon thread (None at the end), so that a session
    closed by the server ends the command without waiting for the next line."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:
            pass  # the command ended and its event loop is closed: nobody wants the line

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue
