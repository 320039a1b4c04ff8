"""The server-side request forgery guard of webhooks (contract v1.1 §16).

A webhook URL is chosen by a customer and fetched by our servers, from inside our network.
Without a guard it reaches what only we can reach: the metadata service of the cloud
(169.254.169.254), the database, the Redis, the admin of a router. So in production a
webhook may only go to public addresses; `DEBUG` or `CLOUD_CONNECTOR["WEBHOOK_ALLOW_PRIVATE"]`
lift the rule for development and for deployments whose receivers live on a private network.

Two checks, at two moments:
- `validate_url` when the endpoint is written: the URL's form, and a host that is an address
  literal (in any spelling `inet_aton` accepts: `127.1`, `0x7f.0.0.1`, `2130706433`) or a
  localhost name. No DNS there: a name's addresses change, so they are judged when used.
- `vetted_addresses` at each delivery: the name is resolved and refused if ANY address is
  not public; the delivery then connects to the vetted address itself (connector.webhooks.
  transport), so a DNS answer that changes between the check and the connection (rebinding)
  cannot move it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from connector.conf import connector_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000
ADDRESS_NOT_ALLOWED = "address not allowed"

# Names that mean this machine without asking DNS (RFC 6761 §6.3 reserves *.localhost).
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 and 8215).
_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_url_form = URLValidator(schemes=["http", "https"])


def private_allowed() -> bool:
    """Whether webhooks may reach private addresses here (development, private receivers)."""
    return bool(settings.DEBUG or connector_settings.WEBHOOK_ALLOW_PRIVATE)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64), if any: each is
    a way to spell 127.0.0.1 that a naive IPv6 check lets through."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether an address is one a webhook may reach in production: globally routable and
    unicast, whatever it embeds. `is_global` is false for private, loopback, link-local,
    shared (100.64/10), documentation, reserved and unspecified ranges."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False  # fec0::/10: deprecated, but still routed inside some networks
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def address_literal(host: str) -> IPAddress | None:
    """The address a URL's host names literally, or None for a name. IPv4 is read the way the
    C library reads it (`inet_aton`: `127.1`, `0177.0.0.1` and `2130706433` are all
    127.0.0.1), since that is how the connection would read it."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_local_name(host: str) -> bool:
    host = host.rstrip(".").lower()
    return host in _LOCAL_NAMES or host.endswith(".localhost")


def _parsed(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise ValidationError("Enter a URL.", code="invalid")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"A webhook URL has at most {MAX_URL_LENGTH} characters.", code="max_length")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValidationError("Enter a valid URL.", code="invalid") from None
    if not parts.scheme or not parts.netloc:
        raise ValidationError("Enter a valid URL.", code="invalid")
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError("A webhook URL starts with https://.", code="scheme")
    return parts


def validate_url(url: str) -> None:
    """Refuse a webhook URL (ValidationError, one clear message) that is not http(s), is
    `http://` outside DEBUG, carries a user name or password, or names a private, loopback,
    link-local, multicast, reserved or unspecified address or localhost while private
    addresses are not allowed. Names are not resolved here (see the module's docstring)."""
    parts = _parsed(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError("A webhook URL may not hold a user name or password.", code="userinfo")
    if not parts.hostname:
        raise ValidationError("A webhook URL needs a host.", code="invalid")
    try:
        _url_form(url)
    except ValidationError:
        raise ValidationError("Enter a valid URL.", code="invalid") from None
    if parts.scheme.lower() == "http" and not settings.DEBUG:
        raise ValidationError("A webhook URL must use https:// (http:// is accepted only with DEBUG).", code="https")
    if private_allowed():
        return
    literal = address_literal(parts.hostname)
    if is_local_name(parts.hostname) or (literal is not None and not is_public(literal)):
        raise ValidationError(
            "A webhook URL may not point to a private, loopback, link-local or reserved address.",
            code="private",
        )


class AddressNotAllowed(Exception):
    """A webhook host resolved to an address the guard refuses (or to none at all)."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of a host, in the resolver's order of preference (the seam tests replace
    to give a name the addresses they need)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone ("fe80::1%eth0"): the zone is not the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def vetted_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses a delivery may connect to for this host, or AddressNotAllowed. Every
    address must pass, not only the first: a resolver may rotate them, and a name answering
    one public and one private address is a rebinding attempt."""
    if not private_allowed() and is_local_name(host):
        raise AddressNotAllowed(ADDRESS_NOT_ALLOWED)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as error:
        raise AddressNotAllowed(f"cannot resolve host: {error}") from None
    if not addresses:
        raise AddressNotAllowed("cannot resolve host")
    if not private_allowed() and not all(is_public(address) for address in addresses):
        raise AddressNotAllowed(ADDRESS_NOT_ALLOWED)
    return addresses
