"""One refresh of one feed, top to bottom (Miniflux's RefreshFeed is the model).

Fetch with the stored validators, stop on 304 or an unchanged body, parse, prepare the
entries, store new articles and their alerts in one transaction, record the feed's health
and its next check. Errors never escape: they are recorded on the feed row and logged with
the feed's name.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from monitor.articles import Candidate, prepare
from monitor.fetch import Fetched, Fetcher, Validators
from monitor.parse import NotAFeed, ParsedFeed, parse_feed
from monitor.store.database import Database
from monitor.store.queries import FeedState, StoreResult, release_feed, store_candidates
from monitor.stories import DEFAULT_RULES, StoryRules
from monitor.text.match import Matcher

log = logging.getLogger(__name__)

MAX_BACKOFF = 24 * 3600.0
FAILING_AFTER = 3


@dataclass(frozen=True)
class RefreshOutcome:
    feed: str
    result: str  # stored | not_modified | unchanged | error
    error: str | None = None
    entries: int = 0
    new_articles: int = 0
    duplicates: int = 0
    alerts: int = 0
    elapsed: float = 0.0


def next_check_delay(interval: float, error_count: int) -> float:
    """Seconds until the next check: the interval, doubled per consecutive error, with
    jitter so that feeds do not fire in lockstep."""
    delay = min(interval * (2 ** error_count), MAX_BACKOFF) if error_count else interval
    return delay * random.uniform(0.9, 1.1) if delay > 2 else delay


class Refresher:
    def __init__(self, db: Database, fetcher: Fetcher, matcher: Matcher,
                 channels_for: Callable[[str], Sequence[str]], owner: str,
                 rules: StoryRules = DEFAULT_RULES) -> None:
        self.db = db
        self.fetcher = fetcher
        self.matcher = matcher
        self.channels_for = channels_for
        self.owner = owner
        self.rules = rules

    async def refresh(self, feed: FeedState, interval: float) -> RefreshOutcome:
        fetched = await self.fetcher.fetch(
            feed.url, Validators(feed.etag, feed.last_modified))
        now = datetime.now(UTC)
        if fetched.error is not None:
            return await self._failed(feed, interval, fetched, fetched.error, now)
        if fetched.not_modified or fetched.body_hash == feed.body_hash:
            # A server that ignores validators but sends the same bytes costs a hash, no parse.
            await self._record(feed, interval, fetched, now)
            return RefreshOutcome(feed.name, "not_modified" if fetched.not_modified
                                  else "unchanged", elapsed=fetched.elapsed)
        try:
            parsed, candidates = await asyncio.to_thread(self._parse_and_prepare, feed, fetched)
        except NotAFeed as exc:
            return await self._failed(feed, interval, fetched, f"not a feed: {exc}", now)
        stored = await asyncio.to_thread(self._store, feed, interval, fetched, parsed,
                                         candidates, now)
        if parsed.problem:
            log.info("feed %s: recovered %d entries from a malformed document (%s)",
                     feed.name, len(candidates), parsed.problem)
        if stored.new_articles:
            log.info("feed %s: %d new, %d duplicates, %d alerts", feed.name,
                     stored.new_articles, stored.duplicates, stored.alerts)
        return RefreshOutcome(feed.name, "stored", entries=len(candidates),
                              new_articles=stored.new_articles, duplicates=stored.duplicates,
                              alerts=stored.alerts, elapsed=fetched.elapsed)

    def _parse_and_prepare(self, feed: FeedState,
                           fetched: Fetched) -> tuple[ParsedFeed, list[Candidate]]:
        parsed = parse_feed(fetched.body, fetched.headers, fetched.url)
        return parsed, [prepare(e, feed.name, self.matcher) for e in parsed.entries]

    def _store(self, feed: FeedState, interval: float, fetched: Fetched, parsed: ParsedFeed,
               candidates: list[Candidate], now: datetime) -> StoreResult:
        with self.db.session() as session:
            result = store_candidates(session, feed_id=feed.id, origin=feed.name,
                                      candidates=candidates, channels_for=self.channels_for,
                                      now=now, rules=self.rules)
            release_feed(session, feed.id, self.owner, **self._success_changes(
                feed, interval, fetched, now, body_hash=fetched.body_hash))
        return result

    def _success_changes(self, feed: FeedState, interval: float, fetched: Fetched,
                         now: datetime, **extra: object) -> dict[str, object]:
        changes: dict[str, object] = dict(
            next_check_at=now + timedelta(seconds=next_check_delay(interval, 0)),
            state="ok", error_count=0, last_error=None, last_status=fetched.status,
            last_checked_at=now, last_success_at=now, **extra)
        if fetched.status == 200 or fetched.validators.etag or fetched.validators.last_modified:
            changes["etag"] = fetched.validators.etag
            changes["last_modified"] = fetched.validators.last_modified
        if fetched.permanent_redirect:
            log.warning("feed %s: permanently moved to %s; using the new URL",
                        feed.name, fetched.permanent_redirect)
            changes["url"] = fetched.permanent_redirect
        return changes

    async def _record(self, feed: FeedState, interval: float, fetched: Fetched,
                      now: datetime) -> None:
        def write() -> None:
            with self.db.session() as session:
                release_feed(session, feed.id, self.owner,
                             **self._success_changes(feed, interval, fetched, now))
        await asyncio.to_thread(write)

    async def _failed(self, feed: FeedState, interval: float, fetched: Fetched, reason: str,
                      now: datetime) -> RefreshOutcome:
        errors = feed.error_count + 1
        state = "gone" if fetched.status == 410 else (
            "failing" if errors >= FAILING_AFTER else "ok")
        log.warning("feed %s: %s (%s, %d consecutive error%s)", feed.name, reason, feed.url,
                    errors, "" if errors == 1 else "s")

        def write() -> None:
            with self.db.session() as session:
                release_feed(
                    session, feed.id, self.owner,
                    next_check_at=now + timedelta(seconds=next_check_delay(interval, errors)),
                    state=state, error_count=errors, last_error=reason,
                    last_status=fetched.status, last_checked_at=now)
        await asyncio.to_thread(write)
        return RefreshOutcome(feed.name, "error", error=reason, elapsed=fetched.elapsed)

