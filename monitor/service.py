"""The running product, wired once from a config: database, fetcher, matcher, channels.

`monitor poll` and the daemon share it: `prepare()` (migrate, register feeds, load the
baseline), `refresh_feeds()` and `deliver()`. The daemon only adds a clock and signals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from monitor.alerts.channels import Channel, build_active_channels
from monitor.alerts.message import AlertMessage, DeliveryResult
from monitor.alerts.outbox import claim_deliveries, record_result
from monitor.articles import prepare as prepare_candidate
from monitor.config import Config, Secrets
from monitor.fetch import Fetcher
from monitor.net import network_policy
from monitor.refresh import Refresher, RefreshOutcome
from monitor.seed import read_seeds
from monitor.store.database import Database
from monitor.store.queries import FeedState, claim_due_feeds, store_candidates, sync_feeds
from monitor.text.match import Matcher

log = logging.getLogger(__name__)


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


def process_owner() -> str:
    """Who holds a lease: host and pid, so an operator can tell daemons apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Monitor:
    def __init__(self, config: Config, secrets: Secrets, db: Database | None = None) -> None:
        self.config = config
        self.secrets = secrets
        self.db = db or Database(config.database.url)
        self.owner = process_owner()
        self.matcher = Matcher(config.watches)
        self.channels: dict[str, Channel] = {}
        self._fetcher: Fetcher | None = None
        self._refresher: Refresher | None = None
        self._fetch_slots: asyncio.Semaphore | None = None
        self._intervals = {f.name: f.interval for f in config.feeds if f.enabled}
        self._watch_channels = {w.name: list(w.channels) for w in config.watches}

    # --- setup -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Migrate, register the configured feeds and load the baseline. Idempotent."""
        self.db.migrate()
        with self.db.session() as session:
            sync_feeds(session, self.config.feeds, datetime.now(UTC))
        self.load_baseline()

    def load_baseline(self) -> int:
        """Store the seed articles as baseline; returns how many were new."""
        added = 0
        for seed in read_seeds(self.config.seed.path):
            candidates = [prepare_candidate(e, seed.origin, self.matcher) for e in seed.entries]
            with self.db.session() as session:
                result = store_candidates(session, feed_id=None, origin=seed.origin,
                                          candidates=candidates, channels_for=lambda _: (),
                                          now=datetime.now(UTC), baseline=True)
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
            self._refresher = Refresher(
                self.db, self.fetcher, self.matcher, self.active_channels_for, self.owner,
                self.config.schedule, patience=self.config.database.lease_seconds / 2)
        return self._refresher

    async def close(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.close()
        for channel in self.channels.values():
            await channel.close()
        self.db.dispose()

    # --- fetching ----------------------------------------------------------------------

    async def claim_feeds(self, limit: int, due_only: bool = True) -> list[FeedState]:
        """Lease feeds that are due (or all with due_only=False) for this process."""
        if not self._intervals or limit <= 0:
            return []
        lease = timedelta(seconds=self.config.database.lease_seconds)

        def claim() -> list[FeedState]:
            with self.db.session() as session:
                return claim_due_feeds(session, self.owner, self._intervals,
                                       datetime.now(UTC), lease, limit, due_only=due_only)

        return await asyncio.to_thread(claim)

    async def refresh(self, feed: FeedState) -> RefreshOutcome:
        """Refresh one claimed feed; never raises."""
        if self._fetch_slots is None:
            self._fetch_slots = asyncio.Semaphore(self.config.fetch.concurrency)
        async with self._fetch_slots:
            try:
                return await self.refresher.refresh(feed, self._intervals[feed.name])
            except Exception as exc:
                # A bug or a database hiccup in one feed must not stop the others; the
                # lease expires and the feed is tried again.
                if is_database_error(exc):
                    log.warning("feed %s: could not record the refresh, database "
                                "unavailable (%s); retried when its lease expires",
                                feed.name, short_error(exc))
                else:
                    log.exception("feed %s: refresh failed unexpectedly", feed.name)
                return RefreshOutcome(feed.name, "error", error=f"internal error: {exc}")

    async def refresh_feeds(self, due_only: bool = True,
                            limit: int = 100_000) -> list[RefreshOutcome]:
        """Claim feeds and refresh them concurrently (`monitor poll`)."""
        feeds = await self.claim_feeds(limit, due_only)
        return list(await asyncio.gather(*(self.refresh(f) for f in feeds)))

    # --- delivering --------------------------------------------------------------------

    async def deliver(self, limit: int = 200) -> DeliverySummary:
        """Send the due deliveries of every active channel once."""
        summary = DeliverySummary()
        if not self.channels:
            return summary
        lease = timedelta(seconds=self.config.database.lease_seconds)

        def claim() -> list[AlertMessage]:
            with self.db.session() as session:
                return claim_deliveries(session, self.owner, self.channels,
                                        datetime.now(UTC), lease, limit)

        messages = await asyncio.to_thread(claim)
        if not messages:
            return summary

        async def send(message: AlertMessage) -> tuple[AlertMessage, DeliveryResult]:
            try:
                return message, await self.channels[message.channel].send(message)
            except Exception as exc:  # a channel bug is a failed attempt, not a crash
                log.exception("channel %s: unexpected error", message.channel)
                return message, DeliveryResult.failure(f"internal error: {exc}")

        results = await asyncio.gather(*(send(m) for m in messages))

        def record() -> None:
            with self.db.session() as session:
                for message, result in results:
                    state = record_result(session, message.delivery_id, self.owner, result,
                                          datetime.now(UTC))
                    summary.attempted += 1
                    if state == "delivered":
                        summary.delivered += 1
                    elif state in ("failed", "dead"):
                        summary.failed += state == "failed"
                        summary.dead += state == "dead"
                        summary.errors.append(f"{message.channel}: {result.error}")
                        log.warning("channel %s: delivery %s %s: %s", message.channel,
                                    message.message_id,
                                    "dead-lettered" if state == "dead" else "will be retried",
                                    result.error)

        await asyncio.to_thread(record)
        return summary
