"""Where webhooks may be sent: http(s) URLs whose host resolves only to public addresses,
unless an operator allows a private network (WEBHOOKS_ALLOWED_PRIVATE_NETWORKS).

The check runs at registration and again before every attempt (a name may resolve
elsewhere by then), and the attempt connects to the address that was checked, so a
name that changes its answer between the check and the connection gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 prefixes that carry an IPv4 address the packet ends up at.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(ValueError):
    """The URL may not be called; the message says why, for the user."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`address`, `port`) and what to ask for there."""

    scheme: str
    host: str  # as in the URL: the Host header and the TLS server name
    port: int
    path: str  # with its query
    address: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str) -> Target:
    """The URL's target once every address its host resolves to is allowed; raises
    AddressRefused saying what is wrong."""
    scheme, host, port, path = _parts(url)
    addresses = resolve(host, port)
    for address in addresses:
        if not allowed(address):
            raise AddressRefused(
                f"{host} resolves to {address}, a private, loopback, link-local or reserved "
                "address; webhooks are only sent to public addresses."
            )
    return Target(scheme, host, port, path, str(addresses[0]))


def _parts(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"Not a valid URL: {exc}.") from None
    schemes = ("https", "http") if settings.WEBHOOKS_ALLOW_HTTP else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefused(f"The URL must start with {' or '.join(s + '://' for s in schemes)}.")
    if not parts.hostname:
        raise AddressRefused("The URL must name a host.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("Credentials in the URL are not supported; put a token in its path.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (itself, when it is an address)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(f"The host {host} cannot be resolved ({exc}).") from None
    addresses = list(
        dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found)
    )
    if not addresses:
        raise AddressRefused(f"The host {host} has no address.")
    return addresses


def allowed(address: IPAddress) -> bool:
    """Whether webhooks may be sent to `address`: a public one, or one in a network the
    operator allows (judged by the IPv4 address an IPv6 one leads to, if any)."""
    networks = allowed_networks()
    return all(
        _public(a) or any(a.version == n.version and a in n for n in networks)
        for a in _judged(address)
    )


def _judged(address: IPAddress) -> list[IPAddress]:
    """The addresses that decide: an IPv4-mapped or NAT64 address's IPv4 address; a 6to4
    address and its IPv4 address; else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address in NAT64:
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
    return [address]


def _public(address: IPAddress) -> bool:
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [
        ipaddress.ip_network(cidr.strip(), strict=False)
        for cidr in settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS
        if cidr.strip()
    ]
