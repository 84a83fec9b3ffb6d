"""Prometheus metrics: counters the pipeline bumps at a few call sites, and gauges read from
the database when /metrics is scraped (so they are right even with several daemons).

The counters live in this module, unregistered; each endpoint builds its own registry from
them plus a collector over its database, so tests can run several daemons in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from monitor.retention import OPEN_DELIVERY_STATES
from monitor.store.models import Article, Delivery, Feed, Story

if TYPE_CHECKING:
    from monitor.refresh import RefreshOutcome
    from monitor.store.database import Database

log = logging.getLogger(__name__)

# The *_created series double the output and no dashboard uses them.
disable_created_metrics()

FETCH_RESULTS = ("stored", "not_modified", "unchanged", "deferred", "error")

FETCHES = Counter("monitor_fetches", "Feed fetches, by result", ["result"], registry=None)
FETCH_SECONDS = Histogram("monitor_fetch_duration_seconds", "Time to fetch one feed",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=None)
ITEMS_STORED = Counter("monitor_items_stored", "New articles stored", registry=None)
DUPLICATES = Counter("monitor_duplicates_folded",
                     "Feed items recognised as an article already stored", registry=None)
MATCHES = Counter("monitor_matches", "Alerts raised, by watch", ["watch"], registry=None)
DELIVERIES = Counter("monitor_deliveries", "Delivery attempts, by channel and result",
                     ["channel", "result"], registry=None)
LAST_CYCLE = Gauge("monitor_last_cycle_timestamp_seconds",
                   "Unix time the last poll cycle completed", registry=None)
CYCLE_SECONDS = Gauge("monitor_last_cycle_duration_seconds",
                      "How long the last poll cycle took", registry=None)
# Also in the default registry, where the delivery tests read it.
DEAD_LETTERS = Counter("monitor_alert_dead_letters", "Deliveries given up on, by channel",
                       ["channel"])
PRUNED = Counter("monitor_pruned_rows", "Rows removed by retention, by table", ["table"],
                 registry=None)

# A series at 0 from the start makes rate() work at once. Kept by result: `labels()` takes
# a lock and builds its key on every call, once per feed refreshed.
_FETCHES_BY_RESULT = {result: FETCHES.labels(result) for result in FETCH_RESULTS}

_MODULE_METRICS = (FETCHES, FETCH_SECONDS, ITEMS_STORED, DUPLICATES, MATCHES, DELIVERIES,
                   LAST_CYCLE, CYCLE_SECONDS, DEAD_LETTERS, PRUNED)


def record_refresh(outcome: RefreshOutcome) -> None:
    counter = _FETCHES_BY_RESULT.get(outcome.result) or FETCHES.labels(outcome.result)
    counter.inc()
    FETCH_SECONDS.observe(outcome.elapsed)
    if outcome.new_articles:  # adding 0 changes nothing, but takes the counter's lock
        ITEMS_STORED.inc(outcome.new_articles)
    if outcome.duplicates:
        DUPLICATES.inc(outcome.duplicates)


def record_match(watch: str) -> None:
    MATCHES.labels(watch).inc()


def record_delivery(channel: str, result: str) -> None:
    DELIVERIES.labels(channel, result).inc()


def record_cycle(finished_at: float, duration: float) -> None:
    LAST_CYCLE.set(finished_at)
    CYCLE_SECONDS.set(duration)


def record_pruned(counts: dict[str, int]) -> None:
    for table, count in counts.items():
        PRUNED.labels(table).inc(count)


class DatabaseCollector(Collector):
    """Gauges that are facts about the database: feeds by state, outbox depth, stories."""

    def __init__(self, db: Database, feed_names: Callable[[], Iterable[str]]) -> None:
        self.db = db
        self.feed_names = feed_names

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("monitor_database_up", "1 if the database answered the scrape")
        try:
            feeds, outbox, stories, articles = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_state = GaugeMetricFamily("monitor_feeds", "Configured feeds, by state",
                                     labels=["state"])
        for state in ("new", "ok", "failing", "gone"):
            by_state.add_metric([state], feeds.get(state, 0))
        yield by_state
        depth = GaugeMetricFamily("monitor_outbox_depth",
                                  "Deliveries not yet delivered or dead, by channel and state",
                                  labels=["channel", "state"])
        for (channel, state), count in sorted(outbox.items()):
            depth.add_metric([channel, state], count)
        yield depth
        yield GaugeMetricFamily("monitor_stories", "Stories stored", value=stories)
        yield GaugeMetricFamily("monitor_articles", "Articles stored", value=articles)

    def _read(self) -> tuple[dict[str, int], dict[tuple[str, str], int], int, int]:
        names = list(self.feed_names())
        with self.db.session() as session:
            feeds = dict(session.execute(
                select(Feed.state, func.count()).where(Feed.name.in_(names))
                .group_by(Feed.state)).all())
            feeds["new"] = feeds.get("new", 0) + len(names) - sum(feeds.values())
            outbox = {(c, s): n for c, s, n in session.execute(
                select(Delivery.channel, Delivery.state, func.count())
                .where(Delivery.state.in_(OPEN_DELIVERY_STATES))
                .group_by(Delivery.channel, Delivery.state))}
            stories = session.scalar(select(func.count()).select_from(Story)) or 0
            articles = session.scalar(select(func.count()).select_from(Article)) or 0
        return feeds, outbox, stories, articles


def build_registry(db: Database, feed_names: Callable[[], Iterable[str]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    for metric in _MODULE_METRICS:
        registry.register(metric)
    registry.register(DatabaseCollector(db, feed_names))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format; runs database queries, so call it from a thread."""
    return generate_latest(registry)
