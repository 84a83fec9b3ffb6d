"""Reads and writes the pipeline needs, each a function taking an open session."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Connection, bindparam, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor import metrics, stories
from monitor.articles import Candidate
from monitor.config import FeedConfig
from monitor.store.models import Alert, Article, ArticleBand, Delivery, Feed, FeedEntry, Story
from monitor.stories import DEFAULT_RULES, Sketch, StoryRules

# Any constant; the same in every monitor process ("stories" in ASCII).
_STORY_LOCK_KEY = 0x73746F72696573


@dataclass(frozen=True)
class FeedState:
    """What a refresh needs to know about a feed, detached from the session."""

    id: int
    name: str
    url: str
    etag: str | None
    last_modified: str | None
    body_hash: str | None
    error_count: int
    host: str = ""
    check_interval: float | None = None  # chosen at the last full fetch; None = configured
    # When the lease runs out, on this process's monotonic clock: a refresh that has waited
    # (for a slot, a host) too close to it must not fetch, as another daemon may take over.
    lease_deadline: float = math.inf


@dataclass
class StoreResult:
    new_articles: int = 0
    duplicates: int = 0
    already_seen: int = 0
    alerts: int = 0
    deliveries: int = 0


def new_message_id() -> str:
    """A stable id for one delivery: the webhook-id and the email Message-ID."""
    return "msg_" + uuid.uuid4().hex


def _insert(session: Session) -> Callable[..., Any]:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING on both backends."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def url_host(url: str) -> str:
    """The host politeness is counted per (ports of one server count as one)."""
    try:
        return httpx.URL(url).host.lower()
    except (httpx.InvalidURL, TypeError):
        return ""


def sync_feeds(session: Session, feeds: Sequence[FeedConfig], now: datetime) -> None:
    """Make sure every configured feed has a row; a changed URL replaces the stored one."""
    rows = {f.name: f for f in session.scalars(select(Feed))}
    for feed in feeds:
        row = rows.get(feed.name)
        if row is None:
            # Daemons starting together register the same feeds: the first insert wins.
            session.execute(_insert(session)(Feed).values(
                name=feed.name, url=feed.url, host=url_host(feed.url), state="new",
                error_count=0, next_check_at=now, created_at=now,
            ).on_conflict_do_nothing(index_elements=["name"]))
        elif row.url != feed.url:
            row.url, row.host = feed.url, url_host(feed.url)
            row.etag = row.last_modified = row.body_hash = None
            row.check_interval = None
            row.next_check_at = now
            row.state, row.error_count = "new", 0
        elif row.host is None:
            row.host = url_host(row.url)  # rows from before the host column


def claim_due_feeds(session: Session, owner: str, names: Iterable[str], now: datetime,
                    lease: timedelta, limit: int, due_only: bool = True) -> list[FeedState]:
    """Lease feeds that are due. SKIP LOCKED lets several daemons share one PostgreSQL.

    Columns and one UPDATE per chunk rather than ORM objects: a cycle claims thousands of
    feeds, and loading each as an object to set two attributes cost more than the query."""
    query = (
        select(Feed.id, Feed.name, Feed.url, Feed.etag, Feed.last_modified, Feed.body_hash,
               Feed.error_count, Feed.host, Feed.check_interval)
        .where(Feed.name.in_(list(names)))
        .where(or_(Feed.lease_until.is_(None), Feed.lease_until < now))
        .order_by(Feed.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if due_only:
        query = query.where(Feed.next_check_at <= now)
    # Read before the claim, so it is never later than the lease written below.
    deadline = time.monotonic() + lease.total_seconds()
    feeds = [FeedState(r.id, r.name, r.url, r.etag, r.last_modified, r.body_hash,
                       r.error_count, r.host or url_host(r.url), r.check_interval, deadline)
             for r in session.execute(query)]
    ids = [f.id for f in feeds]
    for start in range(0, len(ids), _CHUNK):
        session.execute(update(Feed).where(Feed.id.in_(ids[start:start + _CHUNK]))
                        .values(lease_owner=owner, lease_until=now + lease)
                        .execution_options(synchronize_session=False))
    return feeds


def pause_host(session: Session | Connection, host: str, until: datetime) -> int:
    """Push the next check of every feed on `host` to at least `until` (a Retry-After
    is about the server, not the one URL that got it). Returns how many feeds moved."""
    result = session.execute(
        update(Feed).where(Feed.host == host, Feed.next_check_at < until)
        .values(next_check_at=until))
    return result.rowcount or 0


def release_feed(session: Session | Connection, feed_id: int, owner: str, *,
                 next_check_at: datetime, **changes: object) -> None:
    """Record a refresh's outcome on the feed row and give up the lease."""
    session.execute(
        update(Feed).where(Feed.id == feed_id, Feed.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, next_check_at=next_check_at, **changes)
    )


