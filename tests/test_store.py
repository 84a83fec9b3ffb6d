"""Storage on both backends: migrations, UTC round trips, dedup, baseline, outbox leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from monitor.alerts.message import DeliveryResult
from monitor.alerts.outbox import claim_messages, pace_channel, record_result
from monitor.articles import prepare
from monitor.config import FeedConfig, LogChannelConfig, WatchConfig
from monitor.parse import Entry
from monitor.store.database import Database
from monitor.store.models import Article, Delivery, Feed
from monitor.store.queries import claim_due_feeds, store_candidates, sync_feeds
from monitor.text.match import Matcher

MATCHER = Matcher([WatchConfig(name="oic", any=["سازمان همکاری اسلامی"], channels=["c"])])


def _entry(key: str, title: str, link: str | None = None) -> Entry:
    return Entry(key=key, link=link, title=title, summary="", content="",
                 published=datetime(2026, 1, 1, 12, tzinfo=UTC))


def _db(url: str) -> Database:
    db = Database(url)
    db.migrate()
    db.migrate()  # idempotent
    return db


def test_timestamps_round_trip_as_aware_utc(db_url: str) -> None:
    db = _db(db_url)
    when = datetime(2026, 3, 20, 23, 30, tzinfo=UTC) + timedelta(microseconds=5)
    with db.session() as s:
        sync_feeds(s, [FeedConfig(name="f", url="http://127.0.0.1/f")], when)
    with db.session() as s:
        feed = s.scalar(select(Feed))
        assert feed.next_check_at == when
        assert feed.next_check_at.tzinfo is not None
    db.dispose()


def test_store_once_per_feed_and_across_feeds(db_url: str) -> None:
    db = _db(db_url)
    now = datetime.now(UTC)
    with db.session() as s:
        sync_feeds(s, [FeedConfig(name="a", url="http://127.0.0.1/a"),
                       FeedConfig(name="b", url="http://127.0.0.1/b")], now)
    with db.session() as s:
        ids = {f.name: f.id for f in s.scalars(select(Feed))}
    entry = _entry("guid:1", "سازمان همکاری اسلامی", "https://x.ir/n/1?utm_source=a")
    same_link = _entry("guid:other", "تیتر دیگر", "https://x.ir/n/1#frag")
    candidates = [prepare(entry, "a", MATCHER)]

    def store(feed: str, cands: list) -> object:
        with db.session() as s:
            return store_candidates(s, feed_id=ids[feed], origin=feed, candidates=cands,
                                    channels_for=lambda _: ["c"], now=now)

    first = store("a", candidates)
    assert (first.new_articles, first.alerts, first.deliveries) == (1, 1, 1)
    again = store("a", candidates)
    assert (again.new_articles, again.already_seen) == (0, 1)
    other_feed = store("b", [prepare(same_link, "b", MATCHER)])
    assert (other_feed.new_articles, other_feed.duplicates, other_feed.alerts) == (0, 1, 0)
    with db.session() as s:
        assert s.scalar(select(func.count(Article.id))) == 1
        assert s.scalar(select(func.count(Delivery.id))) == 1
    db.dispose()


def test_baseline_never_alerts(db_url: str) -> None:
    db = _db(db_url)
    now = datetime.now(UTC)
    with db.session() as s:
        result = store_candidates(s, feed_id=None, origin="seed:x",
                                  candidates=[prepare(_entry("seed:x#0", "سازمان همکاری اسلامی"),
                                                      "seed:x", MATCHER)],
                                  channels_for=lambda _: ["c"], now=now, baseline=True)
    assert (result.new_articles, result.alerts) == (1, 0)
    with db.session() as s:
        article = s.scalar(select(Article))
        assert article.baseline and article.matches[0]["watch"] == "oic"
    db.dispose()


def test_claims_pass_over_the_feeds_another_config_polls(db_url: str) -> None:
    db = _db(db_url)
    now = datetime.now(UTC)
    lease = timedelta(seconds=60)

    def feeds(*names: str, disabled: str = "") -> list[FeedConfig]:
        return [FeedConfig(name=n, url=f"http://127.0.0.1/{n}", enabled=n != disabled)
                for n in names]

    with db.session() as s:  # an earlier config had "gone"
        sync_feeds(s, feeds("gone", "a"), now - lease)
    with db.session() as s:
        skip = sync_feeds(s, feeds("a", "b", "off", disabled="off"), now)
    assert skip == {"gone", "off"}
    configured = {"a", "b"}
    with db.session() as s:
        assert sorted(f.name for f in claim_due_feeds(
            s, "one", configured, now, lease, 10, skip=skip)) == ["a", "b"]
    # Another daemon sharing the database registers its own feed, due before ours.
    with db.session() as s:
        sync_feeds(s, feeds("theirs"), now - lease)
    later = now + 2 * lease  # our leases have expired
    with db.session() as s:
        assert sorted(f.name for f in claim_due_feeds(
            s, "one", configured, later, lease, 10, skip=skip)) == ["a", "b"]
    assert skip == {"gone", "off", "theirs"}  # learnt, and passed over from now on
    with db.session() as s:
        row = s.scalar(select(Feed).where(Feed.name == "theirs"))
        assert row.lease_owner is None  # not leased: its own daemon takes it
        [theirs] = claim_due_feeds(s, "two", {"theirs"}, later, lease, 10)
        assert theirs.name == "theirs"
    db.dispose()


def test_leases_hand_work_to_one_owner(db_url: str) -> None:
    db = _db(db_url)
    now = datetime.now(UTC)
    lease = timedelta(seconds=60)
    with db.session() as s:
        sync_feeds(s, [FeedConfig(name="a", url="http://127.0.0.1/a")], now)
        store_candidates(s, feed_id=None, origin="x",
                         candidates=[prepare(_entry("k", "سازمان همکاری اسلامی"), "x", MATCHER)],
                         channels_for=lambda _: ["c"], now=now)
    with db.session() as s:
        assert len(claim_due_feeds(s, "one", ["a"], now, lease, 10)) == 1
    with db.session() as s:
        assert claim_due_feeds(s, "two", ["a"], now, lease, 10) == []
    with db.session() as s:  # the first owner died: its lease expires
        assert len(claim_due_feeds(s, "two", ["a"], now + 2 * lease, lease, 10)) == 1

    with db.session() as s:
        pace_channel(s, LogChannelConfig(name="c", type="log"), now)
    with db.session() as s:
        [message] = claim_messages(s, "one", ["c"], now, lease)
    with db.session() as s:
        assert claim_messages(s, "two", ["c"], now, lease) == []
    later = now + 2 * lease
    with db.session() as s:  # "one" was killed mid-send; "two" takes the claim over
        [again] = claim_messages(s, "two", ["c"], later, lease)
    assert again.message_id == message.message_id  # receivers can drop the repeat
    with db.session() as s:
        assert record_result(s, [message.delivery_id], "one", DeliveryResult.success(),
                             later) is None
        assert record_result(s, [again.delivery_id], "two", DeliveryResult.success(),
                             later) == "delivered"
    with db.session() as s:
        assert claim_messages(s, "three", ["c"], later + 10 * lease, lease) == []
    db.dispose()
