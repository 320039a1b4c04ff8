"""Client library of the Cloud Connector protocol (docs/protocol.md): a simulated terminal
and a POS client, for tests, benchmarks, the demo and integrators reading code.

No Django here: only `websockets` and the standard library.
"""

from connector.clients.common import ClientError, CloseReport, ControlError, SocketClosed
from connector.clients.failover import FailoverSession, NoPath, Switch
from connector.clients.pos import (
    AccessToken,
    Claim,
    DeviceStatus,
    Event,
    PosClient,
    SessionSocket,
    TokenRefused,
    fetch_token,
    fetch_token_sync,
)
from connector.clients.terminal import (
    Registration,
    RegistrationRefused,
    SimulatedTerminal,
    TerminalStopped,
    echo,
    register,
    upp_answer,
)

__all__ = [
    "AccessToken",
    "Claim",
    "ClientError",
    "CloseReport",
    "ControlError",
    "DeviceStatus",
    "Event",
    "FailoverSession",
    "PosClient",
    "Registration",
    "RegistrationRefused",
    "SessionSocket",
    "SimulatedTerminal",
    "SocketClosed",
    "TerminalStopped",
    "TokenRefused",
    "echo",
    "NoPath",
    "Switch",
    "fetch_token",
    "fetch_token_sync",
    "register",
    "upp_answer",
]