def _same_article(session: Session, candidate: Candidate, origin: str,
                  linked: dict[str, Article]) -> Article | None:
    """The stored article this item is: the one at its canonical link, whichever feed has
    it; for an item without a link (a seed, a link-less feed entry), the one with the same
    text from the same origin. The same text at another link is a copy: a new article of
    the same story. `linked` holds the articles at the refresh's canonical links, loaded
    once up front (`_articles_at`) and kept up to date as the refresh stores more."""
    if candidate.canonical_link:
        return linked.get(candidate.canonical_link)
    return session.scalar(
        select(Article).where(Article.fingerprint == candidate.fingerprint,
                              Article.origin == origin).order_by(Article.id).limit(1))


# Keeps each IN (...) list well under SQLite's limit on bound parameters.
_CHUNK = 500


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    return (values[start:start + _CHUNK] for start in range(0, len(values), _CHUNK))


def _carried_keys(session: Session, feed_id: int, keys: Sequence[str]) -> set[str]:
    """Which of these entry keys the feed carried before (one query, not one per entry:
    in a steady cycle most entries of a changed feed are old)."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(session.scalars(select(FeedEntry.entry_key).where(
            FeedEntry.feed_id == feed_id, FeedEntry.entry_key.in_(chunk))))
    return found


def _articles_at(session: Session, links: Sequence[str]) -> dict[str, Article]:
    """The stored articles at these canonical links, by link."""
    found: dict[str, Article] = {}
    for chunk in _chunks(links):
        found.update((a.canonical_link, a) for a in session.scalars(
            select(Article).where(Article.canonical_link.in_(chunk))))
    return found


def store_candidates(
    session: Session,
    *,
    feed_id: int | None,
    origin: str,
    candidates: Sequence[Candidate],
    channels_for: Callable[[str], Sequence[str]],
    now: datetime,
    baseline: bool = False,
    rules: StoryRules = DEFAULT_RULES,
) -> StoreResult:
    """Store new articles, each in its story, and in the same transaction their alerts and
    outbox rows.

    An entry the feed carried before is skipped; an item that is a stored article
    (`_same_article`) is recorded for the feed, nothing more. Any other item is a new article
    in a story (`_story_for`); it alerts only as the first article of its story to match a
    watch, and never in a baseline story.
    """
    result = StoreResult()
    locked = False
    keys = list(dict.fromkeys(c.entry.key for c in candidates))
    seen = _carried_keys(session, feed_id, keys) if feed_id is not None else set()
    linked = _articles_at(session, list(dict.fromkeys(
        c.canonical_link for c in candidates
        if c.canonical_link and c.entry.key not in seen)))
    for candidate in candidates:
        entry = candidate.entry
        if entry.key in seen:
            result.already_seen += 1
            continue
        article = _same_article(session, candidate, origin, linked)
        if article is None:
            if not locked:
                _lock_stories(session)
                locked = True
            try:
                with session.begin_nested():
                    article = _insert_article(session, feed_id, origin, candidate, now,
                                              baseline, rules)
            except IntegrityError:
                # Another process stored the same canonical link a moment ago.
                if candidate.canonical_link:
                    linked.update(_articles_at(session, [candidate.canonical_link]))
                article = _same_article(session, candidate, origin, linked)
                if article is None:
                    raise
                result.duplicates += 1
            else:
                result.new_articles += 1
                _queue_alerts(session, article, candidate, rules, channels_for, now, result)
            if candidate.canonical_link:
                linked[candidate.canonical_link] = article
        else:
            result.duplicates += 1
        if feed_id is not None:
            session.add(FeedEntry(feed_id=feed_id, entry_key=entry.key,
                                  article_id=article.id, first_seen=now))
            seen.add(entry.key)
    session.flush()
    if feed_id is not None and keys:
        touch_feed_entries(session, feed_id, keys, now)
    return result


def touch_feed_entries(session: Session, feed_id: int, keys: Sequence[str],
                       now: datetime) -> None:
    """Mark the entries of a parsed document as still carried by the feed (retention)."""
    for chunk in _chunks(keys):
        session.execute(update(FeedEntry)
                        .where(FeedEntry.feed_id == feed_id,
                               FeedEntry.entry_key.in_(chunk))
                        .values(last_seen=now).execution_options(synchronize_session=False))


def _lock_stories(session: Session) -> None:
    """Take turns assigning stories: two feeds refreshed at once that carry copies of one
    story must not each start it (and each alert). SQLite's write lock already serializes
    writers; on PostgreSQL a transaction-scoped advisory lock does, until commit."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _STORY_LOCK_KEY})


