"""How long retention takes on a populated database, and how long it holds a transaction.

    .venv/bin/python -m benchmarks.retention [DATABASE_URL]   (default: a temporary SQLite)

Stores 200 feeds x 500 articles spread evenly over 400 days, each with 32 story band keys
(every tenth with an alert, half of those delivered, half still failing; BENCH_FEEDS sets
the number of feeds), then prunes with the default policy (articles
180 days, delivered alerts 90 days) and writes the figures to
benchmarks/results/retention.json. The longest transaction is what a daemon sharing a
SQLite file may have to wait for.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.retention import apply_policy
from monitor.store.database import Database
from monitor.store.models import (
    Alert,
    Article,
    ArticleBand,
    Delivery,
    Feed,
    FeedEntry,
    Story,
)

FEEDS, PER_FEED, SPAN_DAYS = int(os.environ.get("BENCH_FEEDS", 200)), 500, 400
BANDS = 32  # story band keys per article (monitor.stories.BANDS)
RESULTS = Path(__file__).parent / "results" / "retention.json"


def populate(db: Database, now: datetime) -> int:
    rows: dict[type, list[dict]] = {m: [] for m in (Feed, Story, Article, ArticleBand,
                                                     FeedEntry, Alert, Delivery)}
    for f in range(1, FEEDS + 1):
        rows[Feed].append({"id": f, "name": f"feed-{f}", "url": f"http://127.0.0.1/{f}",
                           "next_check_at": now, "created_at": now, "state": "ok",
                           "error_count": 0})
        for e in range(PER_FEED):
            n = (f - 1) * PER_FEED + e + 1
            when = now - timedelta(days=SPAN_DAYS * e / PER_FEED)
            rows[Story].append({"id": n, "title": "t", "baseline": False, "created_at": when,
                                "updated_at": when})
            rows[Article].append({
                "id": n, "feed_id": f, "origin": f"feed-{f}", "story_id": n,
                "canonical_link": f"http://127.0.0.1/{f}/{e}", "fingerprint": f"{n:040d}",
                "title": "t", "summary": "", "content": "", "match_key": "", "matches": [],
                "baseline": False, "fetched": when})
            rows[ArticleBand].extend({"band": random.getrandbits(63), "article_id": n,
                                      "baseline": False} for _ in range(BANDS))
            rows[FeedEntry].append({"feed_id": f, "entry_key": f"entry-{e}", "article_id": n,
                                    "first_seen": when, "last_seen": when})
            if e % 10 == 0:
                rows[Alert].append({"id": n, "watch": "w", "kind": "new", "article_id": n,
                                    "story_id": n, "matched": [], "created_at": when})
                rows[Delivery].append({
                    "alert_id": n, "channel": "c", "message_id": f"msg_{n}",
                    "state": "delivered" if e % 20 == 0 else "failed", "attempts": 1,
                    "next_attempt_at": when, "created_at": when})
    with db.session() as session:
        for model, batch in rows.items():
            for start in range(0, len(batch), 5000):
                session.execute(insert(model), batch[start:start + 5000])
    return len(rows[Article])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tmp}/bench.db"
        db = Database(url)
        db.migrate()
        now = datetime.now(UTC)
        articles = populate(db, now)
        durations: list[float] = []

        @contextlib.contextmanager
        def timed() -> Iterator[Session]:
            started = time.perf_counter()
            with db.session() as session:
                yield session
            durations.append(time.perf_counter() - started)

        started = time.perf_counter()
        removed = apply_policy(timed, Config(), now)
        total = time.perf_counter() - started
        db.dispose()
    result = {"backend": url.split(":", 1)[0], "articles": articles, "removed": removed,
              "seconds": round(total, 2), "transactions": len(durations),
              "longest_transaction_seconds": round(max(durations), 2)}
    print(json.dumps(result))
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous[result["backend"]] = result
    RESULTS.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
