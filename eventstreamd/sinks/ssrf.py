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

POLICIES = ("none", "link-local", "private")


class BlockedTarget(OSError):
    """The target resolves to an address the SSRF policy refuses."""


def is_blocked(address: str, policy: str) -> bool:
    if policy == "none":
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False  # not an IP literal: the resolver checks what it resolves to
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return True
    if policy == "private":
        return (ip.is_loopback or ip.is_private or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or ip in ipaddress.ip_network("100.64.0.0/10"))
    return False


def check_host(host: str | None, policy: str) -> None:
    """Raise BlockedTarget for an IP-literal host the policy refuses."""
    if host and is_blocked(host.strip("[]"), policy):
        raise BlockedTarget(f"address {host} is refused by security.block_targets = {policy!r}")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses blocked addresses."""

    def __init__(self, policy: str, inner: AbstractResolver | None = None) -> None:
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


def guarded_connector_args(policy: str) -> dict[str, Any]:
    return {} if policy == "none" else {"resolver": GuardedResolver(policy)}
