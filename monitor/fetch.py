"""Fetching feeds over HTTP: conditional GET, time limits, a cap on the decoded body.

The only stage that talks to feed servers. It never raises for a transport problem: every
outcome is a `Fetched` record with a human-readable `error` (timeout, HTTP 404, too large...).
Connections go through the private-network guard of `monitor.net`. Politeness towards one
host (how many requests at once, how far apart, a pause after Retry-After) is `HostGate`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import aiohttp
import brotli
import httpx

from monitor.config import FetchConfig
from monitor.net import (
    PUBLIC_ONLY,
    GuardedTransport,
    NetworkPolicy,
    blocked_reason,
    parse_retry_after,
)

# Decoded output per step: a compression bomb never expands by more than this at once.
_DECODE_STEP = 64 * 1024


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
    retry_after: float | None = None  # seconds a 429/503 asked us to wait
    max_age: float | None = None  # Cache-Control max-age of a 200/304

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


def parse_max_age(cache_control: str | None) -> float | None:
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", cache_control or "", re.I)
    return float(match.group(1)) if match else None


def _describe(exc: BaseException) -> str:
    """A reason an analyst can act on, not a traceback."""
    if blocked := blocked_reason(exc):
        return blocked
    # httpx-aiohttp maps aiohttp's errors coarsely (a dropped connection becomes
    # ConnectTimeout) but keeps the original as the cause, which says what happened.
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects"
    if isinstance(cause, aiohttp.ConnectionTimeoutError | httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(cause, aiohttp.SocketTimeoutError | httpx.ReadTimeout):
        return "read timeout"
    if isinstance(cause, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(cause, aiohttp.ClientSSLError | ssl.SSLError):
        return f"TLS error: {cause}"[:300]
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {cause.host}: {cause.os_error.strerror or cause}"[:300]
    if isinstance(cause, aiohttp.ClientConnectorError):
        return f"connection failed: {cause.os_error.strerror or cause}"[:300]
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return "protocol error: the server closed the connection without an answer"
    if isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientResponseError
                  | httpx.RemoteProtocolError):
        return f"protocol error: {cause}"[:300]
    if isinstance(cause, httpx.ConnectError):
        return f"connection failed: {cause}"[:300]
    if isinstance(cause, httpx.DecodingError | zlib.error | brotli.error):
        return f"undecodable body: {cause}"[:300]
    if isinstance(cause, httpx.UnsupportedProtocol | httpx.InvalidURL
                  | aiohttp.InvalidURL):
        return f"invalid URL: {cause}"[:300]
    if isinstance(cause, BodyTooLarge):
        return str(cause)
    return f"{type(cause).__name__}: {cause}"[:300]


class _Decoder:
    """Content-Encoding decoding in bounded steps. The engine hands over raw bytes; decoding
    each read whole would turn one 64 KiB read of a gzip bomb into 64 MiB at once."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
            self._first = True
        elif encoding == "br":
            self._brotli = brotli.Decompressor()
        else:
            raise httpx.DecodingError(f"unsupported content-encoding {encoding!r}")

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self.encoding == "br":
            yield self._brotli.process(data, output_buffer_limit=_DECODE_STEP)
            while not self._brotli.can_accept_more_data():
                yield self._brotli.process(b"", output_buffer_limit=_DECODE_STEP)
            return
        if self.encoding == "deflate" and self._first and data:
            self._first = False
            try:  # "deflate" is zlib-wrapped by the spec, raw by many servers
                out = self._zlib.decompress(data, _DECODE_STEP)
            except zlib.error:
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._zlib.decompress(data, _DECODE_STEP)
        else:
            out = self._zlib.decompress(data, _DECODE_STEP)
        yield out
        while self._zlib.unconsumed_tail:
            yield self._zlib.decompress(self._zlib.unconsumed_tail, _DECODE_STEP)


@dataclass
class _Host:
    slots: asyncio.Semaphore
    next_start: float = 0.0  # monotonic time before which no request may start
    paused_until: float = 0.0  # monotonic; set by Retry-After


class HostGate:
    """Politeness towards one host within this process: at most `concurrency` requests at
    once, starts at least `spacing` apart, and none while a Retry-After pause lasts."""

    def __init__(self, concurrency: int, spacing: float) -> None:
        self.concurrency = concurrency
        self.spacing = spacing
        self._hosts: dict[str, _Host] = {}

    def _host(self, host: str) -> _Host:
        if host not in self._hosts:
            self._hosts[host] = _Host(asyncio.Semaphore(self.concurrency))
        return self._hosts[host]

    def pause(self, host: str, seconds: float) -> None:
        state = self._host(host)
        state.paused_until = max(state.paused_until, time.monotonic() + seconds)

    async def enter(self, host: str, patience: float) -> float | None:
        """Wait for a turn at `host` for up to `patience` seconds. None means it is ours
        (call `leave`); a number means give up and come back in that many seconds."""
        state = self._host(host)
        arrived = now = time.monotonic()
        if state.paused_until > now:
            return state.paused_until - now
        if state.slots.locked():  # a free slot is taken at once, without a timer
            try:
                async with asyncio.timeout(patience):
                    await state.slots.acquire()
            except TimeoutError:
                return max(self.spacing, 1.0)
        else:
            await state.slots.acquire()
        now = time.monotonic()
        start = max(now, state.next_start)
        if state.paused_until > now or start - arrived > patience:
            state.slots.release()
            return max(state.paused_until - now, start - now, 1.0)
        state.next_start = start + self.spacing
        if start > now:
            await asyncio.sleep(start - now)
        return None

    def leave(self, host: str) -> None:
        self._host(host).slots.release()