def _insert_article(session: Session, feed_id: int | None, origin: str, candidate: Candidate,
                    now: datetime, baseline: bool, rules: StoryRules) -> Article:
    entry = candidate.entry
    story = _story_for(session, candidate, now, baseline, rules)
    article = Article(
        feed_id=feed_id, origin=origin, story_id=story.id, link=entry.link,
        canonical_link=candidate.canonical_link, fingerprint=candidate.fingerprint,
        title=entry.title, summary=entry.summary, content=entry.content,
        author=entry.author, language=candidate.language, match_key=candidate.match_key,
        matches=[m.as_dict() for m in candidate.matches],
        # A copy of a baseline article is known too.
        baseline=baseline or story.baseline, published=entry.published, fetched=now,
    )
    session.add(article)
    session.flush()
    if candidate.sketch.bands:
        session.execute(insert(ArticleBand), [
            {"band": band, "article_id": article.id, "baseline": article.baseline}
            for band in candidate.sketch.bands])
    return article


def _story_for(session: Session, candidate: Candidate, now: datetime, baseline: bool,
               rules: StoryRules) -> Story:
    """The story a new article belongs to: that of a recent or baseline article with the
    same text, else that of the most similar one, else a new one. Old articles are left
    alone even with the same text: a headline-only item that recurs daily is news daily."""
    story_id = session.scalar(
        select(Article.story_id).where(
            Article.fingerprint == candidate.fingerprint,
            or_(Article.baseline.is_(True), Article.fetched >= now - rules.window))
        .order_by(Article.id).limit(1))
    if story_id is None:
        story_id = find_similar_story(session, candidate.sketch, now, rules)
    if story_id is not None:
        # Locked, so that two processes adding copies of one story decide its alerts in turn.
        story = session.get_one(Story, story_id, with_for_update=True)
        story.updated_at = now
        return story
    story = Story(title=candidate.entry.title, baseline=baseline, created_at=now,
                  updated_at=now)
    session.add(story)
    session.flush()
    return story


def find_similar_story(session: Session, sketch: Sketch, now: datetime,
                       rules: StoryRules) -> int | None:
    """The story of the stored article most similar to the sketch, above the threshold.

    Candidates come from the band-key index only: articles stored since the window opened
    (ids grow with time, so the primary key (band, article_id) bounds the range) and
    baseline articles; both lookups are index seeks, whatever the size of the table.
    """
    if not sketch.bands:
        return None
    keys = list(sketch.bands)
    # NULL when nothing is recent, and `article_id >= NULL` then selects nothing.
    first_recent = (select(Article.id).where(Article.fetched >= now - rules.window)
                    .order_by(Article.fetched).limit(1).scalar_subquery())
    found = select(ArticleBand.article_id).where(
        ArticleBand.baseline.is_(True), ArticleBand.band.in_(keys)
    ).union(select(ArticleBand.article_id).where(
        ArticleBand.band.in_(keys), ArticleBand.article_id >= first_recent))
    ids = list(session.scalars(found))
    if not ids:
        return None
    rows = session.execute(
        select(Article.id, Article.story_id, Article.title, Article.summary, Article.content)
        .where(Article.id.in_(ids))).all()
    best = stories.closest(
        sketch.shingles,
        ((r.id, stories.shingles(stories.lead(r.title, r.summary, r.content))) for r in rows),
        rules.threshold)
    if best is None:
        return None
    return next(r.story_id for r in rows if r.id == best[0])


