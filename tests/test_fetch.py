"""Fetching against a misbehaving loopback server: every failure is recorded as the right
reason on its feed, the good feed in the same cycle is stored, memory stays bounded."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import brotli
import pytest
from sqlalchemy import select

from monitor.config import FetchConfig, ScheduleConfig, load_config, load_secrets
from monitor.fetch import Fetcher, HostGate, parse_max_age
from monitor.net import NetworkPolicy, parse_retry_after
from monitor.refresh import backoff_delay, planned_interval
from monitor.service import Monitor
from monitor.store.models import Feed
from tests.conftest import write_config
from tests.servers import FeedServer, Route, rss

Handler = Callable[[BaseHTTPRequestHandler], None]
MB = 1024 * 1024
GOOD = rss([{"title": "خبر سالم", "link": "http://127.0.0.1/good/1", "guid": "g1",
             "description": "متن"}])
TWO = rss([{"title": "نخستین خبر", "link": "http://127.0.0.1/t/1", "guid": "t1"},
           {"title": "دومین خبر که بریده شد", "link": "http://127.0.0.1/t/2", "guid": "t2"}])
ALLOW_LOOPBACK = NetworkPolicy(allow_private=True)


def _headers(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    h.end_headers()


def _write_until_closed(h: BaseHTTPRequestHandler, chunks: Iterator[bytes],
                        chunked: bool = False) -> None:
    try:
        for chunk in chunks:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            h.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client hung up, as it should
    h.close_connection = True


def zeros(total: int, step: int = 64 * 1024) -> Iterator[bytes]:
    block = b"\0" * step
    for _ in range(total // step):
        yield block


def gzip_bomb(decoded: int) -> Iterator[bytes]:
    """A gzip stream of `decoded` zero bytes, compressed as it is sent: never in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * MB
    for _ in range(decoded // MB):
        if out := compressor.compress(block):
            yield out
    yield compressor.flush()


def never_write(server: FeedServer) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        server.stopping.wait(30)
        h.close_connection = True
    return handle


def trickle(server: FeedServer, every: float) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        _headers(h, 200, {"content-type": "application/rss+xml", "content-length": "100000"})
        while not server.stopping.wait(every):
            try:
                h.wfile.write(b" ")
                h.wfile.flush()
            except OSError:
                break
        h.close_connection = True
    return handle


def true_length(h: BaseHTTPRequestHandler) -> None:
    _headers(h, 200, {"content-type": "application/rss+xml", "content-length": str(200 * MB)})
    _write_until_closed(h, zeros(200 * MB))


def chunked_huge(h: BaseHTTPRequestHandler) -> None:
    _headers(h, 200, {"content-type": "application/rss+xml", "transfer-encoding": "chunked"})
    _write_until_closed(h, zeros(200 * MB), chunked=True)


def lying_short(h: BaseHTTPRequestHandler) -> None:
    """Declares 1,000 bytes and sends 200 MB: only the declared bytes are read."""
    _headers(h, 200, {"content-type": "application/rss+xml", "content-length": "1000"})
    _write_until_closed(h, zeros(200 * MB))


def lying_long(h: BaseHTTPRequestHandler) -> None:
    """Declares 10 MB, sends a few KB and hangs up."""
    _headers(h, 200, {"content-type": "application/rss+xml", "content-length": str(10 * MB)})
    _write_until_closed(h, iter([GOOD.encode()]))


def bomb(h: BaseHTTPRequestHandler) -> None:
    _headers(h, 200, {"content-type": "application/rss+xml", "content-encoding": "gzip",
                      "transfer-encoding": "chunked"})
    _write_until_closed(h, gzip_bomb(1024 * MB), chunked=True)


def redirect(to: str, status: int = 302) -> Handler:
    def handle(h: BaseHTTPRequestHandler) -> None:
        _headers(h, status, {"location": to, "content-length": "0"})
    return handle


def chain(server: FeedServer, hops: int) -> str:
    for i in range(hops, 0, -1):
        server.routes[f"/hop/{i}"] = Route(handler=redirect(f"/hop/{i - 1}"))
    server.set_feed("/hop/0", GOOD)
    return server.url(f"/hop/{hops}")


@pytest.fixture
def extra_hosts() -> Iterator[list[FeedServer]]:
    # Retry-After pauses a whole host, so those cases get hosts of their own on loopback.
    servers = [FeedServer(f"127.0.0.{i}").start() for i in (2, 3, 4)]
    yield servers
    for server in servers:
        server.stop()


def test_misbehaving_feeds_are_recorded_and_do_not_hurt_the_good_one(
        tmp_path: Path, sqlite_url: str, feed_server: FeedServer,
        extra_hosts: list[FeedServer]) -> None:
    s = feed_server
    s.routes["/silent"] = Route(handler=never_write(s))
    s.routes["/trickle"] = Route(handler=trickle(s, every=2.0))
    s.routes["/true"] = Route(handler=true_length)
    s.routes["/chunked"] = Route(handler=chunked_huge)
    s.routes["/lie-short"] = Route(handler=lying_short)
    s.routes["/lie-long"] = Route(handler=lying_long)
    s.routes["/bomb"] = Route(handler=bomb)
    s.routes["/loop"] = Route(handler=redirect("/loop"))
    date = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    retry = {"seconds": (extra_hosts[0], "120"), "date": (extra_hosts[1], date),
             "garbage": (extra_hosts[2], "soon-ish")}
    feeds = {
        "good": s.set_feed("/good", GOOD),
        "silent": s.url("/silent"), "trickle": s.url("/trickle"), "true": s.url("/true"),
        "chunked": s.url("/chunked"), "lie-short": s.url("/lie-short"),
        "lie-long": s.url("/lie-long"), "bomb": s.url("/bomb"), "loop": s.url("/loop"),
        "hops30": chain(s, 30), "hops5": chain(s, 5),
        "html": s.set_feed("/html", "<html><body><h1>Welcome</h1></body></html>",
                           content_type="text/html; charset=utf-8"),
        "truncated": s.set_feed("/truncated", TWO[: TWO.rindex("</item>") - 20]),
        "wrong-charset": s.set_feed(
            "/wrong", rss([{"title": "Café crème", "guid": "w1"}], title="Cuisine").replace(
                "utf-8", "windows-1252").encode("cp1252"),
            content_type="application/rss+xml; charset=utf-8"),
        **{f"http{code}": s.set_feed(f"/status/{code}", "<html>error</html>", status=code,
                                     content_type="text/html")
           for code in (401, 403, 404, 410, 500, 502, 503, 504)},
        **{f"429-{kind}": server.set_feed("/limited", "", status=429,
                                          headers={"retry-after": value})
           for kind, (server, value) in retry.items()},
    }
    sibling = extra_hosts[0].set_feed("/sibling", GOOD)
    config = write_config(
        tmp_path / "monitor.yaml", sqlite_url,
        feeds=[{"name": n, "url": u, "interval": 60} for n, u in feeds.items()]
        + [{"name": "sibling", "url": sibling, "interval": 60, "enabled": False}],
        fetch={"connect_timeout": 2, "read_timeout": 3, "total_timeout": 5,
               "per_host_concurrency": 64, "per_host_spacing": 0})
    loaded = load_config(config, env={})
    monitor = Monitor(loaded, load_secrets(loaded, env={}))
    monitor.prepare()  # registers the sibling too: it shares the first 429 host, unpolled

    async def poll() -> list:
        try:
            return await monitor.refresh_feeds(due_only=False)
        finally:
            await monitor.close()

    started = time.monotonic()
    outcomes = {o.feed: o for o in asyncio.run(poll())}
    elapsed = time.monotonic() - started
    with monitor.db.session() as session:
        rows = {f.name: f for f in session.scalars(select(Feed))}

    assert outcomes["good"].result == "stored"
    assert outcomes["hops5"].result == "stored"  # five redirects are allowed
    # Both end at the same document: whichever is stored first has the new article.
    assert sorted((outcomes[n].new_articles, outcomes[n].duplicates)
                  for n in ("good", "hops5")) == [(0, 1), (1, 0)]
    expected: dict[str, str | tuple[str, ...]] = {
        "silent": "read timeout",
        "trickle": "total timeout after 5 s",
        "true": f"too large: Content-Length {200 * MB} > {15 * MB} bytes",
        "chunked": f"too large: body exceeds {15 * MB} bytes",
        "bomb": f"too large: body exceeds {15 * MB} bytes after decompression",
        # The declared 1,000 zero bytes are not a feed; when the surplus arrives in the same
        # read, aiohttp calls it the protocol error it is. Either way it stops there.
        "lie-short": ("not a feed", "protocol error"),
        "lie-long": "protocol error",
        "loop": "too many redirects",
        "hops30": "too many redirects",
        "html": "not a feed",
        "http401": "HTTP 401 Unauthorized", "http403": "HTTP 403 Forbidden",
        "http404": "HTTP 404 Not Found", "http410": "HTTP 410 Gone",
        "http500": "HTTP 500 Internal Server Error", "http502": "HTTP 502 Bad Gateway",
        "http503": "HTTP 503 Service Unavailable", "http504": "HTTP 504 Gateway Timeout",
        "429-seconds": "HTTP 429 Too Many Requests (Retry-After 120 s",
        "429-date": "HTTP 429 Too Many Requests (Retry-After 7",
        "429-garbage": "HTTP 429 Too Many Requests (Retry-After 'soon-ish' ignored",
    }
    for name, reason in expected.items():
        assert outcomes[name].result == "error", (name, outcomes[name])
        assert outcomes[name].error.startswith(reason), (name, outcomes[name].error)
        assert rows[name].last_error == outcomes[name].error
        assert rows[name].error_count == 1
    assert rows["http410"].state == "gone"
    assert rows["good"].state == "ok" and rows["good"].last_error is None
    # A truncated document still yields its complete item; the problem is noted on the feed.
    assert outcomes["truncated"].result == "stored" and outcomes["truncated"].new_articles >= 1
    assert rows["truncated"].last_error.startswith("malformed")
    # A cp1252 body declared as UTF-8 is read as cp1252 and the mismatch is noted.
    assert outcomes["wrong-charset"].result == "stored"
    assert "CharacterEncoding" in rows["wrong-charset"].last_error
    # Retry-After pushes the next check: 120 s (or the backoff, 60 s * 2 +- 10 %, if
    # longer), about 2 h, and garbage is plain backoff.
    now = datetime.now(UTC)
    assert timedelta(seconds=110) < rows["429-seconds"].next_check_at - now \
        < timedelta(seconds=133)
    assert timedelta(minutes=115) < rows["429-date"].next_check_at - now < timedelta(hours=2)
    assert rows["429-garbage"].next_check_at - now < timedelta(seconds=140)
    # ... for every feed of that host, not only the one that was told.
    assert rows["sibling"].next_check_at - now > timedelta(seconds=110)
    # Every slow case ran concurrently: the cycle took about one total timeout.
    assert elapsed < 12


def test_bounded_memory_for_a_gzip_bomb_and_huge_bodies(feed_server: FeedServer) -> None:
    feed_server.routes["/bomb"] = Route(handler=bomb)
    feed_server.routes["/chunked"] = Route(handler=chunked_huge)
    config = FetchConfig(max_body_bytes=4 * MB)

    async def fetch_all() -> list:
        fetcher = Fetcher(config, ALLOW_LOOPBACK)
        try:
            return [await fetcher.fetch(feed_server.url(p)) for p in ("/bomb", "/chunked")]
        finally:
            await fetcher.close()

    tracemalloc.start()
    try:
        results = asyncio.run(fetch_all())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.error for r in results] == [
        f"too large: body exceeds {4 * MB} bytes after decompression",
        f"too large: body exceeds {4 * MB} bytes"]
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MB"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_feeds_are_decoded(feed_server: FeedServer, encoding: str) -> None:
    body = GOOD.encode()
    packed = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}
    url = feed_server.set_feed("/c", packed[encoding](body),
                               headers={"content-encoding": encoding})

    async def fetch() -> object:
        fetcher = Fetcher(FetchConfig(), ALLOW_LOOPBACK)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.close()

    fetched = asyncio.run(fetch())
    assert fetched.error is None and fetched.body == body  # type: ignore[attr-defined]
    assert "br" in feed_server.requests[-1].headers["accept-encoding"]


