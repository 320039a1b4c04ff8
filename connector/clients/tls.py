"""TLS contexts of the client library: a terminal registered by its client certificate
(contract v1.1 §15) presents it on every socket, through `connect_kwargs={"ssl": ...}`."""

from __future__ import annotations

import ssl

from connector.clients.common import ClientError


def client_certificate_context(certfile: str, keyfile: str, *, cafile: str | None = None) -> ssl.SSLContext:
    """A TLS context that presents the terminal's client certificate (v1.1 §15: registered
    by certificate, no client id or secret), for `connect_kwargs={"ssl": ...}`. The server
    is verified against `cafile`, or the system's trust (and SSL_CERT_FILE). Raises
    ClientError when the files cannot be read or the key does not match the certificate."""
    context = ssl.create_default_context(cafile=cafile)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot use the client certificate {certfile} with key {keyfile}: {exc}") from None
    return context
