"""The daemon: APScheduler 3.11 as an in-process ticker over the schedule kept in the database.

Every tick claims the feeds that are due (their `next_check_at` has passed) and refreshes
them as tasks, so a slow feed never delays the others; a separate loop drains the outbox,
woken at once when a refresh queues alerts. SIGINT/SIGTERM stop claiming new work, let
in-flight work finish within a grace period, and leave the rest safely queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.service import Monitor, is_database_error, short_error
from monitor.store.queries import FeedState

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.config = monitor.config.scheduler
        self._stopping = asyncio.Event()
        self._deliver_now = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._ticking = False
        self._db_failures = 0
        self._db_retry_at = 0.0  # monotonic; no database work before it

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing in-flight work (up to %.0f s)",
                     self.config.shutdown_grace)
            self._stopping.set()
            self._deliver_now.set()

    async def _tick(self) -> None:
        """Start a claim in a task of its own, tracked with the refreshes, so that stopping
        (APScheduler cancels running jobs) waits for it instead of cutting it off."""
        if self._stopping.is_set() or self._ticking or time.monotonic() < self._db_retry_at:
            return
        self._ticking = True
        task = asyncio.create_task(self._claim_and_start())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _claim_and_start(self) -> None:
        """Claim what is due and start a task per feed without waiting for them: a feed
        that takes its full 30 s never holds back the next tick's feeds."""
        try:
            # Claim no more than can start soon, so that leases are not spent waiting.
            room = 2 * self.monitor.config.fetch.concurrency - len(self._in_flight)
            feeds = await self.monitor.claim_feeds(room)
            self._database_back()
            for feed in feeds:
                task = asyncio.create_task(self._refresh(feed))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except Exception as exc:
            self._database_trouble(exc, "claiming feeds")
        finally:
            self._ticking = False

    async def _refresh(self, feed: FeedState) -> None:
        outcome = await self.monitor.refresh(feed)
        if outcome.alerts:
            self._deliver_now.set()

    def _database_trouble(self, exc: Exception, doing: str) -> None:
        """Back off while the database is away (restarted, network cut): one warning per
        attempt, no traceback, and nothing queued is lost: it is all in the database."""
        if not is_database_error(exc):
            log.exception("%s failed", doing)
            return
        self._db_failures += 1
        delay = min(2 ** (self._db_failures - 1), 30) * random.uniform(0.8, 1.2)
        self._db_retry_at = time.monotonic() + delay
        log.warning("database unavailable while %s (%s); retrying in %.0f s",
                    doing, short_error(exc), delay)

    def _database_back(self) -> None:
        if self._db_failures:
            log.info("database reachable again after %d failed attempt%s", self._db_failures,
                     "" if self._db_failures == 1 else "s")
            self._db_failures = 0
            self._db_retry_at = 0.0
            self._deliver_now.set()  # deliveries queued during the outage go out now

    async def _delivery_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deliver_now.wait(), self.config.delivery_interval)
            self._deliver_now.clear()
            if self._stopping.is_set():
                break
            if time.monotonic() < self._db_retry_at:
                continue
            try:
                summary = await self.monitor.deliver()
                self._database_back()
                if summary.attempted >= 200:
                    self._deliver_now.set()  # more may be waiting
            except Exception as exc:
                self._database_trouble(exc, "delivering alerts")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        scheduler = AsyncIOScheduler(timezone="UTC")
        # The real schedule is per feed in the database; this job is only the clock.
        scheduler.add_job(self._tick, "interval", seconds=self.config.tick, id="tick",
                          max_instances=1, coalesce=True,
                          misfire_grace_time=max(int(self.config.tick * 10), 10),
                          next_run_time=None)
        scheduler.start()
        scheduler.get_job("tick").modify(next_run_time=datetime.now(UTC))
        delivery = asyncio.create_task(self._delivery_loop())
        log.info("monitor running: %d feeds, %d watches, channels: %s",
                 len(self.monitor.config.feeds), len(self.monitor.config.watches),
                 ", ".join(self.monitor.channels) or "none active")
        try:
            await self._stopping.wait()
        finally:
            scheduler.shutdown(wait=False)
            await self._drain(delivery)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        log.info("monitor stopped")

    async def _drain(self, delivery: asyncio.Task) -> None:
        # scheduler.shutdown() would cancel coroutine jobs, so in-flight work is tracked here.
        pending = [*self._in_flight, delivery]
        _, not_done = await asyncio.wait(pending, timeout=self.config.shutdown_grace)
        for task in not_done:
            task.cancel()
        if not_done:
            log.warning("%d task(s) cut off at shutdown; their leases expire and the work is "
                        "picked up on the next start", len(not_done))
            await asyncio.gather(*not_done, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.monitor.deliver()  # a last pass for alerts queued while stopping

