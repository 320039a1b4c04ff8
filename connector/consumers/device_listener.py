"""§3, device registration: `device-listener` takes one registration request, answers it,
then closes (1000)."""

from __future__ import annotations

import asyncio
import logging

from accounts.credentials import bearer_from_header
from accounts.errors import DomainError
from connector import callers, certificates, errors, limiter, metrics, protocol, registrations
from connector.conf import connector_settings
from connector.consumers.base import BaseConsumer, db
from connector.protocol import Close
from connector.relay import servers
from connector.relay.tasks import spawn

logger = logging.getLogger(__name__)


async def _answer_registration(
    *, text: str | None, bearer: str | None, address: str, base_url: str, fingerprint: str = ""
) -> str:
    """Answer one registration request: one database call when the client's secret matched
    a moment ago (callers.secret_remembered), or with an access token. Otherwise the
    secret check, a PBKDF2 run, happens in a worker thread of its own between two calls,
    so that a fleet of terminals registering at once does not stall attaches and claims.
    Only credential failures (invalid_client) count towards 429, per client id and address
    (see connector.limiter); a limited client id hears 429 before its secret is checked.
    `fingerprint`: the client certificate the TLS proxy verified (v1.1 §15), which
    registers its device without credentials."""
    flow_id = None
    credentials = None
    tsn = None
    with metrics.registrations.timed() as attempt:
        try:
            request = protocol.parse_request(text)
            flow_id = request.flow_id
            resource = request.resource
            tsn = protocol.parse_tsn(resource.get("tsn"))
            endpoints = protocol.validate_endpoints(resource.get("endpoints"))
            local_url = protocol.parse_local_url(resource.get("local_url"))
            credentials = protocol.parse_registration_data(resource.get("custom_registration_data"))
            if credentials is None and bearer is None and not fingerprint:
                raise protocol.ProtocolError(
                    "No credentials: send custom_registration_data or an Authorization header."
                )
            registration = await _register(
                credentials,
                bearer,
                address=address,
                tsn=tsn,
                endpoints=endpoints,
                local_url=local_url,
                fingerprint=fingerprint,
            )
        except DomainError as error:
            if isinstance(error, protocol.ProtocolError) and error.flow_id is not None:
                flow_id = error.flow_id
            client_id = credentials.client_id if credentials is not None else None
            if error.code == errors.InvalidClient.code:
                wait = await db(limiter.registration_failed, address=address, client_id=client_id)
                if wait is not None:
                    error = errors.RateLimited(retry_after=wait)
            wire = protocol.translate(error)
            attempt.outcome = wire.error
            logger.info(
                "registration refused: %s",
                wire.error,
                extra={"flow_id": flow_id, "tsn": tsn, "client_id": client_id, "event": "registration"},
            )
            return protocol.error_response(flow_id, wire)
    logger.info(
        "registration answered",
        extra={
            "session_id": registration.session_id,
            "tsn": registration.tsn,
            "flow_id": flow_id,
            "client_id": credentials.client_id if credentials is not None else None,
            "event": "registration",
        },
    )
    return protocol.ok_response(
        flow_id,
        session_id=registration.session_id,
        connection_url=protocol.connection_url(base_url, registration.session_id),
        connection_ssl_profile=connector_settings.SSL_PROFILE,
        authorization_header={"Authorization": f"Bearer {registration.token.token}"},
        endpoints=registration.endpoints,
        expires_in=registration.token.expires_in,
    )


async def _register(
    credentials: protocol.ClientCredentials | None,
    bearer: str | None,
    *,
    address: str,
    tsn: str,
    endpoints: list[str],
    local_url: str = "",
    fingerprint: str = "",
) -> registrations.Registration:
    async def register(function, **arguments):
        """`function` in a database thread with what every way of registering is given."""
        return await db(
            function,
            address=address,
            tsn=tsn,
            endpoints=endpoints,
            local_url=local_url,
            fingerprint=fingerprint,
            **arguments,
        )

    if fingerprint and credentials is None and bearer is None:
        return await register(registrations.device_register_with_certificate)
    # With credentials, they decide, and a certificate counts only within their scope
    # (registrations.device_register).
    if credentials is None:
        return await register(registrations.device_register_with_token, raw_token=bearer)
    secret = credentials.client_secret
    outcome = await register(
        registrations.device_register_with_client, client_id=credentials.client_id, client_secret=secret
    )
    if isinstance(outcome, registrations.Registration):
        return outcome
    record = outcome.record
    secret_ok = await asyncio.to_thread(callers.secret_matches, secret, record.stored_secret if record else None)
    caller = callers.record_caller(record, secret_ok=secret_ok)
    return await register(registrations.device_register_checked, caller=caller)


class DeviceListenerConsumer(BaseConsumer):
    """`device-listener`: one registration request, one response, then close (1000)."""

    kind = "device_listener"
    layer_messages = False  # one request, one answer: no group, no event
    # Admitted with its socket, the registration counts against admission until answered
    # (connector.relay.admission): a storm of terminals connecting first and registering a
    # moment later is then shed at connect, instead of queueing registrations past the
    # terminals' patience.
    holds_admission = True
    sheddable = True

    async def connect(self) -> None:
        servers.server_socket_tune(self, max_message=protocol.CONTROL_MESSAGE_LIMIT)
        if not self.origin_allowed():
            await self.refuse(Close.FORBIDDEN)
            return
        await self.accept()
        self.answered = False
        self.timeout = asyncio.get_running_loop().call_later(
            connector_settings.REGISTRATION_TIMEOUT,
            lambda: spawn(self._timed_out()),
        )

    async def _timed_out(self) -> None:
        if not self.answered:
            self.answered = True
            await self.close_socket(Close.REGISTRATION_TIMEOUT)

    async def websocket_receive(self, message: dict) -> None:
        if self.closed or self.answered:
            return
        self.answered = True
        self.timeout.cancel()
        text = message.get("text")
        if text is not None and protocol.text_size_exceeds(text, protocol.CONTROL_MESSAGE_LIMIT):
            await self.close_socket(Close.TOO_BIG)
            return
        bearer = bearer_from_header(self.header(b"authorization"))
        try:
            response = await _answer_registration(
                text=text,
                bearer=bearer,
                address=self.client_address(),
                base_url=self.public_base_url(),
                fingerprint=certificates.presented_fingerprint(self.scope.get("headers", [])),
            )
        finally:
            self.release_admission()
        try:
            await self.send(text_data=response)
        except OSError:
            # The terminal gave up waiting and left (uvicorn's ClientDisconnected): it will
            # register again; its session, if this created one, is the one it will get.
            self.log("gone before its answer")
            return
        await self.close_socket(Close.NORMAL)

    async def disconnect(self, code: int) -> None:
        self.release_admission()  # left (or timed out) before its registration was answered
        self.closed = True
        timeout = getattr(self, "timeout", None)
        if timeout is not None:
            timeout.cancel()
