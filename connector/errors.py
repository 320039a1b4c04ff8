"""The relay's domain errors, raised by connector's selectors and state machine and
translated to the wire in one place (connector.protocol.ERRORS, by `code`)."""

from __future__ import annotations

from accounts import errors

# A session's sockets close with this when it ends or their claim is released (contract §8).
CLOSE_GONE = 4410


class InvalidClient(errors.NotAllowed):
    """Unknown client id or wrong secret."""

    code = "invalid_client"


class InvalidToken(errors.NotAllowed):
    """The access token is missing, unknown, expired or revoked."""

    code = "invalid_token"


class InsufficientScope(errors.NotAllowed):
    """The access token does not have the cloud-connector scope."""

    code = "insufficient_scope"


class DeviceDisabled(errors.NotAllowed):
    """The device is not provisioned and enabled."""

    code = "device_disabled"


class ServiceNotActive(errors.NotAllowed):
    code = "service_not_active"

    def __init__(self, level: str) -> None:
        super().__init__(f"Cloud Connector is not active at the {level.replace('_', ' ')} level.")
        self.extra = {"level": level}


class UnknownDevice(errors.NotFound):
    """No such device."""

    code = "unknown_device"


class AmbiguousTsn(errors.Conflict):
    """The serial number matches more than one device; use {make}-{model}-{serial}."""

    code = "ambiguous_tsn"


class DeviceOffline(errors.Conflict):
    """The device has no live session."""

    code = "device_offline"


class MtlsRequired(errors.NotAllowed):
    """The device accepts only certificate registration (v1.1 §15): present its enrolled client certificate."""

    code = "mtls_required"


class DeviceUnresponsive(errors.DomainError):
    """`ping` got no pong from the device's socket within its timeout (v1.1 §12)."""

    code = "device_unresponsive"

    def __init__(self, message: str = "The device did not answer the ping in time.") -> None:
        super().__init__(message)


class SessionClaimed(errors.Conflict):
    """Another credential holds the claim on this session; claim with force to take it over."""

    code = "session_claimed"


class UnknownSession(errors.NotFound):
    """No such session."""

    code = "unknown_session"


class SessionEnded(errors.NotFound):
    """The session has ended."""

    code = "session_ended"


class UnknownEndpoint(errors.NotFound):
    """The device did not register this endpoint."""

    code = "unknown_endpoint"


class NotClaimHolder(errors.NotAllowed):
    """This credential does not hold the claim on the session."""

    code = "not_claim_holder"


class NotClaimed(errors.Conflict):
    """This credential does not hold a claim on the session."""

    code = "not_claimed"


class RateLimited(errors.RateLimited):
    """Too many failed registrations; try again later."""

    code = "rate_limited"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(f"Too many failed registrations; try again in {retry_after} seconds.", retry_after=retry_after)

    @property
    def extra(self) -> dict[str, int]:
        # The wire resource's `retry_after` (protocol.translate), so that a terminal knows
        # when to come back.
        return {"retry_after": self.retry_after}


class SocketQuotaExceeded(errors.DomainError):
    """This credential has as many sockets of this kind open as it may; close one first."""

    code = "rate_limited"
