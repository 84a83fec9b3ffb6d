"""The daemon starts each feed at its own due time, not all of a tick's feeds at the tick."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, select

from monitor.store.models import Feed
from tests.conftest import write_config
from tests.running import daemon_in_loop, eventually
from tests.servers import FeedServer, rss
from tests.test_end_to_end import NOT_MATCHING


def _feed_row(db_url: str) -> tuple[datetime, str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(Feed.next_check_at, Feed.lease_owner)).one()
    finally:
        engine.dispose()
    next_check_at = row.next_check_at
    if next_check_at.tzinfo is None:  # SQLite's column comes back naive, in UTC
        next_check_at = next_check_at.replace(tzinfo=UTC)
    return next_check_at, row.lease_owner


def test_a_feed_is_polled_at_its_interval_not_at_the_ticks(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    # Due 1.35-1.65 s after each refresh (1.5 s, jittered by 10 %): fetched at the ticks,
    # the feed would be polled every 2 s; claimed a tick ahead and started when due, at
    # its interval.
    feed = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    config = write_config(tmp_path / "monitor.yaml", db_url,
                          scheduler={"tick": 1, "delivery_interval": 1, "shutdown_grace": 5},
                          feeds=[{"name": "news", "url": feed, "interval": 1.5}])

    async def scenario() -> None:
        async with daemon_in_loop(config):
            assert await eventually(lambda: feed_server.hits("/feed.xml") >= 6, timeout=20)

    asyncio.run(scenario())
    times = [r.at for r in feed_server.requests if r.path == "/feed.xml"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.median(gaps) < 1.8, gaps
    assert min(gaps) > 1.3, gaps  # and never before it was due


def test_a_feed_waiting_for_its_due_time_is_given_back_at_shutdown(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    feed = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    config = write_config(tmp_path / "monitor.yaml", db_url,
                          scheduler={"tick": 2, "delivery_interval": 1, "shutdown_grace": 5},
                          feeds=[{"name": "news", "url": feed, "interval": 3}])
    seen: dict[str, object] = {}

    def claimed_ahead() -> bool:
        # The second tick leases the feed about a second before it is due.
        hits = feed_server.hits("/feed.xml")
        next_check_at, owner = _feed_row(db_url)
        seen["due"], seen["hits"] = next_check_at, hits
        return owner is not None and next_check_at > datetime.now(UTC)

    async def scenario() -> None:
        async with daemon_in_loop(config):
            assert await eventually(lambda: feed_server.hits("/feed.xml") >= 1)
            assert await eventually(claimed_ahead, timeout=10, interval=0.05)

    asyncio.run(scenario())
    next_check_at, owner = _feed_row(db_url)
    assert owner is None  # released: another daemon, or the next start, takes it at once
    assert next_check_at == seen["due"]  # and still due when it was
    assert feed_server.hits("/feed.xml") == seen["hits"]  # not fetched early on the way out


def test_shutdown_waits_for_work_that_in_flight_work_starts(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    # A claim that is under way when the daemon stops starts its feeds' refreshes after
    # the stop (each then gives its feed back). Stopping must wait for those too, or the
    # feeds stay leased until their leases expire.
    feed = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    config = write_config(tmp_path / "monitor.yaml", db_url,
                          scheduler={"tick": 60, "shutdown_grace": 5},
                          feeds=[{"name": "news", "url": feed, "interval": 600}])
    finished: list[str] = []

    async def started_later() -> None:
        await asyncio.sleep(0.3)
        finished.append("started later")

    async def scenario() -> None:
        async with daemon_in_loop(config) as daemon:
            async def claim_under_way() -> None:
                await asyncio.sleep(0.1)
                daemon._spawn(started_later())

            daemon._spawn(claim_under_way())

    asyncio.run(scenario())
    assert finished == ["started later"]


def test_more_feeds_due_than_one_claim_takes_are_refreshed_without_waiting_for_ticks(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    # A claim takes at most twice `fetch.concurrency` feeds (4 here). With 30 feeds due and
    # a 5 s tick, claiming only at the ticks would poll them over eight ticks (35 s); the
    # daemon claims again as the claimed feeds finish, and polls all 30 in one go.
    feeds = [{"name": f"feed-{i}", "url": feed_server.set_feed(f"/{i}.xml",
                                                               rss([NOT_MATCHING])),
              "interval": 600} for i in range(30)]
    config = write_config(tmp_path / "monitor.yaml", db_url,
                          scheduler={"tick": 5, "delivery_interval": 1, "shutdown_grace": 5},
                          fetch={"concurrency": 2, "per_host_concurrency": 2,
                                 "per_host_spacing": 0},
                          feeds=feeds)

    def polled() -> int:
        return sum(feed_server.hits(f"/{i}.xml") >= 1 for i in range(30))

    async def scenario() -> None:
        async with daemon_in_loop(config):
            assert await eventually(lambda: polled() == 30, timeout=4), polled()

    asyncio.run(scenario())
    assert all(feed_server.hits(f"/{i}.xml") == 1 for i in range(30))  # each once
