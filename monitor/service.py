"""The running product, wired once from a config: database, fetcher, matcher, channels.

`monitor poll` and the daemon share it: `prepare()` (migrate, register feeds, load the
baseline), `refresh_feeds()` and `deliver()`. The daemon only adds a clock and signals.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor import metrics
from monitor.alerts.channels import Channel, build_active_channels, build_channel
from monitor.alerts.message import DeliveryResult, Outgoing
from monitor.alerts.outbox import (
    RetryPolicy,
    claim_messages,
    delivery_ids,
    pace_channel,
    record_result,
    set_channel_state,
)
from monitor.alerts.sample import sample_alert
from monitor.articles import prepare as prepare_candidate
from monitor.config import Config, Secrets, channel_missing_secrets
from monitor.fetch import Fetcher
from monitor.net import network_policy
from monitor.parse_workers import ParseWorkers, shared_workers
from monitor.refresh import Refresher, RefreshOutcome
from monitor.seed import read_seeds
from monitor.store.database import Database, Priority
from monitor.store.queries import (
    FeedState,
    Release,
    claim_due_feeds,
    release_feeds,
    store_candidates,
    sync_feeds,
)
from monitor.stories import StoryRules
from monitor.text.match import Matcher
from monitor.text.normalize import load_normalizer

log = logging.getLogger(__name__)

# The most messages one delivery pass claims; a pass that claims this many is followed at
# once by another.
DELIVERY_BATCH = 200


@dataclass
class DeliverySummary:
    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)


def is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    from monitor.store.database import DatabaseError

    return isinstance(exc, OperationalError | DBAPIError | DatabaseError)


def short_error(exc: BaseException) -> str:
    """The first line of a driver error, without SQL and parameters."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_frozen = False


