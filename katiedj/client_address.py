"""Which client a per-address limit counts (publish key failures, listener connections)."""

from __future__ import annotations

import ipaddress


def address_bucket(address: str) -> str:
    """An IPv4 address, or an IPv6 /64: anyone holding one IPv6 address holds its whole /64
    (a household or a LAN, like one IPv4 address behind NAT), so counting single IPv6
    addresses would bound nothing. IPv4-mapped IPv6 counts as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a unix socket, a trusted proxy's odd header): as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
