"""The labelled evaluation of story clustering (benchmarks/story_quality.py) as a test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from benchmarks.story_quality import evaluate, hand_items, labelled_set, pairwise, seed_items
from monitor.articles import prepare
from monitor.config import FeedConfig
from monitor.parse import Entry
from monitor.store.database import Database
from monitor.store.models import Article, Feed
from monitor.store.queries import store_candidates, sync_feeds
from monitor.stories import DEFAULT_THRESHOLD
from monitor.text.match import Matcher
from tests.conftest import shared_testdata

# Measured at the default threshold (0.75): F1 0.9868 (precision 0.9931, recall 0.9806) on
# 1,542 items; the floor leaves room for a change in the match key (issue 3), not for a
# regression.
F1_FLOOR = 0.98


def test_labelled_fars_news_set_clusters_above_the_floor() -> None:
    items = labelled_set(shared_testdata("fars-news"))
    assert len(items) > 1400
    result = evaluate(items, [DEFAULT_THRESHOLD])[DEFAULT_THRESHOLD]
    assert result["f1"] >= F1_FLOOR, result


def test_hand_written_meeting_stories_and_seed_copies_cluster_exactly() -> None:
    result = evaluate(hand_items() + seed_items(), [DEFAULT_THRESHOLD])[DEFAULT_THRESHOLD]
    assert (result["precision"], result["recall"]) == (1.0, 1.0)


def test_the_store_clusters_as_measured(db_url: str) -> None:
    """The hand-written stories and seed copies through the real store: the same perfect
    clustering, and every seed copy lands in a baseline story without alerting."""
    seeds = [i for i in seed_items() if i.story.startswith("seed:")]
    originals = seeds[::2]
    published = hand_items() + seeds[1::2]
    db = Database(db_url)
    db.migrate()
    now = datetime.now(UTC)
    with db.session() as s:
        sync_feeds(s, [FeedConfig(name="agency", url="http://127.0.0.1/a")], now)
    with db.session() as s:
        feed_id = s.scalar(select(Feed.id))

    def entries(items, prefix):
        return [Entry(key=f"{prefix}{n}", link=f"https://agency.example/{prefix}{n}",
                      title=i.title, summary=i.summary, content=i.content, published=None)
                for n, i in enumerate(items)]

    matcher = Matcher([])
    with db.session() as s:
        store_candidates(s, feed_id=None, origin="seed:x", baseline=True, now=now,
                         candidates=[prepare(e, "seed:x", matcher)
                                     for e in entries(originals, "s")],
                         channels_for=lambda _: ())
    for n, entry in enumerate(entries(published, "p")):
        with db.session() as s:  # one refresh per item, a minute apart
            store_candidates(s, feed_id=feed_id, origin="agency",
                             candidates=[prepare(entry, "agency", matcher)],
                             channels_for=lambda _: (), now=now + timedelta(minutes=n))
    with db.session() as s:
        rows = {a.link: a for a in s.scalars(select(Article).order_by(Article.id))}
        order = [*entries(originals, "s"), *entries(published, "p")]
        gold = [i.story for i in originals + published]
        predicted = [rows[e.link].story_id for e in order]
        assert pairwise(gold, predicted)["f1"] == 1.0
        copies = [rows[e.link] for e in entries(published, "p")][len(hand_items()):]
        assert copies and all(a.baseline and a.story.baseline for a in copies)
    db.dispose()
