"""One refresh of one feed, top to bottom (Miniflux's RefreshFeed is the model).

Wait for a polite turn at the feed's host, fetch with the stored validators, stop on 304 or
an unchanged body, parse, prepare the entries, store new articles and their alerts in one
transaction, record the feed's health and choose its next check. Errors never escape: they
are recorded on the feed row and logged with the feed's name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from monitor.articles import Candidate, PreparedDocument, prepare, prepare_document
from monitor.config import ParseConfig, ScheduleConfig
from monitor.fetch import Fetched, Fetcher, HostGate, Validators
from monitor.parse import (
    Entry,
    KnownItems,
    NotAFeed,
    ParsedFeed,
    UnreadEntry,
    entries_by_key,
)
from monitor.parse_workers import ParseFailed, ParseWorkers, WatchList
from monitor.store.database import Database, Priority
from monitor.store.queries import (
    FeedState,
    Release,
    StoreResult,
    pause_host,
    release_feed,
    release_feeds,
    store_candidates,
    url_host,
)
from monitor.stories import DEFAULT_RULES, StoryRules
from monitor.text.match import Matcher

log = logging.getLogger(__name__)

FAILING_AFTER = 3


@dataclass(frozen=True)
class RefreshOutcome:
    feed: str
    result: str  # stored | not_modified | unchanged | deferred | error
    error: str | None = None
    entries: int = 0
    new_articles: int = 0
    duplicates: int = 0
    alerts: int = 0
    elapsed: float = 0.0


def jittered(delay: float, jitter: float) -> float:
    """Spread checks so that feeds added together do not fire in lockstep."""
    return delay * random.uniform(1 - jitter, 1 + jitter)


def backoff_delay(interval: float, errors: int, schedule: ScheduleConfig) -> float:
    """After `errors` consecutive errors: interval * 2^errors, jittered, capped."""
    delay = interval * (2 ** min(errors, 40))
    return min(jittered(min(delay, schedule.max_backoff), schedule.jitter), schedule.max_backoff)


def planned_interval(interval: float, schedule: ScheduleConfig, hints: Sequence[float | None],
                     published: Sequence[datetime] = (), now: datetime | None = None) -> float:
    """The interval after a successful fetch, before jitter.

    Never shorter than the configured interval. A feed's own hints (RSS <ttl>,
    sy:updatePeriod, Cache-Control max-age) may lengthen it up to `schedule.max_hint`; with
    `schedule.adaptive`, a quiet feed is checked less often, up to `schedule.adaptive_max`:
    half its average gap between items over the last week.
    """
    chosen = interval
    if schedule.feed_hints:
        for hint in hints:
            if hint:
                chosen = max(chosen, min(hint, schedule.max_hint))
    if schedule.adaptive and published:
        now = now or datetime.now(UTC)
        recent = sorted(d for d in published if now - timedelta(days=7) <= d <= now)
        if len(recent) >= 2:
            gap = (recent[-1] - recent[0]).total_seconds() / (len(recent) - 1)
            adaptive = gap / 2
        else:
            adaptive = schedule.adaptive_max
        chosen = max(chosen, min(adaptive, schedule.adaptive_max))
    return chosen


# How long a routine outcome may wait for others to share its transaction (see
# `ReleaseBatcher`). The cost of waiting: the feed row shows the check up to this much
# later, the refresh's task lives as long (shutdown waits for it), and a crash meanwhile
# loses the record, so the feed is checked once more when its lease expires. What it buys:
# with feeds starting at their own due times, outcomes arrive one by one, and a
# transaction and a thread hop each cost more CPU than the rest of a 304.
RELEASE_LINGER = 0.5


class ReleaseBatcher:
    """Writes the feed-row outcomes of refreshes that store nothing (304, unchanged body,
    deferred) together: one transaction and one thread hop for many feeds.

    In a steady cycle nine feeds in ten answer 304, and a transaction per feed was half of
    their cost. This is group commit: an outcome is written with the others that arrive
    while a batch is being written. And while more outcomes are on their way (`expected`:
    feeds this process claimed and has not finished, counting those waiting in the batcher)
    a batch waits for them, up to `linger` seconds: once none is on its way, or `limit` are
    waiting, it is written at once, so the last feed of a poll cycle waits for nothing.
    `release` returns once its row is written: a refresh still ends with its outcome
    recorded (the daemon's shutdown waits for it) and a failed write is that refresh's
    error, as before.
    """

    def __init__(self, db: Database, owner: str, limit: int = 500, linger: float = 0.0,
                 expected: Callable[[], int] = lambda: 0) -> None:
        self.db = db
        self.owner = owner
        self.limit = limit
        self.linger = linger
        self.expected = expected
        self._pending: list[tuple[Release, asyncio.Future[None]]] = []
        self._writing = 0  # outcomes in the batch being written
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while a batch lingers

    async def release(self, release: Release) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((release, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches())
        else:
            self.wake()
        await done

    @property
    def waiting(self) -> int:
        """Outcomes handed over and not yet written: refreshes that are done but for this."""
        return len(self._pending) + self._writing

    def wake(self) -> None:
        """Have a lingering batch look again whether to wait on (a refresh ended)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _more_coming(self) -> bool:
        return len(self._pending) < self.limit and self.expected() > self.waiting

    async def _linger(self) -> None:
        """Wait while more outcomes are on their way, up to `linger` seconds."""
        loop = asyncio.get_running_loop()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            self.wake()

        timer = loop.call_later(self.linger, expire)
        try:
            while not expired and self._more_coming():
                self._wake = loop.create_future()
                await self._wake
        finally:
            timer.cancel()
            self._wake = None

    async def _write_batches(self) -> None:
        batch: list[tuple[Release, asyncio.Future[None]]] = []
        try:
            while self._pending:
                if self.linger:
                    await self._linger()
                batch, self._pending = self._pending[:self.limit], self._pending[self.limit:]
                self._writing = len(batch)
                await self._write(batch)
                self._writing = 0
        finally:
            self._writer = None
            self._writing = 0
            # Only unresolved when cancelled (the loop is closing): nothing will write these.
            for _, done in [*batch, *self._pending]:
                if not done.done():
                    done.cancel()
            self._pending.clear()

    async def _write(self, batch: list[tuple[Release, asyncio.Future[None]]]) -> None:
        def write() -> None:
            with self.db.transaction() as connection:
                release_feeds(connection, self.owner, [release for release, _ in batch])
        try:
            await asyncio.to_thread(write)
        except Exception as exc:  # each refresh in the batch reports it as its own
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


class Refresher:
    def __init__(self, db: Database, fetcher: Fetcher, matcher: Matcher,
                 channels_for: Callable[[str], Sequence[str]], owner: str,
                 rules: StoryRules = DEFAULT_RULES, schedule: ScheduleConfig | None = None,
                 patience: float = 60.0, slots: asyncio.Semaphore | None = None,
                 expected: Callable[[], int] = lambda: 0, parse: ParseConfig | None = None,
                 workers: ParseWorkers | None = None) -> None:
        self.db = db
        self.fetcher = fetcher
        self.matcher = matcher
        self.channels_for = channels_for
        self.owner = owner
        self.rules = rules
        self.schedule = schedule or ScheduleConfig()
        self.parse = parse or ParseConfig()
        # Where documents are parsed: the process's workers, or (None) this process's threads.
        self.workers = workers
        self._watches = WatchList.of(matcher.watches) if workers is not None else None
        self.hosts = HostGate(fetcher.config.per_host_concurrency,
                              fetcher.config.per_host_spacing)
        # How long a claimed feed may wait for its host; kept well inside the lease so that
        # no other daemon takes the feed over while it waits.
        self.patience = patience
        # The least lease a fetch may start with: its whole timeout, within reason.
        self._fetch_margin = min(fetcher.config.total_timeout, patience)
        # Feeds fetched, parsed and stored at once (`fetch.concurrency`); the caller may
        # share one semaphore between successive Refreshers.
        self.slots = slots or asyncio.Semaphore(fetcher.config.concurrency)
        # `expected`: how many refreshes the caller has claimed and not yet finished.
        self.releases = ReleaseBatcher(db, owner, linger=RELEASE_LINGER, expected=expected)
        # Per feed id, what its last document that we stored held (`KnownItems`): a changed
        # feed usually adds an entry or two to a document of old ones, and those are neither
        # parsed again where their bytes are the same nor prepared. Only a guess (retention
        # may have removed an entry since, two items may share a digest): `store_candidates`
        # checks it against feed_entries and prepares what is not carried after all.
        self._known: dict[int, KnownItems] = {}

    async def refresh(self, feed: FeedState, interval: float) -> RefreshOutcome:
        async with self.slots:
            outcome, release = await self._refresh(feed, interval)
        if release is not None:
            # Outside the slot: while the batch fills, the next feeds are already fetched.
            await self.releases.release(release)
        return outcome

    async def _refresh(self, feed: FeedState, interval: float
                       ) -> tuple[RefreshOutcome, Release | None]:
        """The refresh, up to a feed-row write that is left to the batch (`Release`)."""
        wait = await self.hosts.enter(feed.host, self.patience)
        if wait is not None:
            return RefreshOutcome(feed.name, "deferred"), self._deferred(feed, wait)
        if time.monotonic() > feed.lease_deadline - self._fetch_margin:
            # On an overloaded machine the feed waited most of its lease for a slot: fetched
            # now, it could still be running when another daemon takes the lease over and
            # fetches it again. Given back unfetched, it is claimed afresh at the next tick.
            self.hosts.leave(feed.host)
            log.info("feed %s: waited until its lease was nearly spent; given back unfetched",
                     feed.name)
            return RefreshOutcome(feed.name, "deferred"), self._deferred(feed, 0)
        try:
            fetched = await self.fetcher.fetch(
                feed.url, Validators(feed.etag, feed.last_modified))
        finally:
            self.hosts.leave(feed.host)
        now = datetime.now(UTC)
        if fetched.error is not None:
            return await self._failed(feed, interval, fetched, fetched.error, now), None
        if fetched.not_modified or fetched.body_hash == feed.body_hash:
            # A server that ignores validators but sends the same bytes costs a hash, no parse.
            return (RefreshOutcome(feed.name, "not_modified" if fetched.not_modified
                                   else "unchanged", elapsed=fetched.elapsed),
                    self._unchanged(feed, interval, fetched, now))
        try:
            document = await self._prepare_document(feed, fetched)
        except NotAFeed as exc:
            return await self._failed(feed, interval, fetched, f"not a feed: {exc}", now), None
        except ParseFailed as exc:
            return await self._failed(feed, interval, fetched, str(exc), now), None
        parsed, candidates = document.parsed, document.candidates
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
                              alerts=stored.alerts, elapsed=fetched.elapsed), None

    async def _prepare_document(self, feed: FeedState, fetched: Fetched) -> PreparedDocument:
        """The document parsed and its entries prepared but for those the feed most likely
        carried already (`prepare_document`)."""
        known = self._known.get(feed.id)
        if self.workers is None:
            return await asyncio.to_thread(prepare_document, fetched.body, fetched.headers,
                                           fetched.url, feed.name, self.matcher, known)
        assert self._watches is not None
        return await self.workers.prepare(self._watches, self.parse.timeout, fetched.body,
                                          fetched.headers, fetched.url, feed.name, known)

    def _prepare(self, feed: FeedState, whole: Callable[[], dict[str, Entry]],
                 entry: Entry | UnreadEntry) -> Candidate:
        # An unread entry is prepared only when `store_candidates` finds that the feed does
        # not carry it after all: then its text is read, as parsing would have (from the
        # document read whole, once, for an item that was not parsed at all).
        if isinstance(entry, UnreadEntry):
            entry = entry.read() if entry.raw is not None else whole()[entry.key]
        return prepare(entry, feed.name, self.matcher)

    def _store(self, feed: FeedState, interval: float, fetched: Fetched, parsed: ParsedFeed,
               candidates: list[Candidate | Entry | UnreadEntry], now: datetime
               ) -> StoreResult:
        planned = planned_interval(
            interval, self.schedule,
            [parsed.ttl_seconds, parsed.update_period_seconds, fetched.max_age],
            [e.published for e in parsed.entries if e.published], now)
        whole = functools.cache(
            functools.partial(entries_by_key, fetched.body, fetched.headers, fetched.url))
        with self.db.transaction(Priority.NORMAL) as connection:
            result = store_candidates(connection, feed_id=feed.id, origin=feed.name,
                                      candidates=candidates, channels_for=self.channels_for,
                                      now=now, rules=self.rules,
                                      prepare=functools.partial(self._prepare, feed,
                                                                whole))
            changes = self._success_changes(feed, planned, fetched, now,
                                            body_hash=fetched.body_hash)
            if parsed.problem:  # entries were kept; the problem is still worth showing
                changes["last_error"] = f"malformed: {parsed.problem}"
            release_feed(connection, feed.id, self.owner, **changes)
        # Committed: every entry of the document is now carried (old, or recorded just now).
        self._known[feed.id] = KnownItems.of(parsed)
        return result

    def _success_changes(self, feed: FeedState, planned: float, fetched: Fetched,
                         now: datetime, **extra: object) -> dict[str, object]:
        changes: dict[str, object] = dict(
            next_check_at=now + timedelta(seconds=jittered(planned, self.schedule.jitter)),
            check_interval=planned, state="ok", error_count=0, last_error=None,
            last_status=fetched.status, last_checked_at=now, last_success_at=now, **extra)
        if fetched.status == 200 or fetched.validators.etag or fetched.validators.last_modified:
            changes["etag"] = fetched.validators.etag
            changes["last_modified"] = fetched.validators.last_modified
        if fetched.permanent_redirect:
            log.warning("feed %s: permanently moved from %s to %s; using the new URL",
                        feed.name, feed.url, fetched.permanent_redirect)
            changes["url"] = fetched.permanent_redirect
            changes["host"] = url_host(fetched.permanent_redirect)
        return changes

    def _unchanged(self, feed: FeedState, interval: float, fetched: Fetched,
                   now: datetime) -> Release:
        # Nothing new was parsed, so the interval chosen at the last full fetch still holds.
        planned = planned_interval(feed.check_interval or interval, self.schedule,
                                   [fetched.max_age])
        return Release(feed.id, self._success_changes(feed, planned, fetched, now))

    @staticmethod
    def _deferred(feed: FeedState, wait: float) -> Release:
        """Give the feed back unfetched: its host is busy or asked for a pause, or its lease
        was spent waiting."""
        return Release(feed.id, {"next_check_at": datetime.now(UTC) + timedelta(seconds=wait)})

    async def _failed(self, feed: FeedState, interval: float, fetched: Fetched, reason: str,
                      now: datetime) -> RefreshOutcome:
        errors = feed.error_count + 1
        state = "gone" if fetched.status == 410 else (
            "failing" if errors >= FAILING_AFTER else "ok")
        delay = backoff_delay(interval, errors, self.schedule)
        if state == "gone":
            delay = self.schedule.max_backoff  # still probed, in case it comes back
        pause = None
        if fetched.status in (429, 503):
            raw = fetched.headers.get("retry-after")
            if fetched.retry_after is not None:
                pause = min(fetched.retry_after, self.schedule.max_backoff)
                delay = max(delay, pause)
                reason += f" (Retry-After {pause:g} s: every feed on {feed.host} waits)"
            elif raw:
                reason += f" (Retry-After {raw[:40]!r} ignored: neither seconds nor a date)"
        log.warning("feed %s: %s (%s, %d consecutive error%s)", feed.name, reason, feed.url,
                    errors, "" if errors == 1 else "s")
        if pause:
            self.hosts.pause(feed.host, pause)

        def write() -> None:
            with self.db.transaction() as connection:
                if pause:
                    pause_host(connection, feed.host, now + timedelta(seconds=pause))
                release_feed(
                    connection, feed.id, self.owner,
                    next_check_at=now + timedelta(seconds=delay),
                    state=state, error_count=errors, last_error=reason,
                    last_status=fetched.status, last_checked_at=now)
        await asyncio.to_thread(write)
        return RefreshOutcome(feed.name, "error", error=reason, elapsed=fetched.elapsed)
