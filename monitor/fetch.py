"""Fetching feeds over HTTP: conditional GET, time limits, a cap on the decoded body.

The only stage that talks to feed servers. It never raises for a transport problem: every
outcome is a `Fetched` record with a human-readable `error` (timeout, HTTP 404, too large...).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from monitor.config import FetchConfig


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Fetched:
    url: str  # the URL that answered, after redirects
    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    validators: Validators = field(default_factory=Validators)
    error: str | None = None
    elapsed: float = 0.0
    permanent_redirect: str | None = None  # a 301/308 target worth remembering

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def body_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class BodyTooLarge(Exception):
    pass


def _describe(exc: BaseException) -> str:
    """A reason an analyst can act on, not a traceback."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "connect timeout",
            httpx.ReadTimeout: "read timeout",
            httpx.WriteTimeout: "write timeout",
            httpx.PoolTimeout: "connection pool timeout",
        }.get(type(exc), "timeout")
        return kind
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
            return f"TLS error: {text}"[:300]
        if "Name or service not known" in text or "nodename" in text or "resolve" in text:
            return f"DNS lookup failed: {text}"[:300]
        return f"connection failed: {text or 'refused'}"[:300]
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"[:300]
    if isinstance(exc, httpx.DecodingError):
        return f"undecodable body: {exc}"[:300]
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"invalid URL: {exc}"[:300]
    if isinstance(exc, BodyTooLarge):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:300]


class Fetcher:
    """One HTTP client shared by all feeds of a process."""

    def __init__(self, config: FetchConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout,
                                write=config.read_timeout, pool=config.total_timeout)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=True,
            max_redirects=config.max_redirects,
            limits=httpx.Limits(max_connections=config.concurrency,
                                max_keepalive_connections=config.concurrency),
            headers={"User-Agent": config.user_agent,
                     "Accept": "application/rss+xml, application/atom+xml, "
                               "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"},
            transport=transport,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str, validators: Validators = Validators()) -> Fetched:
        started = time.monotonic()
        headers = {}
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        try:
            # The total deadline cuts off a server that trickles bytes under the read timeout.
            async with asyncio.timeout(self.config.total_timeout):
                return await self._get(url, headers, started)
        except Exception as exc:  # every transport failure becomes a recorded reason
            reason = _describe(exc)
            if isinstance(exc, TimeoutError) and not isinstance(exc, httpx.TimeoutException):
                reason = f"total timeout after {self.config.total_timeout:g} s"
            return Fetched(url=url, error=reason, elapsed=time.monotonic() - started)

    async def _get(self, url: str, headers: dict[str, str], started: float) -> Fetched:
        async with self._client.stream("GET", url, headers=headers) as response:
            final_url = str(response.url)
            permanent = None
            for hop in response.history:
                if hop.status_code in (301, 308):
                    permanent = str(hop.headers.get("location") and hop.url.join(
                        hop.headers["location"]))
                else:
                    break  # a temporary hop ends what can be remembered permanently
            response_headers = {k.lower(): v for k, v in response.headers.items()}
            got = Validators(etag=response.headers.get("etag"),
                             last_modified=response.headers.get("last-modified"))
            if response.status_code == 304:
                return Fetched(url=final_url, status=304, headers=response_headers,
                               validators=got, elapsed=time.monotonic() - started,
                               permanent_redirect=permanent)
            if response.status_code != 200:
                return Fetched(url=final_url, status=response.status_code,
                               headers=response_headers, validators=got,
                               error=f"HTTP {response.status_code}"
                                     + (f" {response.reason_phrase}"
                                        if response.reason_phrase else ""),
                               elapsed=time.monotonic() - started,
                               permanent_redirect=permanent)
            body = await self._read_capped(response)
        # The decoded body was read, so its encoding header no longer applies.
        response_headers.pop("content-encoding", None)
        return Fetched(url=final_url, status=200, body=body, headers=response_headers,
                       validators=got, elapsed=time.monotonic() - started,
                       permanent_redirect=permanent)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        limit = self.config.max_body_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit and \
                not response.headers.get("content-encoding"):
            raise BodyTooLarge(f"too large: Content-Length {declared} > {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        # aiter_bytes yields decoded bytes, so a compression bomb stops at the cap.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"too large: body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
