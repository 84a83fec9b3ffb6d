"""Retention on a database populated by real polls, on both backends: what must stay, stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.config import ConfigError, parse_config
from monitor.store.database import Database
from monitor.store.models import Alert, Article, Delivery, FeedEntry, Story
from tests.conftest import write_config
from tests.running import run_cli
from tests.servers import FeedServer, WebhookReceiver, rss


def item(guid: str, title: str) -> dict[str, str]:
    return {"title": title, "link": f"https://news.example.ir/{guid}",
            "description": title, "guid": guid}


ALERTED = item("a", "دیدار دبیرکل سازمان همکاری اسلامی با وزیر خارجه")  # delivered alert
PLAIN = item("b", "پیش بینی هوای تهران برای فردا")
UNDELIVERED = item("u", "نشست ژنو درباره آب")  # its alert's channel keeps failing
CARRIED = item("k", "بازار کتاب تهران")  # still in the feed's document
RECENT = item("r", "گزارش بورس")  # left the feed 10 days ago
LATEST = item("r2", "گزارش بانک مرکزی")


def _age_everything(db: Database, days: int) -> None:
    """Move every stored timestamp back, keeping their order, as months passing would."""
    shift = timedelta(days=days)
    columns = {Article: ("fetched",), Alert: ("created_at",),
               Story: ("created_at", "updated_at"), FeedEntry: ("first_seen", "last_seen"),
               Delivery: ("created_at", "delivered_at", "next_attempt_at")}
    with db.session() as session:
        for model, names in columns.items():
            for row in session.scalars(select(model)):
                for name in names:
                    if getattr(row, name) is not None:
                        setattr(row, name, getattr(row, name) - shift)


def _links(db: Database) -> set[str]:
    """The stored feed articles, by link (titles are normalized on the way in)."""
    with db.session() as session:
        return set(session.scalars(select(Article.link).where(Article.baseline.is_(False))))


def _counts(db: Database) -> dict[str, int]:
    with db.session() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Article, Alert, Delivery, FeedEntry, Story)}


def test_prune_keeps_baseline_open_alerts_and_what_dedup_needs(
    tmp_path: Path, db_url: str, feed_server: FeedServer, webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.statuses = [500] * 20
    news = feed_server.set_feed("/news.xml", rss([ALERTED, PLAIN, UNDELIVERED]))
    other = feed_server.set_feed("/other.xml", rss([RECENT]))
    config = write_config(
        tmp_path / "monitor.yaml", db_url,
        feeds=[{"name": "news", "url": news}, {"name": "other", "url": other}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["log"]},
                 {"name": "geneva", "any": ["ژنو"], "channels": ["hook"]}],
        channels=[{"name": "log", "type": "log"},
                  {"name": "hook", "type": "webhook", "url": webhook_receiver.url("/hook")}],
        retention={"articles": "180d", "delivered_alerts": "90d"})
    run_cli(config, "poll")
    feed_server.set_feed("/news.xml", rss([CARRIED]))
    feed_server.set_feed("/other.xml", rss([LATEST]))
    run_cli(config, "poll")

    db = Database(db_url)
    try:
        _age_everything(db, days=400)
        now = datetime.now(UTC)
        with db.session() as session:
            for entry, link in session.execute(
                    select(FeedEntry, Article.link).join(Article).where(
                        Article.link.in_([RECENT["link"], LATEST["link"]]))):
                days = 10 if link == RECENT["link"] else 5
                entry.last_seen = now - timedelta(days=days)
        with db.session() as session:
            baseline = session.scalar(select(func.count()).select_from(Article)
                                      .where(Article.baseline.is_(True)))
        assert baseline > 0
        before = _counts(db)

        expected = ("1 deliveries, 1 alerts, 2 feed_entries, 2 articles, 2 stories")
        assert run_cli(config, "prune", "--dry-run").strip() == (
            f"retention: would remove {expected}")
        assert _counts(db) == before

        assert run_cli(config, "prune").strip() == f"retention: removed {expected}"
        assert _links(db) == {UNDELIVERED["link"], CARRIED["link"], RECENT["link"],
                              LATEST["link"]}
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Article)
                                  .where(Article.baseline.is_(True))) == baseline
            assert list(session.scalars(select(Alert.watch))) == ["geneva"]
            assert list(session.scalars(select(Delivery.state))) == ["failed"]
        after = _counts(db)
        assert after["stories"] == before["stories"] - 2

        # What the feeds still carry is still known: polling again stores nothing new,
        # and the undelivered alert is still in the outbox.
        poll = run_cli(config, "poll")
        assert "news: stored, 0 new" in poll or "news: not_modified" in poll
        assert _counts(db)["articles"] == after["articles"]
        assert "retention: removed 0 deliveries" in run_cli(config, "prune")
    finally:
        db.dispose()


def test_retention_null_keeps_everything(tmp_path: Path, sqlite_url: str,
                                         feed_server: FeedServer) -> None:
    news = feed_server.set_feed("/news.xml", rss([PLAIN]))
    config = write_config(tmp_path / "monitor.yaml", sqlite_url,
                          feeds=[{"name": "news", "url": news}],
                          retention={"articles": None, "delivered_alerts": None})
    run_cli(config, "poll")
    feed_server.set_feed("/news.xml", rss([CARRIED]))
    run_cli(config, "poll")
    db = Database(sqlite_url)
    try:
        _age_everything(db, days=4000)
        assert run_cli(config, "prune").startswith("retention: removed 0 deliveries, 0 alerts, "
                                                "0 feed_entries, 0 articles, 0 stories")
        assert _links(db) == {PLAIN["link"], CARRIED["link"]}
    finally:
        db.dispose()


def test_the_alert_of_a_story_still_running_is_kept(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    news = feed_server.set_feed("/news.xml", rss([ALERTED, PLAIN]))
    config = write_config(
        tmp_path / "monitor.yaml", db_url, feeds=[{"name": "news", "url": news}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["log"]}],
        channels=[{"name": "log", "type": "log"}])
    run_cli(config, "poll")
    db = Database(db_url)
    try:
        _age_everything(db, days=400)

        def retell(days_ago: int) -> None:
            """PLAIN tells the alerted story again, `days_ago` days ago."""
            with db.session() as session:
                alerted = session.scalar(select(Article).where(Article.link == ALERTED["link"]))
                plain = session.scalar(select(Article).where(Article.link == PLAIN["link"]))
                plain.story_id = alerted.story_id
                plain.fetched = datetime.now(UTC) - timedelta(days=days_ago)

        retell(days_ago=1)  # inside the 3-day stories window: the story is still running
        assert "0 alerts" in run_cli(config, "prune")
        assert _counts(db)["alerts"] == 1
        retell(days_ago=10)  # the story went quiet: its old, delivered alert may go
        assert "1 deliveries, 1 alerts" in run_cli(config, "prune")
        assert _counts(db)["alerts"] == 0
    finally:
        db.dispose()


def test_articles_retention_shorter_than_the_story_window_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"retention.articles: must be at least "
                                          r"stories.window \(3 days\), got 1 days"):
        parse_config({"retention": {"articles": "1d"}}, env={})


def test_deleting_an_article_finds_its_band_keys_by_index(db_url: str) -> None:
    # Without it every article retention deletes scans the whole article_bands table
    # (README, Retention: 573 s instead of 6.6 s for 20,000 articles on SQLite).
    from sqlalchemy import inspect

    db = Database(db_url)
    try:
        db.migrate()
        indexes = inspect(db.engine).get_indexes("article_bands")
        assert any(ix["column_names"] == ["article_id"] for ix in indexes)
    finally:
        db.dispose()
