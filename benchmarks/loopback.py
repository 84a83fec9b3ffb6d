"""A loopback feed server and webhook sink for the benchmarks, run in a process of its own.

`python -m benchmarks.loopback --feeds N --items K` serves N synthetic Persian RSS feeds of
K items each on 127.0.0.1 (`/feeds/<i>.xml`), with ETag and Last-Modified validators and
304 answers, and records webhook POSTs (`/hook`). It prints its port on the first line of
stdout. Running it in its own process keeps its CPU out of the client's figures.

Control endpoints (JSON):
  POST /_control/publish?fraction=F&oic=1&seed=S  a fraction of the feeds publish one new item
  GET  /_control/stats                           requests, 200s, 304s, webhooks received,
                                                 the fewest requests any one feed got
  GET  /_control/events                          per published item: published, first
                                                 served, alert received (epoch seconds)

`LoopbackServer` starts and stops it from Python (the runner, the workers, tests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from benchmarks.corpus import Corpus

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Feed:
    index: int
    items: list[int]  # item numbers, newest first
    version: int = 0
    modified: datetime = EPOCH
    body: bytes = b""
    etag: str = ""
    unserved: list[int] = field(default_factory=list)  # published, not yet fetched


class FeedSite:
    """The state behind the server: feeds, publishing, and what was observed."""

    def __init__(self, feeds: int, items: int, port: int = 0) -> None:
        self.corpus = Corpus()
        self.items_per_feed = items
        self.port = port
        self.feeds = [Feed(i, list(range(i * items + items - 1, i * items - 1, -1)))
                      for i in range(feeds)]
        self.next_item = feeds * items
        self.oic_items: set[int] = set()
        self.published_at: dict[int, float] = {}
        self.served_at: dict[int, float] = {}
        self.received_at: dict[int, float] = {}
        self.stats = {"requests": 0, "ok": 0, "not_modified": 0, "webhooks": 0}
        self.hits = [0] * feeds

    def link(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/a/{n}"

    def render(self, feed: Feed) -> None:
        parts = []
        for n in feed.items:
            item = self.corpus.item(n, about_oic=n in self.oic_items)
            published = EPOCH + timedelta(minutes=n) if n not in self.published_at else \
                datetime.fromtimestamp(self.published_at[n], UTC)
            parts.append(
                f"<item><title>{escape(item.title)}</title><link>{self.link(n)}</link>"
                f"<guid isPermaLink=\"false\">bench-{n}</guid>"
                f"<pubDate>{format_datetime(published, usegmt=True)}</pubDate>"
                f"<description>{escape(item.description)}</description></item>")
        feed.body = (
            '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
            f"<title>خبرگزاری آزمایشی {feed.index}</title>"
            f"<link>http://127.0.0.1:{self.port}/</link>"
            "<description>فید آزمایشی برای سنجش کارایی</description><language>fa</language>"
            + "".join(parts) + "</channel></rss>").encode("utf-8")
        feed.etag = '"' + hashlib.sha1(feed.body).hexdigest()[:20] + '"'

    def publish(self, fraction: float, about_oic: bool, seed: int | None) -> list[int]:
        rng = random.Random(seed)
        count = max(1, round(len(self.feeds) * fraction)) if fraction > 0 else 0
        now = time.time()
        new = []
        for feed in rng.sample(self.feeds, count):
            n = self.next_item
            self.next_item += 1
            if about_oic:
                self.oic_items.add(n)
            self.published_at[n] = now
            feed.items = [n, *feed.items][: self.items_per_feed]
            feed.version += 1
            # HTTP dates have one-second resolution: never let a new version share the date
            # of the old one, or a client sending only If-Modified-Since would miss it.
            feed.modified = max(datetime.fromtimestamp(int(now), UTC),
                                feed.modified + timedelta(seconds=1))
            feed.body = b""
            feed.unserved.append(n)
            new.append(n)
        return new

    def serve_feed(self, index: int, headers: dict[str, str]) -> tuple[int, dict[str, str],
                                                                       bytes]:
        feed = self.feeds[index]
        self.hits[index] += 1
        if not feed.body:
            self.render(feed)
        last_modified = format_datetime(feed.modified, usegmt=True)
        validators = {"etag": feed.etag, "last-modified": last_modified}
        inm, ims = headers.get("if-none-match"), headers.get("if-modified-since")
        if (inm is not None and inm == feed.etag) or (inm is None and ims == last_modified):
            self.stats["not_modified"] += 1
            return 304, validators, b""
        self.stats["ok"] += 1
        if feed.unserved:
            now = time.time()
            for n in feed.unserved:
                self.served_at[n] = now
            feed.unserved = []
        return 200, {**validators, "content-type": "application/rss+xml; charset=utf-8"}, \
            feed.body

    def receive_webhook(self, body: bytes) -> None:
        now = time.time()
        self.stats["webhooks"] += 1
        try:
            link = json.loads(body)["data"]["article"]["link"]
            n = int(link.rsplit("/", 1)[1])
        except (ValueError, KeyError, IndexError, TypeError):
            return
        self.received_at.setdefault(n, now)

    def events(self) -> list[dict[str, Any]]:
        return [{"item": n, "published": t, "served": self.served_at.get(n),
                 "received": self.received_at.get(n)} for n, t in self.published_at.items()]


def _json(data: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"content-type": "application/json"}, json.dumps(data).encode()


def handle(site: FeedSite, method: str, target: str, headers: dict[str, str],
           body: bytes) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    path = url.path
    if path.startswith("/feeds/") and path.endswith(".xml") and method in ("GET", "HEAD"):
        site.stats["requests"] += 1
        try:
            index = int(path[len("/feeds/"):-len(".xml")])
            if not 0 <= index < len(site.feeds):
                raise ValueError
        except ValueError:
            return 404, {}, b""
        return site.serve_feed(index, headers)
    if path == "/hook" and method == "POST":
        site.receive_webhook(body)
        return 200, {}, b""
    if path == "/_control/publish" and method == "POST":
        seed = int(query["seed"]) if "seed" in query else None
        return _json(site.publish(float(query.get("fraction", "0.1")),
                                  query.get("oic") == "1", seed))
    if path == "/_control/stats":
        return _json({**site.stats, "min_feed_hits": min(site.hits, default=0)})
    if path == "/_control/events":
        return _json(site.events())
    return 404, {}, b""


_REASONS = {200: "OK", 304: "Not Modified", 404: "Not Found", 400: "Bad Request"}


async def _connection(site: FeedSite, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            status, out_headers, out = handle(site, method, target, headers, body)
            close = headers.get("connection", "").lower() == "close"
            head_lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}",
                          f"content-length: {len(out)}",
                          *(f"{k}: {v}" for k, v in out_headers.items())]
            if close:
                head_lines.append("connection: close")
            writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(out)
            await writer.drain()
            if close:
                return
    finally:
        writer.close()


async def serve(feeds: int, items: int) -> None:
    site = FeedSite(feeds, items)
    server = await asyncio.start_server(lambda r, w: _connection(site, r, w), "127.0.0.1", 0,
                                        backlog=1024)
    site.port = server.sockets[0].getsockname()[1]
    print(site.port, flush=True)
    async with server:
        await server.serve_forever()


class LoopbackServer:
    """The server in a subprocess, with a small client for its control endpoints."""

    def __init__(self, feeds: int, items: int) -> None:
        self.feeds, self.items = feeds, items
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> LoopbackServer:
        root = Path(__file__).resolve().parents[1]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loopback", "--feeds", str(self.feeds),
             "--items", str(self.items)],
            cwd=root, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(root)})
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"loopback server did not start (said {line!r})")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def feed_urls(self) -> list[str]:
        return [self.url(f"/feeds/{i}.xml") for i in range(self.feeds)]

    @property
    def hook_url(self) -> str:
        return self.url("/hook")

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url(path), method=method, data=b"" if
                                         method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def publish(self, fraction: float, oic: bool = False, seed: int | None = None) -> list[int]:
        query = f"fraction={fraction}&oic={int(oic)}" + (f"&seed={seed}" if seed is not None
                                                          else "")
        return self._call("POST", f"/_control/publish?{query}")

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/_control/stats")

    def events(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_control/events")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, required=True)
    parser.add_argument("--items", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(serve(args.feeds, args.items))


if __name__ == "__main__":
    main()