def _queue_alerts(session: Session, article: Article, candidate: Candidate, rules: StoryRules,
                  channels_for: Callable[[str], Sequence[str]], now: datetime,
                  result: StoreResult) -> None:
    """One alert per story and watch: the story's first matching article alerts ("new");
    with the watch's `alert_on_update`, a copy matching a term the story's earlier articles
    did not match alerts again ("update"). Baseline stories never alert."""
    if article.baseline or not candidate.matches:
        return
    alerted = set(session.scalars(select(Alert.watch).where(Alert.story_id == article.story_id)))
    known_terms = (_story_terms(session, article) if alerted & rules.update_watches else {})
    for match in candidate.matches:
        if match.watch not in alerted:
            kind = "new"
        elif (match.watch in rules.update_watches
              and set(match.terms) - known_terms.get(match.watch, set())):
            kind = "update"
        else:
            continue
        alert = Alert(watch=match.watch, kind=kind, article_id=article.id,
                      story_id=article.story_id, matched=list(match.terms), created_at=now)
        session.add(alert)
        metrics.record_match(match.watch)
        result.alerts += 1
        for channel in channels_for(match.watch):
            # Linked through the relationship: the unit of work fills in alert_id.
            session.add(Delivery(alert=alert, channel=channel,
                                 message_id=new_message_id(), state="pending",
                                 next_attempt_at=now, created_at=now))
            result.deliveries += 1


def _story_terms(session: Session, article: Article) -> dict[str, set[str]]:
    """Per watch, the terms the story's other articles matched."""
    terms: dict[str, set[str]] = {}
    for matches in session.scalars(select(Article.matches).where(
            Article.story_id == article.story_id, Article.id != article.id)):
        for match in matches:
            terms.setdefault(match["watch"], set()).update(match["terms"])
    return terms


def story_sources(session: Session, story_id: int) -> list[str]:
    """Who told a story, in order of first appearance: the feeds that carried any of its
    articles (a feed that carried an article already stored from another feed counts) and
    the seed files of its baseline articles."""
    first: dict[str, datetime] = {}
    carried = (select(Feed.name, FeedEntry.first_seen)
               .join(FeedEntry, FeedEntry.feed_id == Feed.id)
               .join(Article, Article.id == FeedEntry.article_id)
               .where(Article.story_id == story_id))
    stored = select(Article.origin, Article.fetched).where(Article.story_id == story_id)
    for name, seen in [*session.execute(carried), *session.execute(stored)]:
        if name not in first or seen < first[name]:
            first[name] = seen
    return sorted(first, key=lambda name: first[name])


@dataclass(frozen=True)
class StoryView:
    id: int
    title: str
    baseline: bool
    created_at: datetime
    updated_at: datetime
    sources: list[str]
    articles: list[Article]


def recent_stories(session: Session, limit: int) -> list[StoryView]:
    """The most recently updated stories, each with its articles (oldest first)."""
    views = []
    for story in session.scalars(select(Story).order_by(Story.updated_at.desc(),
                                                        Story.id.desc()).limit(limit)):
        articles = list(session.scalars(select(Article).where(Article.story_id == story.id)
                                        .order_by(Article.id)))
        views.append(StoryView(story.id, story.title, story.baseline, story.created_at,
                               story.updated_at, story_sources(session, story.id), articles))
    return views


@dataclass(frozen=True)
class Release:
    """One refresh's outcome for its feed row, to be written with others (`release_feeds`)."""

    feed_id: int
    changes: dict[str, object]  # column values; next_check_at among them


def release_feeds(connection: Connection, owner: str, releases: Sequence[Release]) -> None:
    """`release_feed` for many feeds in one statement per set of changed columns (a cycle's
    304s all change the same ones, so that is usually one executemany).

    Rows are updated in id order, the order every process uses, so two daemons whose
    batches overlap (a lease that expired and was taken over) wait for each other instead
    of deadlocking.
    """
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for release in sorted(releases, key=lambda r: r.feed_id):
        columns = tuple(sorted(release.changes))
        groups.setdefault(columns, []).append(
            {"_feed_id": release.feed_id, **{f"_{c}": v for c, v in release.changes.items()}})
    for columns, rows in groups.items():
        statement = (
            update(Feed)
            .where(Feed.id == bindparam("_feed_id"), Feed.lease_owner == owner)
            .values(lease_owner=None, lease_until=None,
                    **{c: bindparam(f"_{c}") for c in columns}))
        connection.execute(statement, rows)