class _SetCookies(httpx.Cookies):
    """The client's cookie jar, consulted only for a response that sets a cookie.

    httpx hands every response to the jar, through urllib stand-ins for the request and the
    response that cost about a tenth of a 304's CPU, and a feed server rarely sets a cookie.
    The jar reads nothing but these two headers, so skipping the others changes nothing.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            super().extract_cookies(response)


class _FeedClient(httpx.AsyncClient):
    """httpx's client with `_SetCookies` as its jar (httpx reads the jar through this
    property, whose setter would otherwise wrap any jar in a plain `httpx.Cookies`)."""

    def __init__(self, *, cookies: httpx.Cookies | None = None, **kwargs: Any) -> None:
        super().__init__(cookies=cookies, **kwargs)
        self.cookies = cookies

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return self._set_cookies

    @cookies.setter
    def cookies(self, cookies: httpx.Cookies | None) -> None:
        self._set_cookies = _SetCookies(cookies)


# A feed's URL parsed once, not at every poll: half of httpx's cost of building a request
# (20 of 40 µs, about 5 % of a poll answered 304), for 0.4 KB per feed. httpx.URL is
# immutable, so one object serves every request to it.
_parsed = lru_cache(maxsize=16_384)(httpx.URL)


class Fetcher:
    """One HTTP client shared by all feeds of a process."""

    def __init__(self, config: FetchConfig, policy: NetworkPolicy = PUBLIC_ONLY,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        timeout = httpx.Timeout(connect=config.connect_timeout, read=config.read_timeout,
                                write=config.read_timeout, pool=config.total_timeout)
        self._client = _FeedClient(
            timeout=timeout,
            follow_redirects=True,
            max_redirects=config.max_redirects,
            headers={"User-Agent": config.user_agent,
                     "Accept": "application/rss+xml, application/atom+xml, "
                               "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5",
                     "Accept-Encoding": "gzip, deflate, br"},
            transport=transport or GuardedTransport(policy, config.concurrency),
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
        async with self._client.stream("GET", _parsed(url), headers=headers) as response:
            final_url = str(response.url)
            permanent = None
            for hop in response.history:
                if hop.status_code in (301, 308) and hop.headers.get("location"):
                    permanent = str(hop.url.join(hop.headers["location"]))
                else:
                    break  # a temporary hop ends what can be remembered permanently
            # Lower-cased names, repeated headers joined by ", " (as httpx's own lookups
            # answer), read once: each httpx lookup walks and decodes every header again.
            response_headers = dict(response.headers.items())
            got = Validators(etag=response_headers.get("etag"),
                             last_modified=response_headers.get("last-modified"))
            common = dict(url=final_url, status=response.status_code,
                          headers=response_headers, validators=got,
                          permanent_redirect=permanent)
            if response.status_code == 304:
                return Fetched(**common, elapsed=time.monotonic() - started,
                               max_age=parse_max_age(response_headers.get("cache-control")))
            if response.status_code != 200:
                retry_after = None
                if response.status_code in (429, 503):
                    retry_after = parse_retry_after(response_headers.get("retry-after"))
                return Fetched(**common, error=f"HTTP {response.status_code}"
                               + (f" {response.reason_phrase}" if response.reason_phrase
                                  else ""),
                               elapsed=time.monotonic() - started, retry_after=retry_after)
            body = await self._read_capped(response, response_headers)
        max_age = parse_max_age(response_headers.get("cache-control"))
        # The decoded body was read, so its encoding header no longer applies.
        response_headers.pop("content-encoding", None)
        return Fetched(**{**common, "headers": response_headers}, body=body,
                       elapsed=time.monotonic() - started, max_age=max_age)

    async def _read_capped(self, response: httpx.Response, headers: Mapping[str, str]
                           ) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"too large: Content-Length {declared} > {limit} bytes")
        # Encodings are listed in the order they were applied, so they are undone in reverse.
        encodings = [e.strip().lower() for e in
                     headers.get("content-encoding", "").split(",")
                     if e.strip() and e.strip().lower() != "identity"]
        decoders = [_Decoder(e) for e in reversed(encodings)]
        chunks: list[bytes] = []
        size = 0

        def decoded(data: bytes, stage: int = 0) -> Iterator[bytes]:
            if stage == len(decoders):
                yield data
                return
            for part in decoders[stage].decode(data):
                yield from decoded(part, stage + 1)

        async for raw in response.aiter_raw():
            for chunk in decoded(raw):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"too large: body exceeds {limit} bytes"
                                       + (" after decompression" if decoders else ""))
                chunks.append(chunk)
        return b"".join(chunks)
