"""Fetching costs, measured: `python benchmarks/fetch_engine.py` (writes fetch_engine.md).

1. Client CPU for 2,000 loopback GETs of a 30-item feed at 32 concurrent, through
   `monitor.fetch.Fetcher`, with httpx's own transport and with the guarded aiohttp engine
   the daemon uses. The feed server runs in another process, so only the client is timed.
2. The quadratic-entity feed (106 KB, one 100 KB entity referenced 2,000 times) through
   `parse_feed`: time and peak traced memory.
3. A 1 GB gzip bomb through `Fetcher`: time and peak traced memory.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from monitor.config import FetchConfig  # noqa: E402
from monitor.fetch import Fetcher  # noqa: E402
from monitor.net import NetworkPolicy  # noqa: E402
from monitor.parse import parse_feed  # noqa: E402

FEEDS = 2000
LOOPBACK = NetworkPolicy(allow_private=True)


def _serve(port: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from tests.servers import FeedServer, Route, rss
    from tests.test_fetch import bomb

    server = FeedServer().start()
    body = rss([{"title": f"item {i} " + "x" * 800, "guid": str(i), "link": f"http://a/{i}"}
                for i in range(30)])
    for i in range(FEEDS):
        server.set_feed(f"/f/{i}", body)
    server.routes["/bomb"] = Route(handler=bomb)
    port.put(server.port)
    time.sleep(3600)


async def _fetch_all(port: int, transport: httpx.AsyncBaseTransport | None) -> tuple[float, float]:
    fetcher = Fetcher(FetchConfig(concurrency=32), LOOPBACK, transport=transport)
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            fetched = await fetcher.fetch(f"http://127.0.0.1:{port}/f/{i}")
            assert fetched.error is None, fetched.error

    wall, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(FEEDS)))
    result = time.monotonic() - wall, time.process_time() - cpu
    await fetcher.close()
    return result


def _quadratic() -> tuple[float, float]:
    body = ('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "' + "x" * 100_000 + '">]>'
            '<rss version="2.0"><channel><title>t</title><item><title>' + "&big;" * 2000
            + "</title></item></channel></rss>").encode()
    tracemalloc.start()
    started = time.monotonic()
    parse_feed(body, {"content-type": "application/rss+xml"}, "http://127.0.0.1/f")
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak


async def _bomb(port: int) -> tuple[float, float, str]:
    fetcher = Fetcher(FetchConfig(), LOOPBACK)
    tracemalloc.start()
    started = time.monotonic()
    fetched = await fetcher.fetch(f"http://127.0.0.1:{port}/bomb")
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    await fetcher.close()
    return elapsed, peak, fetched.error or ""


def main() -> None:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    server = multiprocessing.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    port = queue.get(timeout=60)
    lines = ["# Fetching costs", "",
             f"`python benchmarks/fetch_engine.py`, {time.strftime('%Y-%m-%d')}, "
             f"{multiprocessing.cpu_count()} cores.", "",
             f"{FEEDS:,} loopback GETs of a 30-item feed (27 KB), 32 concurrent, client only:", "",
             "| transport | wall | client CPU |", "|---|---|---|"]
    for name, make in (("httpx's own (AsyncHTTPTransport)", lambda: httpx.AsyncHTTPTransport()),
                       ("guarded aiohttp engine (the daemon's)", lambda: None)):
        wall, cpu = asyncio.run(_fetch_all(port, make()))
        lines.append(f"| {name} | {wall:.1f} s | {cpu:.1f} s |")
    elapsed, peak = _quadratic()
    lines += ["", f"Quadratic-entity feed (106 KB): parsed in {elapsed:.2f} s, "
              f"peak {peak / 1e6:.1f} MB traced."]
    elapsed, peak, error = asyncio.run(_bomb(port))
    lines += ["", f"1 GB gzip bomb: stopped after {elapsed:.2f} s, peak {peak / 1e6:.1f} MB "
              f"traced: `{error}`.", ""]
    server.terminate()
    report = "\n".join(lines)
    (Path(__file__).with_suffix(".md")).write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
