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

import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from aiohttp import ClientSession, TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from httpx_aiohttp import AiohttpTransport

from monitor.config import NetworkConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Carrier-grade NAT (RFC 6598) is not `is_private` in Python's table, so it is listed here.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddress(OSError):
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


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver with the policy applied to every answer. aiohttp connects to the
    addresses returned here (and caches them), never to a second lookup."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        # One forbidden answer refuses the host: a name that resolves to both a public and a
        # private address is how rebinding attacks hedge their bets.
        for answer in answers:
            address = ipaddress.ip_address(answer["host"].split("%")[0])
            if not self.policy.allows(host, address):
                raise _blocked(host, address)
        return answers

    async def close(self) -> None:
        await self._inner.close()


def _blocked(host: str, address: IPAddress) -> BlockedAddress:
    return BlockedAddress(
        f"blocked: {host} resolves to non-public address {address} "
        "(allow it with network.allowed_hosts or network.allow_private_networks)")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every outgoing HTTP client of the process (feeds and webhooks):
    certificates verified against certifi's CA bundle, as httpx does by default.

    One context for all of them, built on first use: each context holds its own parsed copy
    of the CA bundle (about 0.7 MB, and 20-40 ms of CPU to build), and the clients' settings
    never differ. A context is safe to share between connections and clients; nothing
    changes it after it is built.
    """
    return httpx.create_ssl_context(trust_env=False)


class GuardedTransport(AiohttpTransport):
    """httpx's API on aiohttp's engine (httpx-aiohttp), with the private-network guard.

    aiohttp is several times cheaper per request than httpx's own transport under
    concurrency. Host names are checked by `GuardedResolver` at connect time; an IP literal
    never reaches a resolver in aiohttp, so it is checked here, for each request and thus
    each redirect hop (httpx follows redirects above the transport). aiohttp's own
    decompression is off (httpx-aiohttp sets auto_decompress=False): `monitor.fetch`
    decodes in bounded steps. Proxies from the environment are not used, since they would
    move the check to the proxy's address.
    """

    def __init__(self, policy: NetworkPolicy, max_connections: int = 100) -> None:
        super().__init__(verify=tls_context(),
                         limits=httpx.Limits(max_connections=max_connections),
                         trust_env=False)
        self.policy = policy

    def get_client(self) -> ClientSession:
        connector = TCPConnector(
            resolver=GuardedResolver(self.policy), ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry)
        return ClientSession(connector=connector, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        address = _ip_literal(host)
        if address is not None and not self.policy.allows(host, address):
            blocked = _blocked(host, address)
            raise httpx.ConnectError(str(blocked), request=request) from blocked
        # httpx builds a redirect's GET with an unread empty stream, which httpx-aiohttp would
        # send as a chunked body; servers then read the stray chunk as a broken request.
        await request.aread()
        if request.url.userinfo:
            # httpx already turned URL credentials into an Authorization header; aiohttp
            # refuses a request that has both.
            request.url = request.url.copy_with(username=None, password=None)
        return await super().handle_async_request(request)


@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> IPAddress | None:
    """The host as an IP address, None for a name. Kept per host: it is asked at every
    request, and a name (the usual case) is told by a raised and caught ValueError."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date); None if garbage.

    Shared by feeds (429/503 pause a host) and webhooks (a receiver asks for a pause).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


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
