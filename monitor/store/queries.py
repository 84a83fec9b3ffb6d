"""Reads and writes the pipeline needs, each a function taking an open session."""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
from sqlalchemy import (
    Connection,
    Update,
    bindparam,
    false,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session

from monitor import metrics, stories
from monitor.articles import Candidate
from monitor.config import FeedConfig
from monitor.parse import Entry, UnreadEntry
from monitor.store.models import Alert, Article, ArticleBand, Delivery, Feed, FeedEntry, Story
from monitor.stories import DEFAULT_RULES, Sketch, StoryRules
from monitor.text.match import Match

# Any constant; the same in every monitor process ("stories" in ASCII).
_STORY_LOCK_KEY = 0x73746F72696573
_STORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


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
    # When the feed was due (its `next_check_at` at the claim): a feed claimed ahead of it
    # (`claim_due_feeds(due_by=...)`) waits for it before fetching.
    due_at: datetime | None = None


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


@functools.cache
def _dialect_insert(dialect: str) -> Callable[..., Any]:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING on both backends. Imported
    on first use: PostgreSQL's dialect module would cost a SQLite daemon 2 MB of RSS."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql
        return postgresql.insert
    from sqlalchemy.dialects import sqlite
    return sqlite.insert


def url_host(url: str) -> str:
    """The host politeness is counted per (ports of one server count as one)."""
    try:
        return httpx.URL(url).host.lower()
    except (httpx.InvalidURL, TypeError):
        return ""


def sync_feeds(session: Session, feeds: Sequence[FeedConfig], now: datetime) -> set[str]:
    """Make sure every configured feed has a row; a changed URL replaces the stored one.
    Returns the names of the stored feeds this config does not poll (removed from it,
    disabled, or another daemon's): `claim_due_feeds` passes them over."""
    rows = {f.name: f for f in session.scalars(select(Feed))}
    for feed in feeds:
        row = rows.get(feed.name)
        if row is None:
            # Daemons starting together register the same feeds: the first insert wins.
            session.execute(_dialect_insert(session.get_bind().dialect.name)(Feed).values(
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
    return (set(rows) | {feed.name for feed in feeds}) - {f.name for f in feeds if f.enabled}


def claim_due_feeds(session: Session, owner: str, names: Container[str], now: datetime,
                    lease: timedelta, limit: int, due_only: bool = True,
                    due_by: datetime | None = None, skip: set[str] | None = None
                    ) -> list[FeedState]:
    """Lease feeds among `names` that are due by `due_by` (default: now). SKIP LOCKED lets
    several daemons share one PostgreSQL.

    The query leaves out the feeds in `skip` (`sync_feeds` tells which) rather than binding
    every configured name: with 5,000 feeds that IN list cost 30 ms per claim, and a busy
    daemon claims every few dozen refreshes. A row found that is not among `names` (another
    daemon registered it since) is not leased, and is added to `skip`.

    Columns and one UPDATE per chunk rather than ORM objects: a cycle claims thousands of
    feeds, and loading each as an object to set two attributes cost more than the query."""
    query = (
        select(Feed.id, Feed.name, Feed.url, Feed.etag, Feed.last_modified, Feed.body_hash,
               Feed.error_count, Feed.host, Feed.check_interval, Feed.next_check_at)
        .where(or_(Feed.lease_until.is_(None), Feed.lease_until < now))
        .order_by(Feed.next_check_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if skip:
        query = query.where(Feed.name.not_in(list(skip)))
    if due_only:
        query = query.where(Feed.next_check_at <= (due_by or now))
    # Read before the claim, so it is never later than the lease written below.
    deadline = time.monotonic() + lease.total_seconds()
    feeds = []
    for r in session.execute(query):
        if r.name not in names:
            if skip is not None:
                skip.add(r.name)
            continue
        feeds.append(FeedState(r.id, r.name, r.url, r.etag, r.last_modified, r.body_hash,
                               r.error_count, r.host or url_host(r.url), r.check_interval,
                               deadline, r.next_check_at))
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
    """Record a refresh's outcome on the feed row and give up the lease (`release_feeds`
    for one feed, in the session's transaction)."""
    connection = session.connection() if isinstance(session, Session) else session
    release_feeds(connection, owner,
                  [Release(feed_id, {"next_check_at": next_check_at, **changes})])


# Keeps each IN (...) list well under SQLite's limit on bound parameters.
_CHUNK = 500

_T = TypeVar("_T")


def _chunks(values: Sequence[_T]) -> Iterable[Sequence[_T]]:
    return (values[start:start + _CHUNK] for start in range(0, len(values), _CHUNK))


# The statements a store runs for every changed feed, built once from the tables (not the
# ORM classes) and run on the session's Connection: building a statement, computing its
# cache key and going through the ORM's execute path cost more than running the statement.
# An expanding bind parameter takes each chunk of an IN (...) list.
_entries = FeedEntry.__table__
_articles = Article.__table__
_bands = ArticleBand.__table__
_stories = Story.__table__
_alerts = Alert.__table__
_feeds = Feed.__table__

# Marks the entries of a parsed document the feed carried before as still carried (for
# retention), and names them: one statement both finds and touches them.
_TOUCH_CARRIED = (update(_entries)
                  .where(_entries.c.feed_id == bindparam("feed"),
                         _entries.c.entry_key.in_(bindparam("keys", expanding=True)))
                  .values(last_seen=bindparam("now"))
                  .returning(_entries.c.entry_key))
_ARTICLES_AT = select(_articles.c.id, _articles.c.canonical_link).where(
    _articles.c.canonical_link.in_(bindparam("links", expanding=True)))
_ARTICLES_WITH_TEXT = (
    select(_articles.c.fingerprint, _articles.c.id)
    .where(_articles.c.fingerprint.in_(bindparam("fingerprints", expanding=True)),
           _articles.c.origin == bindparam("origin"))
    .order_by(_articles.c.id))
_STORIES_BY_TEXT = (
    select(_articles.c.fingerprint, _articles.c.story_id)
    .where(_articles.c.fingerprint.in_(bindparam("fingerprints", expanding=True)),
           or_(_articles.c.baseline.is_(True), _articles.c.fetched >= bindparam("since")))
    .order_by(_articles.c.id))
_LEADS = select(_articles.c.id, _articles.c.story_id, _articles.c.title, _articles.c.summary,
                _articles.c.content).where(_articles.c.id.in_(bindparam("ids", expanding=True)))
_LOCK_STORED_STORIES = (select(_stories.c.id, _stories.c.baseline)
                        .where(_stories.c.id.in_(bindparam("ids", expanding=True)))
                        .order_by(_stories.c.id).with_for_update())
_ALERTED_WATCHES = select(_alerts.c.story_id, _alerts.c.watch).where(
    _alerts.c.story_id.in_(bindparam("ids", expanding=True)))
_MATCHED_TERMS = select(_articles.c.story_id, _articles.c.matches).where(
    _articles.c.story_id.in_(bindparam("ids", expanding=True)))
_INSERT_STORIES = insert(_stories).returning(_stories.c.id, sort_by_parameter_order=True)
_TOUCH_STORIES = (update(_stories).where(_stories.c.id.in_(bindparam("ids", expanding=True)))
                  .values(updated_at=bindparam("now")))


@functools.cache
def _insert_articles_statement(dialect: str) -> Any:
    return (_dialect_insert(dialect)(_articles)
            .on_conflict_do_nothing(index_elements=["canonical_link"])
            .returning(_articles.c.id, _articles.c.canonical_link, _articles.c.fingerprint))


_INSERT_BANDS = insert(_bands)
_INSERT_ENTRIES = insert(_entries)
_INSERT_ALERTS = insert(_alerts).returning(_alerts.c.id, sort_by_parameter_order=True)
_INSERT_DELIVERIES = insert(Delivery.__table__)


def _connection(session: Session | Connection) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def _touch_carried(connection: Connection, feed_id: int, keys: Sequence[str],
                   now: datetime) -> set[str]:
    """Which of these entry keys the feed carried before, each marked as seen `now` (one
    statement, not one per entry: in a steady cycle most entries of a changed feed are
    old)."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(connection.scalars(
            _TOUCH_CARRIED, {"feed": feed_id, "keys": chunk, "now": now}))
    return found


def _articles_at(connection: Connection, links: Sequence[str]) -> dict[str, int]:
    """The ids of the stored articles at these canonical links, by link."""
    found: dict[str, int] = {}
    for chunk in _chunks(links):
        found.update((link, id_) for id_, link in connection.execute(
            _ARTICLES_AT, {"links": chunk}))
    return found


def _articles_with_text(connection: Connection, origin: str,
                        fingerprints: Sequence[str]) -> dict[str, int]:
    """Per fingerprint, the id of the first stored article from `origin` with that text."""
    found: dict[str, int] = {}
    for chunk in _chunks(fingerprints):
        for fingerprint, id_ in connection.execute(
                _ARTICLES_WITH_TEXT, {"fingerprints": chunk, "origin": origin}):
            found.setdefault(fingerprint, id_)
    return found


@dataclass
class _Story:
    """A story that a batch adds articles to: a stored one, or one the batch starts (its id
    is known once inserted). What alerting needs is kept up to date as the batch decides."""

    id: int | None
    baseline: bool
    title: str = ""
    alerted: set[str] = field(default_factory=set)  # watches that alerted on it
    terms: dict[str, set[str]] = field(default_factory=dict)  # per watch, terms matched


@dataclass
class _NewArticle:
    """An item that is no stored article: where it goes, and what it alerts."""

    candidate: Candidate
    story: _Story | None = None
    baseline: bool = False
    alerts: list[tuple[Match, str]] = field(default_factory=list)  # (match, kind)
    id: int | None = None

    @property
    def story_id(self) -> int | None:
        return None if self.story is None else self.story.id

    @property
    def identity(self) -> tuple[str | None, str | None]:
        return _identity(self.candidate.canonical_link, self.candidate.fingerprint)


def _identity(link: str | None, fingerprint: str) -> tuple[str | None, str | None]:
    """What tells the new articles of a batch apart: the link, else (no link) the text."""
    return (link, None) if link else (None, fingerprint)


def store_candidates(
    session: Session | Connection,
    *,
    feed_id: int | None,
    origin: str,
    candidates: Sequence[Candidate | Entry | UnreadEntry],
    channels_for: Callable[[str], Sequence[str]],
    now: datetime,
    baseline: bool = False,
    rules: StoryRules = DEFAULT_RULES,
    prepare: Callable[[Entry | UnreadEntry], Candidate] | None = None,
) -> StoreResult:
    """Store new articles, each in its story, and in the same transaction their alerts and
    outbox rows.

    A bare `Entry` (or `UnreadEntry`) among the candidates is one the caller expects the feed
    to have carried before and left unprepared (preparing is most of the cost of an old
    entry); should the feed not carry it, it is prepared here with `prepare`, so a wrong
    guess costs time, never an article.

    An entry the feed carried before is skipped; an item that is a stored article (the one
    at its canonical link, or for an item without a link the one with the same text from the
    same origin) is recorded for the feed, nothing more. Any other item is a new article in
    a story (`_assign_stories`); it alerts only as the first article of its story to match a
    watch, and never in a baseline story.

    The entries are stored as one batch: a few queries for all of them, decisions in order
    in memory (an item that is, or retells, an earlier new item of the same batch is treated
    as if that one were stored already), then one multi-row INSERT per table.
    """
    result = StoreResult()
    connection = _connection(session)
    keys = list(dict.fromkeys(_key_of(c) for c in candidates))
    carried = (_touch_carried(connection, feed_id, keys, now) if feed_id is not None
               else set())
    fresh: list[Candidate] = []
    seen = set(carried)
    for candidate in candidates:
        key = _key_of(candidate)
        if key in seen:
            result.already_seen += 1
            continue
        if feed_id is not None:
            seen.add(key)
        if not isinstance(candidate, Candidate):
            if prepare is None:
                raise ValueError(f"entry {key!r} is not carried and cannot be prepared")
            candidate = prepare(candidate)
        fresh.append(candidate)
    linked, same_text = _stored_articles(connection, origin, fresh)
    locked = False
    while True:
        entries, new = _sort_out(fresh, linked, same_text)
        if not new:
            break
        if not locked:
            locked = True
            if _lock_stories(connection):
                # Another process may have stored some of these while we waited.
                linked, same_text = _stored_articles(connection, origin, fresh)
                continue
        _assign_stories(connection, new, now, baseline, rules)
        conflicts = _insert_articles(connection, feed_id, origin, new, now)
        if not conflicts:
            break
        # Another process stored these links a moment ago (its insert was not yet
        # committed when we looked): its articles are the ones, so decide again.
        found = _articles_at(connection, conflicts)
        if len(found) < len(conflicts):
            raise RuntimeError(f"canonical links neither insertable nor stored: {conflicts}")
        linked.update(found)
    result.new_articles = len(new)
    result.duplicates = len(fresh) - len(new)
    if feed_id is not None and entries:
        connection.execute(_INSERT_ENTRIES, [
            {"feed_id": feed_id, "entry_key": key, "first_seen": now, "last_seen": now,
             "article_id": article if isinstance(article, int) else article.id}
            for key, article in entries])
    _insert_alerts(connection, new, channels_for, now, result)
    return result


def _key_of(candidate: Candidate | Entry | UnreadEntry) -> str:
    return candidate.entry.key if isinstance(candidate, Candidate) else candidate.key


def _stored_articles(connection: Connection, origin: str, fresh: Sequence[Candidate]
                     ) -> tuple[dict[str, int], dict[str, int]]:
    """The stored articles these items may be: by canonical link, and (for the items
    without a link) by the text from the same origin."""
    return (_articles_at(connection, list(dict.fromkeys(
                c.canonical_link for c in fresh if c.canonical_link))),
            _articles_with_text(connection, origin, list(dict.fromkeys(
                c.fingerprint for c in fresh if not c.canonical_link))))


def _sort_out(fresh: Sequence[Candidate], linked: dict[str, int], same_text: dict[str, int]
              ) -> tuple[list[tuple[str, int | _NewArticle]], list[_NewArticle]]:
    """Which article each item is: a stored one (its id), or a new one. A later item at the
    link of an earlier new one (or, without a link, with its text) is that article too."""
    entries: list[tuple[str, int | _NewArticle]] = []
    new: list[_NewArticle] = []
    new_at: dict[str, _NewArticle] = {}
    new_with_text: dict[str, _NewArticle] = {}
    for candidate in fresh:
        link, text_ = candidate.canonical_link, candidate.fingerprint
        article: int | _NewArticle | None
        if link:
            article = linked.get(link) or new_at.get(link)
        else:
            article = same_text.get(text_) or new_with_text.get(text_)
        if article is None:
            article = _NewArticle(candidate)
            new.append(article)
            if link:
                new_at[link] = article
            new_with_text.setdefault(text_, article)
        entries.append((candidate.entry.key, article))
    return entries, new


def _lock_stories(connection: Connection) -> bool:
    """Take turns assigning stories: two feeds refreshed at once that carry copies of one
    story must not each start it (and each alert). SQLite's write lock already serializes
    writers; on PostgreSQL a transaction-scoped advisory lock does, until commit. True when
    the lock was taken here, so that what was read before it may be out of date."""
    if connection.dialect.name != "postgresql":
        return False
    connection.execute(_STORY_LOCK, {"key": _STORY_LOCK_KEY})
    return True


def _assign_stories(connection: Connection, new: Sequence[_NewArticle], now: datetime,
                    baseline: bool, rules: StoryRules) -> None:
    """Give each new article, in order, its story and its alerts.

    The story is that of a recent or baseline article with the same text, else that of the
    most similar one, else a new one; the articles earlier in the batch count as stored.
    Old articles are left alone even with the same text: a headline-only item that recurs
    daily is news daily.
    """
    by_text = _stories_by_text(connection, [a.candidate.fingerprint for a in new],
                               now - rules.window)
    neighbours = _band_neighbours(connection, [
        band for a in new if a.candidate.fingerprint not in by_text
        for band in a.candidate.sketch.bands], now, rules)
    leads = _stored_leads(connection, {i for ids in neighbours.values() for i in ids})
    stored: dict[int, _Story] = {}
    batch_by_text: dict[str, _Story] = {}
    batch_bands: dict[int, list[int]] = {}  # band key -> indexes into `new`
    for index, article in enumerate(new):
        sketch = article.candidate.sketch
        story_id = by_text.get(article.candidate.fingerprint)
        story = None if story_id is not None else batch_by_text.get(article.candidate.fingerprint)
        if story_id is None and story is None:
            # Keys order stored articles (by id) before this batch's (by position): ties go
            # to the earliest, so a story keeps being found through its first article.
            best = stories.closest(sketch.shingles, [
                *(((0, i), leads[i][1]) for i in _sharing(sketch, neighbours) if i in leads),
                *(((1, j), new[j].candidate.sketch.shingles)
                  for j in _sharing(sketch, batch_bands))], rules.threshold)
            if best is not None:
                (batch, key), _score = best
                if batch:
                    story = new[key].story
                else:
                    story_id = leads[key][0]
        if story is None:
            story = (stored.setdefault(story_id, _Story(story_id, False))
                     if story_id is not None
                     else _Story(None, baseline, article.candidate.entry.title))
        article.story = story
        entry = article.candidate.entry
        stories.remember_lead(entry.title, entry.summary, entry.content, sketch)
        batch_by_text.setdefault(article.candidate.fingerprint, story)
        for band in sketch.bands:
            batch_bands.setdefault(band, []).append(index)
    _read_stored_stories(connection, stored, new, baseline, rules)
    for article in new:
        _plan_alerts(article, baseline, rules)


def _sharing(sketch: Sketch, by_band: dict[int, Any]) -> set[Any]:
    """What `by_band` lists under any of the sketch's band keys."""
    return {found for band in sketch.bands for found in by_band.get(band, ())}


def _stories_by_text(connection: Connection, fingerprints: Sequence[str],
                     since: datetime) -> dict[str, int]:
    """Per fingerprint, the story of the first baseline or recent article with that text."""
    found: dict[str, int] = {}
    for chunk in _chunks(list(dict.fromkeys(fingerprints))):
        for fingerprint, story_id in connection.execute(
                _STORIES_BY_TEXT, {"fingerprints": chunk, "since": since}):
            found.setdefault(fingerprint, story_id)
    return found


# Built once: an IN (...) of hundreds of keys costs more to construct than to run.
# `article_id >= NULL` (nothing recent) selects nothing.
_FIRST_RECENT = (select(_articles.c.id).where(_articles.c.fetched >= bindparam("since"))
                 .order_by(_articles.c.fetched).limit(1).scalar_subquery())
# `=`, not `IS`: PostgreSQL seeks an index only on the former.
_NEIGHBOURS = select(_bands.c.band, _bands.c.article_id).where(
    _bands.c.baseline == true(), _bands.c.band.in_(bindparam("keys", expanding=True))
).union_all(select(_bands.c.band, _bands.c.article_id).where(
    _bands.c.baseline == false(), _bands.c.band.in_(bindparam("keys", expanding=True)),
    _bands.c.article_id >= _FIRST_RECENT))


def _band_neighbours(connection: Connection, bands: Iterable[int], now: datetime,
                     rules: StoryRules) -> dict[int, set[int]]:
    """Per band key, the ids of the articles worth comparing that share it.

    Candidates come from the primary key (baseline, band, article_id) only: baseline
    articles, and the others stored since the window opened (ids grow with time, so the key
    bounds the range); both lookups are index seeks, whatever the size of the table.
    """
    found: dict[int, set[int]] = {}
    for chunk in _chunks(sorted(set(bands))):
        for band, article_id in connection.execute(
                _NEIGHBOURS, {"keys": chunk, "since": now - rules.window}):
            found.setdefault(band, set()).add(article_id)
    return found


def _stored_leads(connection: Connection, ids: Iterable[int]
                  ) -> dict[int, tuple[int, frozenset[int]]]:
    """Per article id, its story and the shingles of its lead."""
    leads: dict[int, tuple[int, frozenset[int]]] = {}
    for chunk in _chunks(sorted(ids)):
        for row in connection.execute(_LEADS, {"ids": chunk}):
            leads[row.id] = (row.story_id, stories.lead_shingles(
                row.title, row.summary, row.content))
    return leads


def find_similar_story(session: Session | Connection, sketch: Sketch, now: datetime,
                       rules: StoryRules) -> int | None:
    """The story of the stored article most similar to the sketch, above the threshold."""
    connection = _connection(session)
    leads = _stored_leads(connection, _sharing(
        sketch, _band_neighbours(connection, sketch.bands, now, rules)))
    best = stories.closest(sketch.shingles, ((i, lead[1]) for i, lead in leads.items()),
                           rules.threshold)
    return None if best is None else leads[best[0]][0]


def _read_stored_stories(connection: Connection, stored: dict[int, _Story],
                         new: Sequence[_NewArticle], baseline: bool, rules: StoryRules) -> None:
    """Lock the stored stories the batch joins and read what alerting needs of them: whether
    they are baseline, which watches alerted, and (for watches with `alert_on_update`) the
    terms their articles matched."""
    if not stored:
        return
    ids = sorted(stored)
    for chunk in _chunks(ids):
        # Locked, so that two processes adding copies of one story decide its alerts in turn.
        for story_id, story_baseline in connection.execute(
                _LOCK_STORED_STORIES, {"ids": chunk}):
            stored[story_id].baseline = story_baseline
    matching = {a.story_id for a in new if a.candidate.matches}
    alerting = [i for i in ids if i in matching and not (baseline or stored[i].baseline)]
    for chunk in _chunks(alerting):
        for story_id, watch in connection.execute(_ALERTED_WATCHES, {"ids": chunk}):
            stored[story_id].alerted.add(watch)
    updating = {a.story_id for a in new
                if any(m.watch in rules.update_watches for m in a.candidate.matches)}
    for chunk in _chunks([i for i in alerting if i in updating]):
        for story_id, matches in connection.execute(_MATCHED_TERMS, {"ids": chunk}):
            for match in matches:
                stored[story_id].terms.setdefault(match["watch"], set()).update(
                    match["terms"])


def _plan_alerts(article: _NewArticle, baseline: bool, rules: StoryRules) -> None:
    """One alert per story and watch: the story's first matching article alerts ("new");
    with the watch's `alert_on_update`, a copy matching a term the story's earlier articles
    did not match alerts again ("update"). Baseline stories never alert; a copy of a
    baseline article is baseline too."""
    story = article.story
    assert story is not None
    article.baseline = baseline or story.baseline
    matches = article.candidate.matches
    if not article.baseline:
        for match in matches:
            if match.watch not in story.alerted:
                article.alerts.append((match, "new"))
            elif (match.watch in rules.update_watches
                  and set(match.terms) - story.terms.get(match.watch, set())):
                article.alerts.append((match, "update"))
        story.alerted.update(match.watch for match, _kind in article.alerts)
    for match in matches:
        story.terms.setdefault(match.watch, set()).update(match.terms)


def _insert_articles(connection: Connection, feed_id: int | None, origin: str,
                     new: Sequence[_NewArticle], now: datetime) -> list[str]:
    """Insert the new stories, articles and band keys. A canonical link another process
    stored meanwhile is not inserted: then nothing is, and those links are returned."""
    savepoint = connection.begin_nested()
    # Each story the batch starts, once (later articles of the batch may join it).
    started = list({id(a.story): a.story for a in new
                    if a.story is not None and a.story.id is None}.values())
    if started:
        ids = connection.scalars(_INSERT_STORIES, [
            {"title": s.title, "baseline": s.baseline, "created_at": now, "updated_at": now}
            for s in started]).all()
        for story, story_id in zip(started, ids, strict=True):
            story.id = story_id
    joined = sorted({a.story_id for a in new if a.story_id is not None}
                    - {s.id for s in started})
    for chunk in _chunks(joined):
        connection.execute(_TOUCH_STORIES, {"ids": chunk, "now": now})
    rows = connection.execute(_insert_articles_statement(connection.dialect.name),
                              [_article_row(a, feed_id, origin, now) for a in new]).all()
    inserted = {_identity(link, fingerprint): id_ for id_, link, fingerprint in rows}
    if len(inserted) < len(new):
        savepoint.rollback()
        return [a.candidate.canonical_link for a in new
                if a.identity not in inserted and a.candidate.canonical_link]
    savepoint.commit()
    for article in new:
        article.id = inserted[article.identity]
    # In key order: the rows go into a B-tree by band key, and sorted rows land on
    # neighbouring pages instead of one random page each.
    bands = sorted(({"band": band, "article_id": a.id, "baseline": a.baseline}
                    for a in new for band in a.candidate.sketch.bands),
                   key=lambda row: (row["baseline"], row["band"]))
    if bands:
        connection.execute(_INSERT_BANDS, bands)
    return []


def _article_row(article: _NewArticle, feed_id: int | None, origin: str,
                 now: datetime) -> dict[str, Any]:
    candidate, entry = article.candidate, article.candidate.entry
    return {
        "feed_id": feed_id, "origin": origin, "story_id": article.story_id,
        "link": entry.link, "canonical_link": candidate.canonical_link,
        "fingerprint": candidate.fingerprint, "title": entry.title, "summary": entry.summary,
        "content": entry.content, "author": entry.author, "language": candidate.language,
        "match_key": candidate.match_key, "matches": [m.as_dict() for m in candidate.matches],
        "baseline": article.baseline, "published": entry.published, "fetched": now,
    }


def _insert_alerts(connection: Connection, new: Sequence[_NewArticle],
                   channels_for: Callable[[str], Sequence[str]], now: datetime,
                   result: StoreResult) -> None:
    """The planned alerts and, per alert, one outbox row for each channel of its watch."""
    planned = [(a, match, kind) for a in new for match, kind in a.alerts]
    if not planned:
        return
    ids = connection.scalars(_INSERT_ALERTS, [
        {"watch": match.watch, "kind": kind, "article_id": a.id, "story_id": a.story_id,
         "matched": list(match.terms), "created_at": now}
        for a, match, kind in planned]).all()
    deliveries = []
    for (_article, match, _kind), alert_id in zip(planned, ids, strict=True):
        metrics.record_match(match.watch)
        deliveries.extend(
            {"alert_id": alert_id, "channel": channel, "message_id": new_message_id(),
             "state": "pending", "next_attempt_at": now, "created_at": now}
            for channel in channels_for(match.watch))
    if deliveries:
        connection.execute(_INSERT_DELIVERIES, deliveries)
    result.alerts += len(planned)
    result.deliveries += len(deliveries)


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
            {"_feed_id": release.feed_id, "_owner": owner,
             **{f"_{c}": v for c, v in release.changes.items()}})
    for columns, rows in groups.items():
        connection.execute(_release_statement(columns), rows)


@functools.cache
def _release_statement(columns: tuple[str, ...]) -> Update:
    """The release that sets these columns, built once per set (a handful: a 304, a stored
    document, an error, a deferral...)."""
    return (update(_feeds)
            .where(_feeds.c.id == bindparam("_feed_id"),
                   _feeds.c.lease_owner == bindparam("_owner"))
            .values(lease_owner=None, lease_until=None,
                    **{c: bindparam(f"_{c}") for c in columns}))