def freeze_startup_objects() -> None:
    """Move what startup loaded (hazm's tables, the ORM's mappers: objects that live as long
    as the process) out of the garbage collector's reach. Each full collection walked them
    all, about 0.2 s, once or twice per poll cycle of 2,000 feeds. Once per process; the
    collection first, so that no garbage is frozen with them."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def process_owner() -> str:
    """Who holds a lease: host and pid, so an operator can tell daemons apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Monitor:
    def __init__(self, config: Config, secrets: Secrets, db: Database | None = None,
                 clock: Callable[[], datetime] | None = None,
                 fault_pauses: Mapping[str, float] | None = None) -> None:
        # Injectable so digest and quiet-hours behaviour can be tested without waiting.
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fault_pauses = dict(fault_pauses or {})
        self.db = db or Database(config.database.url)
        self.owner = process_owner()
        self.channels: dict[str, Channel] = {}
        self._fetcher: Fetcher | None = None
        self._refresher: Refresher | None = None
        self._fetch_slots: asyncio.Semaphore | None = None
        self._retired_fetchers: list[Fetcher] = []
        # Feeds claimed and not yet refreshed or given back: while some are, a 304's outcome
        # may wait a moment to share their transaction (`ReleaseBatcher`).
        self._unfinished = 0
        # Delivery's database work runs on a thread of its own: in asyncio's shared pool a
        # claim queued behind the feeds' writes (dozens a second in a daemon, one per 304).
        self._delivery_thread = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="monitor-delivery")
        # Kept from the first config: a reload does not start or stop processes.
        self.parse = config.parse
        # Stored feeds this config does not poll (`sync_feeds`), which claims pass over.
        self._others: set[str] = set()
        # The process's parse workers; None when documents are parsed in its threads.
        self.parse_workers: ParseWorkers | None = (
            shared_workers(self.parse.processes) if self.parse.processes else None)
        self._use(config, secrets)

    def _use(self, config: Config, secrets: Secrets) -> None:
        self.config, self.secrets = config, secrets
        self.matcher = Matcher(config.watches)
        self._intervals = {f.name: f.interval for f in config.feeds if f.enabled}
        self._watch_channels = {w.name: list(w.channels) for w in config.watches}
        self.story_rules = StoryRules(
            window=timedelta(seconds=config.stories.window),
            threshold=config.stories.threshold,
            update_watches=frozenset(w.name for w in config.watches if w.alert_on_update))

    async def reconfigure(self, config: Config, secrets: Secrets) -> None:
        """Switch to a new config without a restart: feeds, watches, channels, stories,
        schedule, fetch and network settings, retention. Queued deliveries are rows in the
        database and stay queued (for a channel that is gone they wait until it comes back).
        Refreshes already running finish with the old settings; the caller makes sure no
        delivery pass is running."""
        def sync() -> set[str]:
            with self.db.session() as session:
                return sync_feeds(session, config.feeds, datetime.now(UTC))

        others = await asyncio.to_thread(sync)
        old_channels = list(self.channels.values())
        if self._fetcher is not None and (config.fetch, config.network) != (
                self.config.fetch, self.config.network):
            # Refreshes in flight still use it: it is closed at shutdown.
            self._retired_fetchers.append(self._fetcher)
            self._fetcher, self._fetch_slots = None, None
        self._use(config, secrets)
        self._others = others
        self._refresher = None  # the next refresh builds one with the new settings
        self.open_channels()
        for channel in old_channels:
            await channel.close()

    # --- setup -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Migrate, register the configured feeds and load the baseline. Idempotent."""
        self.db.migrate()
        with self.db.session() as session:
            self._others = sync_feeds(session, self.config.feeds, datetime.now(UTC))
        if self.parse_workers is not None:
            self.parse_workers.start()  # they start up while the baseline loads
        self.load_baseline()
        if self.parse_workers is None:
            # This process parses, so it builds hazm's normalizer now rather than on its
            # first Persian entry. With parse workers, each builds its own and this process
            # needs one only when a wrong guess makes it read an entry itself: built then,
            # it would otherwise cost every start 0.56 s and the daemon 17 MB for nothing.
            load_normalizer()
        freeze_startup_objects()

    def load_baseline(self) -> int:
        """Store the seed articles as baseline; returns how many were new."""
        added = 0
        for seed in read_seeds(self.config.seed.path):
            candidates = [prepare_candidate(e, seed.origin, self.matcher) for e in seed.entries]
            with self.db.session() as session:
                result = store_candidates(session, feed_id=None, origin=seed.origin,
                                          candidates=candidates, channels_for=lambda _: (),
                                          now=datetime.now(UTC), baseline=True,
                                          rules=self.story_rules)
            added += result.new_articles
        if added:
            log.info("baseline: loaded %d seed articles from %s", added, self.config.seed.path)
        return added

    def open_channels(self) -> None:
        self.channels = build_active_channels(self.config, self.secrets)

    def active_channels_for(self, watch: str) -> list[str]:
        """Channels a watch alerts through that are active now; inactive ones get no rows,
        so setting a secret later does not flood the desk with old alerts."""
        return [c for c in self._watch_channels.get(watch, ()) if c in self.channels]

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            self._fetcher = Fetcher(self.config.fetch, network_policy(self.config.network))
        return self._fetcher

    @property
    def refresher(self) -> Refresher:
        if self._refresher is None:
            if self._fetch_slots is None:
                self._fetch_slots = asyncio.Semaphore(self.config.fetch.concurrency)
            self._refresher = Refresher(
                self.db, self.fetcher, self.matcher, self.active_channels_for, self.owner,
                self.story_rules, self.config.schedule,
                patience=self.config.database.lease_seconds / 2, slots=self._fetch_slots,
                expected=lambda: self._unfinished, parse=self.parse,
                workers=self.parse_workers)
        return self._refresher

    @property
    def recording(self) -> int:
        """Refreshes that are done but for writing their outcome (`ReleaseBatcher`)."""
        return 0 if self._refresher is None else self._refresher.releases.waiting

    async def close(self) -> None:
        for fetcher in (*self._retired_fetchers, self._fetcher):
            if fetcher is not None:
                await fetcher.close()
        for channel in self.channels.values():
            await channel.close()
        self._delivery_thread.shutdown()
        self.db.dispose()

    # --- fetching ----------------------------------------------------------------------

    async def claim_feeds(self, limit: int, due_only: bool = True,
                          ahead: float = 0.0) -> list[FeedState]:
        """Lease feeds that are due (or all with due_only=False) for this process, counting
        those due within `ahead` seconds (the daemon starts each at its due time)."""
        if not self._intervals or limit <= 0:
            return []
        lease = timedelta(seconds=self.config.database.lease_seconds)

        def claim() -> list[FeedState]:
            now = datetime.now(UTC)
            with self.db.session() as session:
                return claim_due_feeds(session, self.owner, self._intervals, now, lease,
                                       limit, due_only=due_only,
                                       due_by=now + timedelta(seconds=ahead),
                                       skip=self._others)

        feeds = await asyncio.to_thread(claim)
        self._unfinished += len(feeds)
        return feeds

    def _finished(self) -> None:
        """A claimed feed was refreshed or given back: one fewer for a batch to wait for."""
        self._unfinished = max(0, self._unfinished - 1)
        if self._refresher is not None:
            self._refresher.releases.wake()

    async def give_back(self, feed: FeedState) -> None:
        """Release a claimed feed without fetching it; it stays due when it was due."""
        def write() -> None:
            with self.db.transaction() as connection:
                release_feeds(connection, self.owner,
                              [Release(feed.id, {"next_check_at": feed.due_at})])

        try:
            if feed.due_at is not None:
                await asyncio.to_thread(write)
        finally:
            self._finished()

    async def refresh(self, feed: FeedState) -> RefreshOutcome:
        """Refresh one claimed feed; never raises."""
        try:
            outcome = await self.refresher.refresh(feed, self._intervals[feed.name])
        except Exception as exc:
            # A bug or a database hiccup in one feed must not stop the others; the
            # lease expires and the feed is tried again.
            if is_database_error(exc):
                log.warning("feed %s: could not record the refresh, database "
                            "unavailable (%s); retried when its lease expires",
                            feed.name, short_error(exc))
            else:
                log.exception("feed %s: refresh failed unexpectedly", feed.name)
            outcome = RefreshOutcome(feed.name, "error", error=f"internal error: {exc}")
        finally:
            self._finished()
        metrics.record_refresh(outcome)
        return outcome

    async def refresh_feeds(self, due_only: bool = True,
                            limit: int = 100_000) -> list[RefreshOutcome]:
        """Claim feeds and refresh them concurrently (`monitor poll`)."""
        feeds = await self.claim_feeds(limit, due_only)
        return list(await asyncio.gather(*(self.refresh(f) for f in feeds)))

    # --- delivering --------------------------------------------------------------------

    async def _fault_pause(self, point: str) -> None:
        seconds = self.fault_pauses.get(point)
        if seconds:
            log.warning("fault pause %s: sleeping %.0f s (MONITOR_FAULT_PAUSE)", point, seconds)
            await asyncio.sleep(seconds)

    async def deliver(self, limit: int = DELIVERY_BATCH) -> DeliverySummary:
        """One delivery pass: claim what is due on every active channel, send it, record."""
        return await self.send(await self.claim_deliveries(limit))

    async def claim_deliveries(self, limit: int = DELIVERY_BATCH,
                               skip: Collection[str] = ()) -> list[Outgoing]:
        """Pace each active channel, then lease up to `limit` due messages of the active
        channels not in `skip` (the daemon skips a channel whose last batch is still being
        sent: its new messages wait for that batch rather than pile onto a slow server)."""
        if not self.channels:
            return []
        lease = timedelta(seconds=self.config.database.lease_seconds)
        channels = [name for name in self.channels if name not in skip]

        def claim() -> list[Outgoing]:
            now = self.clock()
            # Pacing and claiming share one transaction: one turn at SQLite's single
            # writer per pass instead of two, each of which queued behind feed writes.
            with self.db.session(Priority.DELIVERY) as session:
                for name in sorted(self.channels):  # one order everywhere: no lock cycles
                    pace_channel(session, self.config.channel(name), now)
                if not channels:
                    return []
                return claim_messages(session, self.owner, channels, now, lease, limit)

        return await asyncio.get_running_loop().run_in_executor(self._delivery_thread, claim)

    async def send(self, messages: Sequence[Outgoing]) -> DeliverySummary:
        """Send claimed messages concurrently, then record every result in one transaction."""
        summary = DeliverySummary()
        if not messages:
            return summary
        await self._fault_pause("after_claim")

        async def attempt(message: Outgoing) -> tuple[Outgoing, DeliveryResult]:
            try:
                return message, await self.channels[message.channel].send(message)
            except Exception as exc:  # a channel bug is a failed attempt, not a crash
                log.exception("channel %s: unexpected error", message.channel)
                return message, DeliveryResult.failure(f"internal error: {exc}")

        results = await asyncio.gather(*(attempt(m) for m in messages))
        await self._fault_pause("after_send")

        def record() -> None:
            with self.db.session(Priority.DELIVERY) as session:
                for message, result in results:
                    policy = RetryPolicy.from_config(self.config.channel(message.channel).retry)
                    state = record_result(session, delivery_ids(message), self.owner, result,
                                          self.clock(), policy)
                    self._account(summary, message, result, state)

        await asyncio.get_running_loop().run_in_executor(self._delivery_thread, record)
        return summary

    def _account(self, summary: DeliverySummary, message: Outgoing, result: DeliveryResult,
                 state: str | None) -> None:
        if state is None:
            return  # the lease was lost; the process that took it over records the result
        metrics.record_delivery(message.channel, state)
        summary.attempted += 1
        if state == "delivered":
            summary.delivered += 1
            return
        summary.errors.append(f"{message.channel}: {result.error}")
        if result.channel_state:
            log.error("channel %s is %s: %s", message.channel, result.channel_state,
                      result.error)
        elif state == "dead":
            summary.dead += 1
            metrics.DEAD_LETTERS.labels(message.channel).inc()
            log.error("channel %s: delivery %s dead-lettered after %d attempt(s): %s "
                      "(`monitor alerts --state dead` lists it, `monitor alerts retry` "
                      "re-queues it)", message.channel, message.message_id, message.attempt,
                      result.error)
        else:
            summary.failed += 1
            log.warning("channel %s: delivery %s will be retried: %s", message.channel,
                        message.message_id, result.error)

    async def test_alert(self, name: str) -> DeliveryResult:
        """Send a sample alert through one channel now, outside the outbox. Success also
        resumes a channel that was disabled or paused."""
        channel_config = self.config.channel(name)
        missing = channel_missing_secrets(channel_config, self.secrets)
        if missing:
            return DeliveryResult.failure(f"channel {name} is inactive: set "
                                          f"{', '.join(missing)}", permanent=True)
        channel = build_channel(channel_config, self.secrets, self.config.network)
        try:
            result = await channel.send(sample_alert(name, self.clock()))
        finally:
            await channel.close()
        if result.ok:
            def resume() -> bool:
                with self.db.session() as session:
                    return set_channel_state(session, name, "active", None, self.clock())

            if await asyncio.to_thread(resume):
                log.info("channel %s resumed after a successful test alert", name)
        return result
