"""The benchmark harness works: its feed server speaks conditional GET and publishes on
demand, and a quick run of the harness produces figures from a real ingest and a real
daemon. (The benchmarks themselves run with `make bench`, not here.)"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_testdata


@pytest.fixture(scope="module")
def bench_server():
    shared_testdata("fars-news")
    from benchmarks.loopback import LoopbackServer

    with LoopbackServer(feeds=4, items=5) as server:
        yield server


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_feed_server_validators_and_publishing(bench_server) -> None:
    from monitor.parse import parse_feed

    url = bench_server.url("/feeds/2.xml")
    status, headers, body = _get(url)
    assert status == 200
    parsed = parse_feed(body, {k.lower(): v for k, v in headers.items()}, url)
    assert len(parsed.entries) == 5
    assert all(e.title and e.summary for e in parsed.entries)
    assert len({e.link for e in parsed.entries}) == 5

    assert _get(url, **{"If-None-Match": headers["etag"]})[0] == 304
    assert _get(url, **{"If-Modified-Since": headers["last-modified"]})[0] == 304

    published = bench_server.publish(1.0, oic=True, seed=3)  # every feed gets one item
    assert len(published) == 4
    status, new_headers, new_body = _get(url, **{"If-None-Match": headers["etag"]})
    assert status == 200 and new_headers["etag"] != headers["etag"]
    assert new_headers["last-modified"] != headers["last-modified"]
    newest = parse_feed(new_body, {}, url).entries[0]
    assert "سازمان همکاری اسلامی" in newest.title
    assert len(parse_feed(new_body, {}, url).entries) == 5  # the oldest item dropped out

    events = {e["item"]: e for e in bench_server.events()}
    served = [n for n in published if events[n]["served"] is not None]
    assert len(served) == 1  # only feed 2 was fetched since publishing
    stats = bench_server.stats()
    assert stats["not_modified"] == 2 and stats["min_feed_hits"] == 0


@pytest.mark.slow
def test_quick_bench_run_writes_results(tmp_path: Path) -> None:
    shared_testdata("fars-news")
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "cold_ingest", "latency",
         "match_scale", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    benches = {b["name"]: b for b in results["benchmarks"]}
    assert set(benches) == {"cold_ingest", "latency", "match_scale"}

    cold = {f["name"]: f for f in benches["cold_ingest"]["figures"]}
    items_s = cold["monitor items/s (pipeline: fetch → deliver)"]
    assert items_s["median"] > 0 and len(items_s["runs"]) == 1
    assert "30 items" in benches["cold_ingest"]["notes"][0]  # 6 feeds × 5, all stored
    assert cold["of which startup (imports, migration, baseline)"]["median"] > 0
    assert cold["floor: feedparser alone on the same documents, one process"]["median"] > 0

    latency = {f["name"]: f["median"] for f in benches["latency"]["figures"]}
    assert 0 < latency["poll → alert p50 (feed served to webhook received)"] <= \
        latency["poll → alert max"]
    assert benches["match_scale"].get("figures") is not None  # integrated or "not yet"

    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| Cold ingest |" in markdown and "| Alert latency |" in markdown
    assert results["machine"]["cores"] >= 1


def test_the_floors_poll_and_parse_the_same_feeds_without_monitor(tmp_path: Path) -> None:
    """The floor process's clients (httpx on aiohttp, aiohttp alone) each keep their own
    validators, so after a publish both see exactly the feeds that changed, as monitor and
    rss2email do; feedparser alone reads every entry of every feed."""
    shared_testdata("fars-news")
    from benchmarks.loopback import LoopbackServer
    from benchmarks.pipeline import floors_process

    with LoopbackServer(feeds=3, items=4) as server, \
            floors_process(server.feed_urls(), tmp_path) as floors:
        first = floors.call("requests")
        assert first["httpx"]["statuses"] == first["aiohttp"]["statuses"] == {"200": 3}
        again = floors.call("requests")
        assert again["httpx"]["statuses"] == again["aiohttp"]["statuses"] == {"304": 3}
        assert len(server.publish(0.34, seed=5)) == 1
        after = floors.call("requests")
        assert after["httpx"]["statuses"] == after["aiohttp"]["statuses"] == \
            {"200": 1, "304": 2}
        assert all(after[c]["wall"] > 0 for c in ("httpx", "aiohttp"))
        parsed = floors.call("parse")
        assert parsed["entries"] == 3 * 4 and parsed["wall"] > 0
