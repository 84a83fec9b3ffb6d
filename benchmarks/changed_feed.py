"""CPU of one changed feed, on the refresh's own path: parse, prepare, store, release.

    python -m benchmarks.changed_feed [--items 30] [--rounds 200]

A feed of `--items` Persian items (the benchmark corpus) is stored once; then each round it
publishes one new item (the oldest drops out) and the Refresher parses, prepares and stores
the document, as it does for a changed feed after a fetch (`prepare_document`, in this
process as with `parse.processes: 0`, and `Refresher._store`, on a SQLite file). No network:
the fetch is the one part left out.
Prints the CPU milliseconds per changed feed (median and quartiles over the rounds). Meant
for A/B runs (the same script against two checkouts) and for py-spy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from benchmarks.loopback import FeedSite
from benchmarks.worker import WEBHOOK_SECRET, WEBHOOK_SECRET_ENV, bench_config
from monitor.articles import prepare_document
from monitor.config import load_config, load_secrets
from monitor.fetch import Fetched
from monitor.service import Monitor
from monitor.store.models import Feed
from monitor.store.queries import FeedState

URL = "http://127.0.0.1:9/feed"
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    site = FeedSite(feeds=1, items=args.items)  # the steady cycle's documents
    [document] = site.feeds
    with tempfile.TemporaryDirectory(prefix="bench-changed-") as tmp:
        work = Path(tmp)
        config = load_config(bench_config(work / "monitor.yaml",
                                          f"sqlite:///{work / 'monitor.db'}", [URL],
                                          "http://127.0.0.1:9/hook"))
        monitor = Monitor(config, load_secrets(config, {WEBHOOK_SECRET_ENV: WEBHOOK_SECRET}))
        monitor.prepare()
        refresher = monitor.refresher
        with monitor.db.session() as session:
            row = session.scalars(select(Feed)).one()
            feed = FeedState(id=row.id, name=row.name, url=row.url, etag=None,
                             last_modified=None, body_hash=None, error_count=0)
        newest = 1000 + args.items
        cpu: list[float] = []
        for round_ in range(args.rounds + 1):
            document.items = list(range(newest + round_, newest + round_ - args.items, -1))
            site.render(document)
            fetched = Fetched(url=URL, status=200, body=document.body,
                              headers={"content-type": "application/rss+xml; charset=utf-8"})
            with monitor.db.session() as session:  # as claimed: the release needs the lease
                session.execute(update(Feed).values(lease_owner=refresher.owner))
            now = datetime.now(UTC)
            started = time.process_time()
            prepared = prepare_document(fetched.body, fetched.headers, URL, feed.name,
                                        monitor.matcher, refresher._known.get(feed.id))
            refresher._store(feed, 60, fetched, prepared.parsed, prepared.candidates, now)
            if round_:  # the first round stores the whole document
                cpu.append((time.process_time() - started) * 1000)
        q1, median, q3 = statistics.quantiles(cpu, n=4)
        print(f"{args.items} items, 1 new: CPU per changed feed median {median:.2f} ms "
              f"(quartiles {q1:.2f}–{q3:.2f}) over {len(cpu)} rounds")


if __name__ == "__main__":
    main()
