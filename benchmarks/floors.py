"""The floors under monitor's figures: what the mandated libraries cost on their own, on the
benchmark's own feeds, in the same run as monitor and rss2email.

No monitor code runs here. A ratio against rss2email can be no better than rss2email's wall
over the wall of the work that any tool on this stack must do anyway, so these figures tell
how much of a target is left for monitor's own work at all.

The runner starts `python -m benchmarks.floors FEEDS.json` (`{"urls": [...], "concurrency":
N}`: the feed URLs, and monitor's `fetch.concurrency`) and drives it like `benchmarks.worker`,
one JSON command per line on stdin, one JSON answer per line on stdout:

  {"do": "requests"}  one conditional GET of every feed, `concurrency` at a time, each
                      body read: first with httpx on the aiohttp engine (`httpx_aiohttp`, the
                      client monitor's fetcher is), then with aiohttp alone. Each client
                      keeps the validators of its own last round, so after the feed server
                      publishes, both see the same feeds changed as monitor and rss2email.
                      Answers each client's wall and CPU seconds and its status counts.
  {"do": "parse"}     feedparser alone on every feed's current document (fetched first, not
                      timed), in this one process: wall and CPU seconds, entries.
  {"do": "quit"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import feedparser
import httpx
from httpx_aiohttp import AiohttpTransport

from benchmarks.worker import answer_commands, reply

# (ETag, Last-Modified) per URL, as a client keeps them between rounds.
Validators = dict[str, tuple[str | None, str | None]]
# One GET: the URL and its conditional headers in, the status and the validators out.
Get = Callable[[str, dict[str, str]], Awaitable[tuple[int, str | None, str | None]]]


def conditional(url: str, kept: Validators) -> dict[str, str]:
    etag, last_modified = kept.get(url, (None, None))
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


async def poll_all(urls: list[str], kept: Validators, get: Get, concurrency: int
                   ) -> dict[str, int]:
    """One GET of every URL, `concurrency` at a time; the validators of each 200 kept."""
    gate = asyncio.Semaphore(concurrency)
    statuses: Counter[str] = Counter()

    async def one(url: str) -> None:
        async with gate:
            status, etag, last_modified = await get(url, conditional(url, kept))
        if status == 200:
            kept[url] = (etag, last_modified)
        statuses[str(status)] += 1

    await asyncio.gather(*(one(url) for url in urls))
    return dict(statuses)


class Floors:
    """The two clients, open from the first round to the last, as monitor's is."""

    def __init__(self, urls: list[str], concurrency: int) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.kept: dict[str, Validators] = {"httpx": {}, "aiohttp": {}}
        self.httpx = httpx.AsyncClient(transport=AiohttpTransport())
        self.aiohttp = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency))

    async def close(self) -> None:
        await self.httpx.aclose()
        await self.aiohttp.close()

    async def _httpx_get(self, url: str, headers: dict[str, str]
                         ) -> tuple[int, str | None, str | None]:
        response = await self.httpx.get(url, headers=headers)
        return (response.status_code, response.headers.get("etag"),
                response.headers.get("last-modified"))

    async def _aiohttp_get(self, url: str, headers: dict[str, str]
                           ) -> tuple[int, str | None, str | None]:
        async with self.aiohttp.get(url, headers=headers) as response:
            await response.read()
            return (response.status, response.headers.get("etag"),
                    response.headers.get("last-modified"))

    async def requests(self) -> dict[str, Any]:
        answer: dict[str, Any] = {}
        for name, get in (("httpx", self._httpx_get), ("aiohttp", self._aiohttp_get)):
            wall, cpu = time.perf_counter(), time.process_time()
            statuses = await poll_all(self.urls, self.kept[name], get, self.concurrency)
            answer[name] = {"wall": time.perf_counter() - wall,
                            "cpu": time.process_time() - cpu, "statuses": statuses}
        return answer

    async def parse(self) -> dict[str, Any]:
        bodies = [(await self.httpx.get(url)).content for url in self.urls]
        wall, cpu = time.perf_counter(), time.process_time()
        entries = sum(len(feedparser.parse(body).entries) for body in bodies)
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                "entries": entries}


async def serve(urls: list[str], concurrency: int) -> None:
    floors = Floors(urls, concurrency)
    reply({"ready": True})
    try:
        await answer_commands({"requests": floors.requests, "parse": floors.parse})
    finally:
        await floors.close()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as listing:
        feeds = json.load(listing)
    asyncio.run(serve(feeds["urls"], feeds["concurrency"]))


if __name__ == "__main__":
    main()
