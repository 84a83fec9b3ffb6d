"""The private-network guard shared by every outgoing HTTP client (feeds and webhooks).

A feed URL or a webhook URL comes from a YAML file that may be edited by many people, and a
feed redirects wherever it likes, so by default nothing may reach loopback, private,
link-local, CGNAT, multicast or unspecified addresses (the cloud metadata service, the
database, the admin panel on the LAN). The check runs where it cannot be fooled: on the
addresses the host name resolved to, at connect time, for every connection, including each
redirect hop. The connection is then made to the very address that was checked, so a DNS
server that answers differently the second time (rebinding) gains nothing, and URL parser
tricks such as ``http://127.0.0.1:1\\@example.com/`` end at whatever host httpx decided on,
which is checked like any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from monitor.config import NetworkConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Carrier-grade NAT (RFC 6598) is not `is_private` in Python's table, so it is listed here.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddress(httpcore.ConnectError):
    """A connection to a non-public address that the configuration does not allow."""


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return not (address.is_loopback or address.is_private or address.is_link_local
                or address.is_multicast or address.is_unspecified or address.is_reserved
                or address in _CGNAT)


@dataclass(frozen=True)
class NetworkPolicy:
    """Which non-public destinations are allowed; public ones always are."""

    allow_private: bool = False
    hosts: frozenset[str] = frozenset()  # lower-cased host names
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, allow_private: bool, allowed: Iterable[str]) -> NetworkPolicy:
        hosts, networks = set(), []
        for item in allowed:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.strip().lower().rstrip("."))
        return cls(allow_private, frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        if self.allow_private or is_public(address):
            return True
        return host.lower().rstrip(".") in self.hosts or any(
            address in network for network in self.networks)


PUBLIC_ONLY = NetworkPolicy()


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # A scope id (fe80::1%eth0) is not part of the address itself.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                              for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy applied between resolving and connecting."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await _resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"DNS lookup of {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"DNS lookup failed for {host}: {exc}") from None
        # One forbidden answer refuses the host: a name that resolves to both a public and a
        # private address is how rebinding attacks hedge their bets.
        blocked = [a for a in addresses if not self.policy.allows(host, a)]
        if blocked:
            raise BlockedAddress(
                f"blocked: {host} resolves to non-public address {blocked[0]} "
                "(allow it with network.allowed_hosts or network.allow_private_networks)")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout,
                                                     local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("blocked: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport whose connection pool connects through `GuardedBackend`.

    httpx does not take a network backend as a parameter, so it is set on the pool httpx
    built (httpcore's `network_backend` argument, after the fact). An explicit transport
    also keeps httpx from picking up proxies from the environment, which would move the
    check to the proxy's address.
    """

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(self._pool, httpcore.AsyncConnectionPool):  # pragma: no cover
            raise TypeError("the private-network guard needs httpx's direct connection pool")
        self._pool._network_backend = GuardedBackend(policy)


def blocked_reason(exc: BaseException) -> str | None:
    """The guard's message when `exc` (an httpx error) was caused by it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedAddress):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def network_policy(config: NetworkConfig) -> NetworkPolicy:
    return NetworkPolicy.build(config.allow_private_networks, config.allowed_hosts)