def test_retry_after_and_cache_control_parsing() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Sun, 22 Nov 2026 12:30:00 GMT", now) == 1800
    assert parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now) == 0  # in the past
    assert parse_retry_after("tomorrow", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_max_age("public, max-age=600") == 600
    assert parse_max_age("no-cache") is None


def test_schedule_honours_hints_within_bounds_and_backs_off() -> None:
    schedule = ScheduleConfig(jitter=0, max_hint=3600, adaptive=False)
    assert planned_interval(300, schedule, [None, None, None]) == 300
    assert planned_interval(300, schedule, [1800.0]) == 1800  # <ttl>30</ttl>
    assert planned_interval(300, schedule, [86400.0]) == 3600  # sy:updatePeriod daily, capped
    assert planned_interval(300, schedule, [60.0]) == 300  # never faster than configured
    off = ScheduleConfig(jitter=0, feed_hints=False)
    assert planned_interval(300, off, [1800.0]) == 300
    assert [backoff_delay(60, n, schedule) for n in (1, 2, 3)] == [120, 240, 480]
    assert backoff_delay(60, 30, schedule) == 86400  # capped at 24 h
    jittery = ScheduleConfig(jitter=0.1)
    delays = {round(backoff_delay(60, 1, jittery), 3) for _ in range(20)}
    assert len(delays) > 1 and all(108 <= d <= 132 for d in delays)


def test_adaptive_interval_follows_the_publishing_rate() -> None:
    schedule = ScheduleConfig(jitter=0, adaptive=True, adaptive_max=7200)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    hourly = [now - timedelta(hours=h) for h in range(10)]
    assert planned_interval(300, schedule, [], hourly, now) == 1800  # half the 1 h gap
    busy = [now - timedelta(minutes=m) for m in range(0, 50, 2)]
    assert planned_interval(300, schedule, [], busy, now) == 300  # configured is the floor
    quiet = [now - timedelta(days=20)]
    assert planned_interval(300, schedule, [], quiet, now) == 7200


def test_cookies_a_feed_sets_are_sent_back_and_headers_read_as_httpx_reads_them(
        feed_server: FeedServer) -> None:
    """The jar is consulted only for responses that set a cookie (`_SetCookies`), which must
    not lose one: a cookie set on a redirect hop or a 304 is sent with the next request. And
    the response's headers, read once into a dict, answer as httpx would: a repeated
    header's values joined by ", "."""
    feed_server.set_feed("/feed", GOOD)
    feed_server.routes["/gate"] = Route(handler=lambda h: _headers(
        h, 302, {"location": "/feed", "set-cookie": "gate=open; Path=/",
                 "content-length": "0"}))
    feed_server.routes["/repeat"] = Route(handler=lambda h: (
        h.send_response(304), h.send_header("cache-control", "public"),
        h.send_header("cache-control", "max-age=900"), h.send_header("etag", '"e"'),
        h.send_header("set-cookie", "seen=304; Path=/"), h.send_header("content-length", "0"),
        h.end_headers()))

    async def fetch_all() -> list[object]:
        fetcher = Fetcher(FetchConfig(), ALLOW_LOOPBACK)
        try:
            return [await fetcher.fetch(feed_server.url(path))
                    for path in ("/gate", "/repeat", "/feed")]
        finally:
            await fetcher.close()

    gate, repeat, feed = asyncio.run(fetch_all())
    assert gate.ok and feed.ok  # type: ignore[attr-defined]
    cookies = [r.headers.get("cookie", "") for r in feed_server.requests]
    assert cookies == ["", "gate=open", "gate=open", "gate=open; seen=304"]
    assert repeat.headers["cache-control"] == "public, max-age=900"  # type: ignore[attr-defined]
    assert repeat.max_age == 900 and repeat.validators.etag == '"e"'  # type: ignore[attr-defined]


def test_per_host_concurrency_and_spacing(feed_server: FeedServer) -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow(h: BaseHTTPRequestHandler) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.3)
        with lock:
            in_flight -= 1
        body = GOOD.encode()
        _headers(h, 200, {"content-type": "application/rss+xml",
                          "content-length": str(len(body))})
        h.wfile.write(body)

    feed_server.routes["/slow"] = Route(handler=slow)
    gate = HostGate(concurrency=2, spacing=0.1)
    admitted: list[float] = []

    async def run() -> list[float | None]:
        fetcher = Fetcher(FetchConfig(), ALLOW_LOOPBACK)

        async def one() -> float | None:
            wait = await gate.enter("127.0.0.1", patience=30)
            admitted.append(time.monotonic())
            if wait is None:
                try:
                    await fetcher.fetch(feed_server.url("/slow"))
                finally:
                    gate.leave("127.0.0.1")
            return wait

        try:
            return await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await fetcher.close()

    waits = asyncio.run(run())
    assert waits == [None] * 6
    assert peak == 2
    # Spacing is measured where it is enforced: when the gate lets a request start (the
    # server's clock adds its own thread-scheduling jitter under load).
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(sorted(admitted)))


def test_a_host_gate_gives_a_feed_back_when_it_would_wait_too_long() -> None:
    async def run() -> tuple[float | None, float | None, float | None]:
        gate = HostGate(concurrency=1, spacing=0)
        assert await gate.enter("h", patience=1) is None
        busy = await gate.enter("h", patience=0.05)  # the only slot is taken
        gate.leave("h")
        gate.pause("h", 30)
        paused = await gate.enter("h", patience=1)
        free = await gate.enter("other", patience=1)
        return busy, paused, free

    busy, paused, free = asyncio.run(run())
    assert busy is not None and busy >= 1
    assert paused is not None and 29 < paused <= 30
    assert free is None
