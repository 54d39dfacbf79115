"""The SSRF guard: which addresses a webhook may be delivered to (`security.block_targets`).

Policies:
- `"none"`: anything goes.
- `"link-local"` (the default): refuse 169.254.0.0/16 and fe80::/10 — where
  cloud metadata services live (169.254.169.254), the classic SSRF prize —
  while loopback and private networks stay allowed, so the single-host quick
  start (a receiver on localhost, MinIO on the LAN) keeps working.
- `"private"`: also refuse loopback, private (RFC 1918, fc00::/7), shared
  (100.64/10), multicast, reserved and unspecified addresses — for
  deployments where integrations are registered by people who must not reach
  the host's neighbours.

The check runs where the connection is made (a resolver wrapper, so a name
that later resolves somewhere else — DNS rebinding — is still caught) and for
literal IP addresses, which aiohttp never passes to a resolver.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..config import BlockPolicy


class BlockedTarget(OSError):
    """The target resolves to an address the SSRF policy refuses."""


_IPv4 = ipaddress.IPv4Address
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def parse_address(host: str) -> _IP | None:
    """The address a connection to `host` would reach, when `host` is an address literal
    in any form the resolver accepts; None for a name.

    `getaddrinfo` (and so aiohttp) accepts the old `inet_aton` forms as well:
    `2852039166`, `0xA9FEA9FE`, `0251.0376.0251.0376` and `169.254.1` all
    mean 169.254.169.254 and must be judged as that.
    """
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if not text or ":" in text or not all(c.isalnum() or c == "." for c in text):
        return None
    try:
        return _IPv4(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and is routed to (mapped, compatible,
    NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return _IPv4(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        return _IPv4(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _refused(ip: _IP, policy: BlockPolicy) -> bool:
    if ip.is_link_local:
        return True
    if policy == "private":
        return (ip.is_loopback or ip.is_private or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or (isinstance(ip, _IPv4) and ip in _SHARED))
    return False


def is_blocked(address: str, policy: BlockPolicy) -> bool:
    if policy == "none":
        return False
    ip = parse_address(address)
    if ip is None:
        return False  # a name: the resolver checks what it resolves to
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and _refused(inner, policy):
            return True
    return _refused(ip, policy)


def check_host(host: str | None, policy: BlockPolicy) -> None:
    """Raise BlockedTarget for an IP-literal host the policy refuses."""
    if host and is_blocked(host.strip("[]"), policy):
        raise BlockedTarget(f"address {host} is refused by security.block_targets = {policy!r}")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses blocked addresses."""

    def __init__(self, policy: BlockPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not is_blocked(r["host"], self._policy)]
        if not allowed:
            raise BlockedTarget(
                f"{host} resolves only to addresses refused by security.block_targets = "
                f"{self._policy!r}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_args(policy: BlockPolicy) -> dict[str, Any]:
    return {} if policy == "none" else {"resolver": GuardedResolver(policy)}
