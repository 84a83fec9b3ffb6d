"""Reads and writes the pipeline needs, each a function taking an open session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.articles import Candidate
from monitor.config import FeedConfig
from monitor.store.models import Alert, Article, Delivery, Feed, FeedEntry, Story


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


@dataclass
class StoreResult:
    new_articles: int = 0
    duplicates: int = 0
    already_seen: int = 0
    alerts: int = 0
    deliveries: int = 0
    article_ids: list[int] = field(default_factory=list)


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
    """Lease feeds that are due. SKIP LOCKED lets several daemons share one PostgreSQL."""
    query = (
        select(Feed)
        .where(Feed.name.in_(list(names)))
        .where(or_(Feed.lease_until.is_(None), Feed.lease_until < now))
        .order_by(Feed.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if due_only:
        query = query.where(Feed.next_check_at <= now)
    feeds = list(session.scalars(query))
    for feed in feeds:
        feed.lease_owner, feed.lease_until = owner, now + lease
    return [FeedState(f.id, f.name, f.url, f.etag, f.last_modified, f.body_hash,
                      f.error_count, f.host or url_host(f.url), f.check_interval)
            for f in feeds]


def pause_host(session: Session, host: str, until: datetime) -> int:
    """Push the next check of every feed on `host` to at least `until` (a Retry-After
    is about the server, not the one URL that got it). Returns how many feeds moved."""
    result = session.execute(
        update(Feed).where(Feed.host == host, Feed.next_check_at < until)
        .values(next_check_at=until))
    return result.rowcount or 0


def release_feed(session: Session, feed_id: int, owner: str, *, next_check_at: datetime,
                 **changes: object) -> None:
    """Record a refresh's outcome on the feed row and give up the lease."""
    session.execute(
        update(Feed).where(Feed.id == feed_id, Feed.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, next_check_at=next_check_at, **changes)
    )


def _find_existing(session: Session, candidate: Candidate) -> Article | None:
    """The stored article this candidate is a copy of, by canonical link or same text."""
    if candidate.canonical_link:
        found = session.scalar(
            select(Article).where(Article.canonical_link == candidate.canonical_link))
        if found is not None:
            return found
    return session.scalar(
        select(Article).where(Article.fingerprint == candidate.fingerprint)
        .order_by(Article.id).limit(1))


def store_candidates(
    session: Session,
    *,
    feed_id: int | None,
    origin: str,
    candidates: Sequence[Candidate],
    channels_for: Callable[[str], Sequence[str]],
    now: datetime,
    baseline: bool = False,
) -> StoreResult:
    """Store new articles and, in the same transaction, their alerts and outbox rows.

    An entry the feed carried before is skipped; a copy of a stored article (same canonical
    link or same text) is linked to it and never alerts, so a feed item that is a seed
    article stays known.
    """
    result = StoreResult()
    for candidate in candidates:
        entry = candidate.entry
        if feed_id is not None and session.scalar(
                select(FeedEntry.id).where(FeedEntry.feed_id == feed_id,
                                           FeedEntry.entry_key == entry.key)) is not None:
            result.already_seen += 1
            continue
        existing = _find_existing(session, candidate)
        if existing is None:
            try:
                with session.begin_nested():
                    existing = _insert_article(session, feed_id, origin, candidate, now,
                                               baseline)
            except IntegrityError:
                # Another process stored the same canonical link a moment ago.
                existing = _find_existing(session, candidate)
                if existing is None:
                    raise
            else:
                result.new_articles += 1
                result.article_ids.append(existing.id)
                if not baseline:
                    _queue_alerts(session, existing, candidate, channels_for, now, result)
                if feed_id is not None:
                    session.add(FeedEntry(feed_id=feed_id, entry_key=entry.key,
                                          article_id=existing.id, first_seen=now))
                continue
        result.duplicates += 1
        if feed_id is not None:
            session.add(FeedEntry(feed_id=feed_id, entry_key=entry.key,
                                  article_id=existing.id, first_seen=now))
    session.flush()
    return result


def _insert_article(session: Session, feed_id: int | None, origin: str, candidate: Candidate,
                    now: datetime, baseline: bool) -> Article:
    entry = candidate.entry
    story = Story(title=entry.title, baseline=baseline, created_at=now, updated_at=now)
    session.add(story)
    session.flush()
    article = Article(
        feed_id=feed_id, origin=origin, story_id=story.id, link=entry.link,
        canonical_link=candidate.canonical_link, fingerprint=candidate.fingerprint,
        title=entry.title, summary=entry.summary, content=entry.content,
        author=entry.author, language=candidate.language, match_key=candidate.match_key,
        matches=[{"watch": m.watch, "terms": list(m.terms)} for m in candidate.matches],
        baseline=baseline, published=entry.published, fetched=now,
    )
    session.add(article)
    session.flush()
    return article


def _queue_alerts(session: Session, article: Article, candidate: Candidate,
                  channels_for: Callable[[str], Sequence[str]], now: datetime,
                  result: StoreResult) -> None:
    for match in candidate.matches:
        alert = Alert(watch=match.watch, kind="new", article_id=article.id,
                      story_id=article.story_id, matched=list(match.terms), created_at=now)
        session.add(alert)
        session.flush()
        result.alerts += 1
        for channel in channels_for(match.watch):
            session.add(Delivery(alert_id=alert.id, channel=channel,
                                 message_id=new_message_id(), state="pending",
                                 next_attempt_at=now, created_at=now))
            result.deliveries += 1
