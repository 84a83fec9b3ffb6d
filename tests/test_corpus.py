"""feedparser's own test corpus (2,107 files) through the whole pipeline: served over HTTP by
the loopback server with each file's `Header:` lines as response headers, fetched, guarded,
parsed, matched and stored. Nothing may escape as an unhandled exception; the test prints
how many were stored and why the others were refused."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.config import load_config, load_secrets
from monitor.service import Monitor
from monitor.store.models import Article, Feed
from tests.conftest import shared_testdata, write_config
from tests.servers import FeedServer

_HEADER = re.compile(rb"^Header:\s*([\w-]+):\s*(.*?)\s*$", re.M)


def _reason_kind(error: str) -> str:
    """Group refusals by kind: 'not a feed: SAXParseException: <unknown>:3:1: ...' ->
    'not a feed: SAXParseException'."""
    return ":".join(error.split(":")[:2]).strip()


@pytest.mark.slow
def test_feedparser_corpus_through_the_pipeline(tmp_path: Path, sqlite_url: str,
                                                feed_server: FeedServer) -> None:
    corpus = shared_testdata("feedparser")
    # Every file below the top folder (which holds only LICENSE and SOURCE.txt).
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.parent != corpus)
    assert len(files) == 2107
    feeds = []
    for i, path in enumerate(files):
        body = path.read_bytes()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in _HEADER.findall(body[:4096])}
        content_type = headers.pop("content-type", "application/xml")
        url = feed_server.set_feed(f"/{i}", body, content_type=content_type, headers=headers)
        feeds.append({"name": str(path.relative_to(corpus)), "url": url, "interval": 3600})
    config_path = write_config(
        tmp_path / "monitor.yaml", sqlite_url, feeds=feeds,
        watches=[{"name": "any-example", "any": ["example", "OIC"]}],
        fetch={"per_host_concurrency": 32, "per_host_spacing": 0, "concurrency": 32})
    config = load_config(config_path, env={})
    monitor = Monitor(config, load_secrets(config, env={}))
    monitor.prepare()

    async def poll() -> list:
        try:
            return await monitor.refresh_feeds(due_only=False)
        finally:
            await monitor.close()

    outcomes = asyncio.run(poll())
    results = Counter(o.result for o in outcomes)
    refused = Counter(_reason_kind(o.error) for o in outcomes if o.result == "error")
    with monitor.db.session() as session:
        articles = session.scalar(select(func.count()).select_from(Article).where(
            Article.feed_id.is_not(None)))
        leased = session.scalar(select(func.count()).select_from(Feed).where(
            Feed.lease_owner.is_not(None)))
    entries = sum(o.entries for o in outcomes)
    print(f"\nfeedparser corpus: {len(files)} files, results {dict(results)}, "
          f"{entries} entries, {articles} distinct articles stored (the corpus reuses the "
          "same few links and texts, so most entries are duplicates)")
    for reason, count in refused.most_common():
        print(f"  refused {count:5d}  {reason}")

    assert len(outcomes) == len(files)
    assert not [o for o in outcomes if o.error and o.error.startswith("internal error")]
    assert leased == 0  # every feed was released with its outcome recorded
    assert results["stored"] + results["unchanged"] > 0.95 * len(files)
    assert entries > 500 and articles > 50
