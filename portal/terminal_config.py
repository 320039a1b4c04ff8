"""The ws_client block of a terminal's configuration file (the seed's "Authentication for
the Device application" steps), for one credential."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.http import HttpRequest

from connector.conf import connector_settings

DEVICE_LISTENER_PATH = "/cloud-connector/v1/device-listener"
SECRET_PLACEHOLDER = "<client secret shown when the POS was created>"
CRT_PLACEHOLDER = "<location of the pem file on the device>"


def public_ws_base(request: HttpRequest) -> str:
    """ws(s)://host of this deployment, as terminals must reach it."""
    configured = connector_settings.PUBLIC_WS_URL
    if configured:
        return configured.rstrip("/")
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}"


def device_listener_url(request: HttpRequest) -> str:
    return public_ws_base(request) + DEVICE_LISTENER_PATH


@dataclass(frozen=True)
class _WsClientBlock:
    """What every terminal's ws_client block says: where to register, and over which TLS."""

    register_url: str
    ssl_profile_name: str

    @property
    def uses_tls(self) -> bool:
        return self.register_url.startswith("wss://")

    def _block(self, *, credentials: list[str], ssl_profile_crt: str, client_files: list[str]) -> str:
        return "\n".join(
            [
                "ws_client:",
                *credentials,
                f"  ep_register_url: {self.register_url}",
                f"  enable_ssl: {1 if self.uses_tls else 0}",
                f'  ssl_profile_name: "{self.ssl_profile_name}"',
                f"  ssl_profile_crt: {ssl_profile_crt or CRT_PLACEHOLDER}",
                *client_files,
            ]
        )


@dataclass(frozen=True)
class TerminalConfig(_WsClientBlock):
    client_id: str
    client_secret: str | None
    ssl_profile_crt: str

    @property
    def custom_registration_data(self) -> str:
        """The JSON object as a JSON string, escaped as the configuration file wants it."""
        data = {"client_id": self.client_id, "client_secret": self.client_secret or SECRET_PLACEHOLDER}
        return json.dumps(json.dumps(data, separators=(",", ":")))

    @property
    def text(self) -> str:
        return self._block(
            credentials=[f"  custom_registration_data: {self.custom_registration_data}"],
            ssl_profile_crt=self.ssl_profile_crt,
            client_files=[],
        )


def terminal_config(
    *, request: HttpRequest, client_id: str, client_secret: str | None = None, ssl_profile_crt: str = ""
) -> TerminalConfig:
    return TerminalConfig(
        client_id=client_id,
        client_secret=client_secret,
        register_url=device_listener_url(request),
        ssl_profile_name=connector_settings.SSL_PROFILE,
        ssl_profile_crt=ssl_profile_crt,
    )


CLIENT_CRT_PLACEHOLDER = "<location of the device's certificate pem on the device>"
CLIENT_KEY_PLACEHOLDER = "<location of its private key on the device (secure element)>"


@dataclass(frozen=True)
class MtlsTerminalConfig(_WsClientBlock):
    """The ws_client block of a terminal that registers with its client certificate (v1.1
    §15): no custom_registration_data, so no secret; where its certificate and key lie."""

    @property
    def text(self) -> str:
        return self._block(
            credentials=[],
            ssl_profile_crt="",
            client_files=[f"  ssl_client_crt: {CLIENT_CRT_PLACEHOLDER}", f"  ssl_client_key: {CLIENT_KEY_PLACEHOLDER}"],
        )


def mtls_terminal_config(*, request: HttpRequest) -> MtlsTerminalConfig:
    return MtlsTerminalConfig(
        register_url=device_listener_url(request), ssl_profile_name=connector_settings.SSL_PROFILE
    )
