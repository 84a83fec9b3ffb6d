"""The daemon: APScheduler 3.11 as an in-process ticker over the schedule kept in the database.

Every tick claims the feeds that are due before the next tick (their `next_check_at`) and
refreshes each as a task from its due time, so a slow feed never delays the others and a
tick's feeds do not all start at once; a separate loop drains the outbox,
woken at once when a refresh queues alerts. A daily job applies the retention policy.
SIGINT/SIGTERM stop claiming new work, let in-flight work finish within a grace period, and
leave the rest safely queued. SIGHUP re-reads the config file (see `reload`). The HTTP
endpoint (/healthz, /metrics) runs on the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select

from monitor import metrics, retention
from monitor.alerts.message import Outgoing
from monitor.config import (
    ConfigError,
    load_config,
    load_secrets,
    pid_file_path,
    secret_values,
)
from monitor.logs import add_secrets
from monitor.service import DELIVERY_BATCH, Monitor, is_database_error, short_error
from monitor.store.models import Feed
from monitor.store.queries import FeedState
from monitor.web import Endpoint, Response

log = logging.getLogger(__name__)

# Sections a reload cannot apply to a running process; a change to them is reported.
RESTART_SECTIONS = ("database", "http", "parse", "scheduler", "seed")
HEALTH_DB_TIMEOUT = 5.0
FIRST_PRUNE_AFTER = 300.0


# Threads for parses and writes in a SQLite daemon, besides four for health and pruning.
_WORK_THREADS = 8

# glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before the daemon starts its threads.

    glibc gives threads their own arenas, up to eight per core; the refresh and delivery
    threads each leave a partly used one behind, which measured 11 MB of the daemon's RSS
    with 5,000 feeds and bought no speed (the threads spend their time waiting for SQLite
    and the GIL). `MALLOC_ARENA_MAX` in the environment still decides if it is set; other
    C libraries are left alone. True when the cap was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False  # not glibc (musl has no arenas to cap)


class Daemon:
    def __init__(self, monitor: Monitor, config_path: str | os.PathLike[str] | None = None
                 ) -> None:
        self.monitor = monitor
        self.config = monitor.config.scheduler
        self.config_path = config_path
        self._stopping = asyncio.Event()
        # Done once stopping, for the feeds waiting for their due time (`_until_due`).
        self._stopped: asyncio.Future[None] | None = None
        self._deliver_now = asyncio.Event()
        self._in_flight: set[asyncio.Task] = set()
        self._ticking = False
        # The last claim filled its room: more feeds may be due than it could take.
        self._backlog = False
        self._db_failures = 0
        self._db_retry_at = 0.0  # monotonic; no database work before it
        # A reload swaps the channels only while no claim is under way and no batch is
        # being sent (the batches hold the old channels).
        self._delivery_lock = asyncio.Lock()
        self._sending: dict[str, asyncio.Task] = {}  # channel -> the batch being sent
        self._reload_lock = asyncio.Lock()
        self._scheduler: AsyncIOScheduler | None = None
        self._started = time.monotonic()
        self._last_cycle: float | None = None  # monotonic time of the last completed claim
        self.endpoint: Endpoint | None = None
        self.started = asyncio.Event()  # set once the clock runs (tests and reload wait on it)

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing in-flight work (up to %.0f s)",
                     self.config.shutdown_grace)
            self._stopping.set()
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)
            self._deliver_now.set()

    async def _tick(self) -> None:
        self._claim()

    def _claim(self) -> None:
        """Start a claim in a task of its own, tracked with the refreshes, so that stopping
        (APScheduler cancels running jobs) waits for it instead of cutting it off."""
        if self._stopping.is_set() or self._ticking or time.monotonic() < self._db_retry_at:
            return
        self._ticking = True
        self._spawn(self._claim_and_start())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """A task tracked with the in-flight work, so that stopping waits for it."""
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _claim_and_start(self) -> None:
        """Claim what is due and start a task per feed without waiting for them: a feed
        that takes its full 30 s never holds back the next tick's feeds."""
        try:
            # Claim no more than can start soon, so that leases are not spent waiting. A
            # refresh whose outcome waits to share a transaction needs no fetch slot.
            started = time.monotonic()
            room = 2 * self.monitor.config.fetch.concurrency - self._running
            feeds = await self.monitor.claim_feeds(room, ahead=self._ahead)
            self._backlog = room > 0 and len(feeds) >= room
            self._database_back()
            self._last_cycle = time.monotonic()
            metrics.record_cycle(time.time(), self._last_cycle - started)
            for feed in feeds:
                self._spawn(self._refresh(feed))
        except Exception as exc:
            self._database_trouble(exc, "claiming feeds")
        finally:
            self._ticking = False

    @property
    def _running(self) -> int:
        """Tasks in flight (claims and refreshes), but for the refreshes whose outcome only
        waits to share a transaction: those need no fetch slot."""
        return len(self._in_flight) - self.monitor.recording

    def _claim_if_behind(self) -> None:
        """Claim again before the tick when the last claim left feeds due and half its room
        is free. Without it a daemon could refresh no more than twice `fetch.concurrency`
        feeds per tick (64 a second by default) however fast each refresh is, and fall
        further behind every tick with more feeds due than that."""
        if self._backlog and self._running <= self.monitor.config.fetch.concurrency:
            self._claim()

    @property
    def _ahead(self) -> float:
        """How far ahead of its due time a tick claims a feed: up to the next tick, so that
        each feed starts at its own due time (`_until_due`) instead of all of a tick's feeds
        at the tick. Bounded by a quarter of the lease, which the wait spends."""
        return min(self.config.tick, self.monitor.config.database.lease_seconds / 4)

    async def _until_due(self, feed: FeedState) -> bool:
        """Wait until a feed claimed ahead of time is due; False if the daemon stops
        meanwhile: the feed is then given back unfetched, its next check unchanged.

        Why not fetch at the tick: feeds whose checks were spread by jitter would all
        start together, and their parses and stores would queue behind one another
        (an alert waited 100-300 ms in that burst with 50 feeds on a 1 s tick). And a feed
        due just after a tick would wait a whole tick, polled at up to twice its interval.
        """
        wait = 0.0 if feed.due_at is None else (feed.due_at - datetime.now(UTC)).total_seconds()
        if wait <= 0:
            return True
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
            if self._stopping.is_set():
                self._stopped.set_result(None)
        # On a future, not `wait_for` on the event: that made a task per feed and cancelled
        # it at the due time, a tenth of a 304's CPU in the daemon.
        await asyncio.wait([self._stopped], timeout=min(wait, self._ahead))
        if not self._stopping.is_set():
            return True
        try:
            await self.monitor.give_back(feed)
        except Exception as exc:  # its lease expires instead
            self._database_trouble(exc, f"giving back feed {feed.name}")
        return False

    async def _refresh(self, feed: FeedState) -> None:
        if not await self._until_due(feed):
            return
        outcome = await self.monitor.refresh(feed)
        if outcome.alerts:
            self._deliver_now.set()
        self._claim_if_behind()

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
        """Claim due messages and send each channel's batch in a task of its own, so that a
        slow or hanging channel delays only its own messages. A channel whose batch is still
        being sent is skipped by the claims until it finishes."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deliver_now.wait(), self.config.delivery_interval)
            self._deliver_now.clear()
            if self._stopping.is_set():
                break
            if time.monotonic() < self._db_retry_at:
                continue
            try:
                async with self._delivery_lock:
                    messages = await self.monitor.claim_deliveries(skip=self._sending.keys())
                self._database_back()
            except Exception as exc:
                self._database_trouble(exc, "delivering alerts")
                continue
            batches: dict[str, list[Outgoing]] = {}
            for message in messages:
                batches.setdefault(message.channel, []).append(message)
            for channel, batch in batches.items():
                self._sending[channel] = self._spawn(self._send(channel, batch))
            if len(messages) >= DELIVERY_BATCH:
                self._deliver_now.set()  # more may be waiting

    async def _send(self, channel: str, batch: list[Outgoing]) -> None:
        try:
            await self.monitor.send(batch)
        except Exception as exc:  # the claims expire and the messages go out again
            self._database_trouble(exc, f"recording deliveries of channel {channel}")
        finally:
            del self._sending[channel]
            self._deliver_now.set()  # what was queued for the channel meanwhile goes now

    async def _prune(self) -> None:
        if self._stopping.is_set():
            return
        try:
            report = await self._spawn(asyncio.to_thread(
                retention.prune, self.monitor.db, self.monitor.config, datetime.now(UTC)))
        except Exception as exc:
            self._database_trouble(exc, "pruning (it runs again at the next interval)")
            return
        metrics.record_pruned(report.removed)
        log.info("%s", report.describe())

    # --- reload ------------------------------------------------------------------------

    def request_reload(self) -> None:
        if not self._stopping.is_set():
            self._spawn(self.reload())

    async def reload(self) -> bool:
        """Re-read the config file. A valid one takes effect at once (refreshes already
        running finish with the old settings); an invalid one is logged with its YAML paths
        and the running configuration stays."""
        if self.config_path is None:
            log.warning("reload: the daemon was not started from a config file")
            return False
        async with self._reload_lock:
            log.info("reload: reading %s", self.config_path)
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("reload: %s\nkeeping the running configuration", exc)
                return False
            current = self.monitor.config
            ignored = [s for s in RESTART_SECTIONS if getattr(config, s) != getattr(current, s)]
            if ignored:
                log.warning("reload: changes to %s need a restart; they are not applied",
                            ", ".join(ignored))
            config = config.model_copy(update={s: getattr(current, s) for s in ignored})
            secrets = load_secrets(config)
            add_secrets(secret_values(config, secrets))
            try:
                async with self._delivery_lock:
                    if self._sending:  # batches still use the old channels
                        await asyncio.wait(self._sending.values())
                    await self.monitor.reconfigure(config, secrets)
            except Exception:
                # Registering the feeds comes before any swap, so a database error here
                # leaves the running configuration whole.
                log.exception("reload: could not apply %s; keeping the running configuration",
                              self.config_path)
                return False
            if (self._scheduler is not None
                    and config.retention.interval != current.retention.interval):
                self._scheduler.reschedule_job("prune", trigger="interval",
                                               seconds=config.retention.interval)
            log.info("reload: applied: %d feeds, %d watches, channels: %s",
                     len(config.feeds), len(config.watches),
                     ", ".join(self.monitor.channels) or "none active")
            self._deliver_now.set()
            return True

    # --- health --------------------------------------------------------------------------

    async def health(self) -> tuple[bool, str]:
        """Whether the daemon is doing its job, and why not; never names config or secrets."""
        if self._stopping.is_set():
            return False, "shutting down"
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running or scheduler.get_job("tick") is None:
            return False, "the scheduler is not running"
        try:
            await asyncio.wait_for(asyncio.to_thread(self._ping_database), HEALTH_DB_TIMEOUT)
        except Exception as exc:
            return False, f"the database does not answer ({type(exc).__name__})"
        since = time.monotonic() - (self._last_cycle or self._started)
        if since > self.monitor.config.http.max_cycle_age:
            return False, f"no poll cycle has completed for {since:.0f} s"
        if self._last_cycle is None:
            return True, "starting: no poll cycle has completed yet"
        return True, f"last poll cycle completed {since:.1f} s ago"

    def _ping_database(self) -> None:
        # A read of a real table: SQLite answers a bare SELECT 1 without opening the file.
        with self.monitor.db.session() as session:
            session.execute(select(Feed.id).limit(1)).all()

    async def _healthz(self) -> Response:
        ok, reason = await self.health()
        body = json.dumps({"status": "ok" if ok else "unhealthy", "reason": reason})
        return Response(200 if ok else 503, body.encode() + b"\n", "application/json")

    async def _start_endpoint(self) -> None:
        listen = self.monitor.config.http.listen
        if listen is None:
            return
        registry = metrics.build_registry(
            self.monitor.db, lambda: [f.name for f in self.monitor.config.feeds if f.enabled])

        async def scrape() -> Response:
            body = await asyncio.to_thread(metrics.render, registry)
            return Response(200, body, CONTENT_TYPE_LATEST)

        endpoint = Endpoint(listen, {"/healthz": self._healthz, "/metrics": scrape})
        try:
            await endpoint.start()
        except OSError as exc:
            # Alerting matters more than its dashboard: run on, and say so loudly (a second
            # daemon on one host needs its own http.listen).
            log.error("http.listen: cannot listen on %s (%s); running without /healthz and "
                      "/metrics", listen, exc.strerror or exc)
            return
        self.endpoint = endpoint

    # --- running -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.monitor.db.dialect == "sqlite":
            # The pool's jobs are parses (which hold the GIL) and writes (which take
            # SQLite's single writer in turn): more threads than a few run none of them
            # sooner. A few more than asyncio's default of cpu + 4, so that a parse or a
            # store of new articles does not wait for a thread behind writes waiting for the
            # writer; not one per refresh in flight (fetch.concurrency), as before 304
            # outcomes were written in groups: each thread keeps about 0.3 MB of freed
            # memory for itself, and 36 threads against 12 measured +7.7 MB of RSS with
            # 5,000 feeds and no lower alert latency. (On PostgreSQL writes run side by
            # side, and more threads would only ask the connection pool, and the server,
            # for more connections.)
            loop.set_default_executor(ThreadPoolExecutor(
                max_workers=min(self.monitor.config.fetch.concurrency, _WORK_THREADS) + 4,
                thread_name_prefix="monitor"))
        await self._start_endpoint()
        pid_file = self._write_pid_file()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        scheduler = AsyncIOScheduler(timezone="UTC")
        # The real schedule is per feed in the database; this job is only the clock.
        scheduler.add_job(self._tick, "interval", seconds=self.config.tick, id="tick",
                          max_instances=1, coalesce=True,
                          misfire_grace_time=max(int(self.config.tick * 10), 10),
                          next_run_time=None)
        prune_every = self.monitor.config.retention.interval
        scheduler.add_job(self._prune, "interval", seconds=prune_every, id="prune",
                          max_instances=1, coalesce=True, misfire_grace_time=3600,
                          next_run_time=datetime.now(UTC) + timedelta(
                              seconds=min(prune_every, FIRST_PRUNE_AFTER)))
        scheduler.start()
        self._scheduler = scheduler
        scheduler.get_job("tick").modify(next_run_time=datetime.now(UTC))
        delivery = asyncio.create_task(self._delivery_loop())
        self.started.set()
        log.info("monitor running: %d feeds, %d watches, channels: %s",
                 len(self.monitor.config.feeds), len(self.monitor.config.watches),
                 ", ".join(self.monitor.channels) or "none active")
        try:
            await self._stopping.wait()
        finally:
            scheduler.shutdown(wait=False)
            await self._drain(delivery)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.endpoint is not None:
                await self.endpoint.close()
            self._remove_pid_file(pid_file)
        log.info("monitor stopped")

    async def _drain(self, delivery: asyncio.Task) -> None:
        # scheduler.shutdown() would cancel coroutine jobs, so in-flight work is tracked here.
        # Tracked work may start more while it finishes (a claim that was under way starts
        # its feeds' refreshes, which give the feeds back): wait until none is left.
        deadline = time.monotonic() + self.config.shutdown_grace
        not_done: set[asyncio.Task] = set()
        while pending := {task for task in (*self._in_flight, delivery) if not task.done()}:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                not_done = pending
                break
            await asyncio.wait(pending, timeout=remaining)
        for task in not_done:
            task.cancel()
        if not_done:
            log.warning("%d task(s) cut off at shutdown; their leases expire and the work is "
                        "picked up on the next start", len(not_done))
            await asyncio.gather(*not_done, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.monitor.deliver()  # a last pass for alerts queued while stopping

    def _write_pid_file(self) -> Path | None:
        path = pid_file_path(self.monitor.config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError as exc:
            log.warning("cannot write the pid file %s (%s); `monitor reload` will not find "
                        "this daemon, send SIGHUP yourself", path, exc.strerror or exc)
            return None
        return path

    @staticmethod
    def _remove_pid_file(path: Path | None) -> None:
        with contextlib.suppress(OSError):
            if path is not None and path.read_text(encoding="ascii").strip() == str(os.getpid()):
                path.unlink()
