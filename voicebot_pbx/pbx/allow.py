"""Which peers may connect (pure): CIDR allow-lists for the PBX-facing listeners and the
health endpoint. An empty list allows everyone; listeners default to loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_CIDRS = ("127.0.0.0/8", "::1/128")


def parse_cidrs(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDR strings ("10.0.0.0/8", "192.0.2.7", "::1/128"); ValueError if bad.

    Host bits are allowed ("10.1.2.3/8" means 10.0.0.0/8), so a config typo is not fatal
    in a surprising way; a malformed entry is.
    """
    networks = []
    for text in cidrs:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {text!r}") from None
    return tuple(networks)


def peer_allowed(addr: str, allowlist_cidrs: Iterable[str | Network]) -> bool:
    """True when ``addr`` (an IP string, as in ``peername[0]``) is inside the allowlist.

    An empty allowlist allows everyone. IPv4-mapped IPv6 (``::ffff:10.0.0.5``) is matched as
    IPv4, a zone (``fe80::1%eth0``) is ignored, anything unparsable is refused. A malformed
    CIDR raises ValueError (validate config with ``parse_cidrs`` first).
    """
    networks = tuple(
        item
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network)
        else parse_cidrs((item,))[0]
        for item in allowlist_cidrs
    )
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
