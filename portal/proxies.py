"""What a request's proxy headers are worth: only a peer in `FORWARDED_ALLOW_IPS` speaks for
the client. One ASGI wrapper, the outermost layer of portal.asgi, under every server.

It drops the client-certificate headers (connector.certificates.PROXY_HEADERS, v1.1 §15)
from any other peer, so that a client reaching a worker directly cannot claim a verified
certificate, then applies uvicorn's `ProxyHeadersMiddleware` (X-Forwarded-For and -Proto)
with the same trust. uvicorn's own copy of that middleware is turned off (`make serve`
passes `--no-proxy-headers`, portal.serve): it would replace `scope["client"]` with the
forwarded address before the application could see the TCP peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from connector.certificates import PROXY_HEADERS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """`FORWARDED_ALLOW_IPS` read as uvicorn reads it, so that both agree on who is a
    proxy: addresses, networks (`10.0.0.0/8`), `*` alone for every peer, and anything
    else (a unix socket's path) compared as it is."""

    def __init__(self, entries: list[str]) -> None:
        self.everyone = entries == ["*"]
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.networks: list[Network] = []
        self.literals: set[str] = set()
        for entry in entries:
            try:
                if "/" in entry:
                    self.networks.append(ipaddress.ip_network(entry))
                else:
                    self.addresses.add(ipaddress.ip_address(entry))
            except ValueError:
                self.literals.add(entry)

    def __contains__(self, host: object) -> bool:
        if self.everyone:
            return True
        if not isinstance(host, str) or not host:
            return False
        if host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address in self.addresses or any(address in network for network in self.networks)


class ProxyTrust:
    """The ASGI wrapper: drops the certificate headers from untrusted peers, then lets
    uvicorn's middleware read X-Forwarded-For/-Proto from trusted ones."""

    def __init__(self, app, *, trusted: Iterable[str]) -> None:
        entries = [entry.strip() for entry in trusted if entry.strip()]
        self.trusted = TrustedProxies(entries)
        self.app = ProxyHeadersMiddleware(app, trusted_hosts=entries)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if not (client and client[0] in self.trusted):
                headers = scope.get("headers", [])
                if any(name in PROXY_HEADERS for name, _ in headers):
                    scope = dict(scope, headers=[(name, value) for name, value in headers if name not in PROXY_HEADERS])
        await self.app(scope, receive, send)
