"""A product's image URL, which every viewer's page loads: over https, without a user or a
password, from a host DNS can hold that is public, not one of each viewer's own network."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, HttpUrl

# Names that only mean something inside one network: reserved (RFC 6761, 6762, 8375; ICANN's
# .internal, and .home, .corp, which it will never delegate), or used so by routers and offices.
_LOCAL_SUFFIXES: tuple[str, ...] = (
    ".localhost", ".local", ".internal", ".home.arpa", ".home", ".corp",
    ".lan", ".localdomain", ".intranet", ".private",
)  # fmt: skip


def _shown_to_viewers(url: HttpUrl) -> HttpUrl:
    # Every viewer's page loads it: over https (an http image on an https page is blocked or
    # flagged), without a user or password, which would be published to all of them, and from
    # a public host: one on a private network would make every viewer's browser ask their own
    # router or intranet for it.
    if url.scheme != "https":
        raise ValueError("images must be https URLs")
    if url.username is not None or url.password is not None:
        raise ValueError("image URLs cannot carry a user name or password")
    if not _is_host_name(url.host or ""):
        raise ValueError("image URLs must name a valid host (labels of 1 to 63 characters)")
    if not _is_public_host(url.host or ""):
        raise ValueError("image URLs must name a public host")
    return url


def _is_host_name(host: str) -> bool:
    """A name DNS can hold (RFC 1035 2.3.4), or an IP address: no empty label (`img..example`),
    none over 63 characters, 253 in all."""
    if host.startswith("["):
        return True  # an IPv6 address, checked by the URL's parser
    name = host.removesuffix(".")
    return len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


def _is_public_host(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = "." + host.rstrip(".").lower()
        return name.count(".") > 1 and not name.endswith(_LOCAL_SUFFIXES)
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NOT_PUBLIC_IPV6):
            return False
        carried = _carried_ipv4(address)
        return carried is None or carried.is_global
    return True


# NAT64's well-known prefix (RFC 6052): its gateways reach the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not public, though Python counts them global (3.11.7, the interpreter this runs on; later
# releases count fewer): one network's own NAT64 (RFC 8215), site-local (deprecated, RFC
# 3879), and IPv4 addresses written the old ways, compatible (RFC 4291) and translated (SIIT).
_NOT_PUBLIC_IPV6 = tuple(
    ipaddress.IPv6Network(network)
    for network in ("64:ff9b:1::/48", "fec0::/10", "::/96", "::ffff:0:0:0/96")
)


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a global-looking IPv6 address leads to (6to4, NAT64), which may be one
    of the viewer's own network (`2002:a00:1::` is 10.0.0.1). Teredo's are not global."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


ImageUrl = Annotated[HttpUrl, AfterValidator(_shown_to_viewers)]
