"""The relay's settings: Django's `CLOUD_CONNECTOR` dict, read the way DRF reads
`REST_FRAMEWORK` (`rest_framework.settings.api_settings`) and django-oauth-toolkit reads
`OAUTH2_PROVIDER` (`oauth2_provider.settings.oauth2_settings`).

Every key, its type, its default and its meaning are in `ConnectorSettings`, and only
there: the project's settings (portal/settings.py) hold what the environment sets (and the
JWT keys) and nothing else. Code reads `connector_settings.GRACE_PERIOD`; the values are
read from `settings.CLOUD_CONNECTOR` on first use and again after Django's
`setting_changed` signal, so `override_settings(CLOUD_CONNECTOR={...})` and pytest-django's
`settings` fixture take effect at once.

A key this module does not know (a typo) or a value of the wrong type is an
ImproperlyConfigured error on first use, and system check `connector.E001` reports it at
`manage.py check`: a setting silently ignored would leave a default in force that the
operator believes changed.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field, fields
from typing import Any, cast, get_origin, get_type_hints

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

SETTING_NAME = "CLOUD_CONNECTOR"
ONE_MIB = 1024 * 1024


@dataclass(frozen=True)
class ConnectorSettings:
    """The CLOUD_CONNECTOR keys with their defaults. Durations are in seconds; the
    environment variable of each key is `CC_<KEY>` (README.md, "Configuration")."""

    #: Device JWT signing keys by key id; the first signs, all verify (rotation).
    #: portal/settings.py always sets them (CC_JWT_KEYS, or SECRET_KEY in development).
    JWT_KEYS: dict[str, str] = field(default_factory=dict)
    #: Lifetime of a device JWT (`expires_in`); a registered session that no device socket
    #: joins ends when it expires.
    JWT_LIFETIME: int = 300
    #: How long an offline session waits for its terminal to come back before it ends.
    GRACE_PERIOD: int = 60
    #: The same wait when the server itself closed the terminal's sockets (a worker shutting
    #: down, or one that died): a fleet re-admitted at the pace the workers can serve it
    #: keeps its sessions and the POS's claims (v1.1 §17).
    RESTART_GRACE_PERIOD: int = 300
    #: How long an ended session stays listed (API, portal) before the sweep deletes it.
    ENDED_RETENTION: int = 3600
    #: How long a terminal has to send its registration on the device-listener (else 4408).
    REGISTRATION_TIMEOUT: float = 10.0
    #: The largest relayed frame, in bytes (else 1009).
    MAX_MESSAGE_SIZE: int = ONE_MIB
    #: Seconds between server pings (portal/serve.py hands it to uvicorn).
    PING_INTERVAL: int = 10
    #: Seconds without a pong before a socket is closed.
    PING_TIMEOUT: float = 30.0
    #: `Origin`s allowed on the WebSockets (terminals and POS send none).
    ALLOWED_ORIGINS: list[str] = field(default_factory=list)
    #: Credential failures of registrations (connector.limiter): per client id from one
    #: address per window, then per address (any client ids) per window; a client id that
    #: registered from the address within VERIFIED_REGISTRATION_TTL passes the address's bound.
    FAILED_REGISTRATION_LIMIT: int = 20
    FAILED_REGISTRATION_ADDRESS_LIMIT: int = 100
    FAILED_REGISTRATION_WINDOW: int = 60
    VERIFIED_REGISTRATION_TTL: int = 86400
    #: Taken serial numbers refused per caller per window before device writes answer 429
    #: (connector.serial_refusals).
    SERIAL_REFUSAL_LIMIT: int = 10
    SERIAL_REFUSAL_WINDOW: int = 3600
    #: Seconds between writes of the relayed and dropped frame counters.
    COUNTER_FLUSH_INTERVAL: float = 2.0
    #: The `connection_ssl_profile` told to terminals.
    SSL_PROFILE: str = "INGETRUST"
    #: Base URL of the public WebSocket endpoint, e.g. wss://api.example.com. Empty: derived
    #: from the request's Host header (ws in development, wss otherwise).
    PUBLIC_WS_URL: str = ""
    #: Each serving process records a heartbeat and sweeps due sessions every SWEEP_INTERVAL;
    #: the sockets of a process silent for NODE_TIMEOUT are presumed gone.
    SWEEP_INTERVAL: float = 5.0
    NODE_TIMEOUT: int = 30
    #: On SIGTERM, how long sockets closed with 1001 may take before the server stops.
    SHUTDOWN_GRACE: float = 2.0
    #: A relay socket whose client leaves more than this many bytes untaken is closed
    #: (4503 a POS session socket, 1013 a device socket; connector.relay.servers, "Backpressure").
    MAX_SOCKET_BUFFER: int = 4 * ONE_MIB
    #: pos-listener sockets one credential may hold, per process; past them a new one closes 4429.
    MAX_LISTENERS_PER_CREDENTIAL: int = 20
    #: POS session sockets one credential may hold across the deployment; past them 4429.
    MAX_SESSION_SOCKETS_PER_CREDENTIAL: int = 256
    #: Admission (connector.relay.admission): a worker admits new sockets while its control
    #: operations in flight stay under max(ADMISSION_MIN_PENDING, its completion rate ×
    #: ADMISSION_MAX_WAIT seconds) and sheds the rest with 1013 and a retry hint. 0: off.
    ADMISSION_MIN_PENDING: int = 256
    ADMISSION_MAX_WAIT: float = 2.0
    #: Days the connection history and the recorded events are kept (`prune_history`).
    HISTORY_DAYS: int = 30
    #: Seconds between writes of `last_seen_at` for the devices that sent a frame or a pong
    #: meanwhile (coalesced; never more than 30 s old while online, v1.1 §11).
    LAST_SEEN_INTERVAL: float = 10.0
    #: Webhooks (connector.webhooks): a receiver has this long to answer 2xx; failed
    #: deliveries are retried with exponential backoff for WEBHOOK_RETRY_HOURS.
    WEBHOOK_TIMEOUT: float = 10.0
    WEBHOOK_RETRY_HOURS: float = 26.0
    #: Let webhooks reach private, loopback and link-local addresses (default: only with DEBUG).
    WEBHOOK_ALLOW_PRIVATE: bool = False
    #: Held answers (v1.1 §13, connector.relay.held): frames a terminal sends on an endpoint
    #: while the claim holder has no session socket there are kept, at most HELD_FRAMES frames
    #: or HELD_BYTES bytes per endpoint and HELD_TOTAL_BYTES bytes per process, for at most
    #: GRACE_PERIOD seconds; the frames beyond are dropped and counted (`frames_dropped`).
    HELD_FRAMES: int = 256
    HELD_BYTES: int = ONE_MIB
    HELD_TOTAL_BYTES: int = 64 * ONE_MIB


KEYS = frozenset(f.name for f in fields(ConnectorSettings))


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))


def _checked(name: str, value: Any, expected: Any) -> Any:
    """The value as the key's type has it, or ImproperlyConfigured. An int is a float (a
    duration of 10 is 10.0), a tuple a list; a bool is not a number."""
    base = get_origin(expected) or expected
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is list and isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, base) and not (isinstance(value, bool) and base is not bool):
        return value
    # The value itself stays out of the message: it may be key material (JWT_KEYS).
    raise ImproperlyConfigured(f"{SETTING_NAME}[{name!r}] must be {_type_name(base)}, not {type(value).__name__}")


def _unknown_key_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(KEYS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{SETTING_NAME}[{name!r}] is not a Cloud Connector setting{hint} (connector/conf.py lists them)"


def settings_from(configured: Any) -> ConnectorSettings:
    """The settings a CLOUD_CONNECTOR value stands for, or ImproperlyConfigured."""
    if configured is None:
        configured = {}
    if not isinstance(configured, dict):
        raise ImproperlyConfigured(f"{SETTING_NAME} must be a dict, not {type(configured).__name__}")
    unknown = sorted(set(configured) - KEYS, key=str)
    if unknown:
        raise ImproperlyConfigured(_unknown_key_message(str(unknown[0])))
    hints = get_type_hints(ConnectorSettings)
    return ConnectorSettings(**{name: _checked(name, value, hints[name]) for name, value in configured.items()})


class _LazySettings:
    """Reads settings.CLOUD_CONNECTOR on first use and keeps the result until `reload`."""

    def __init__(self) -> None:
        self._loaded: ConnectorSettings | None = None
        self._lock = threading.Lock()

    def load(self) -> ConnectorSettings:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = settings_from(getattr(settings, SETTING_NAME, None))
                loaded = self._loaded
        return loaded

    def reload(self) -> None:
        with self._lock:
            self._loaded = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)


_settings = _LazySettings()
# Typed as what it stands for: `connector_settings.GRACE_PERIOD` is an int to the reader
# and to a type checker.
connector_settings = cast(ConnectorSettings, _settings)


def reload_connector_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        _settings.reload()


setting_changed.connect(reload_connector_settings, dispatch_uid="connector.conf.reload")


@checks.register(checks.Tags.compatibility)
def check_connector_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """connector.E001: CLOUD_CONNECTOR holds a key this app does not know or a value of the wrong type."""
    try:
        settings_from(getattr(settings, SETTING_NAME, None))
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="connector.E001")]
    return []
