"""A Monitor wired for delivery tests: a real database, real channels, a hand-moved clock,
and one event loop for the whole test (httpx clients belong to the loop that made them)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from monitor.alerts.message import DeliveryResult
from monitor.articles import prepare
from monitor.config import Secrets, parse_config
from monitor.parse import Entry
from monitor.service import DeliverySummary, Monitor
from monitor.store.models import ChannelState, Delivery
from monitor.store.queries import store_candidates
from tests.alert_servers import FakeClock
from tests.conftest import WEBHOOK_SECRET

# 09:30 in Tehran (UTC+3:30): outside any quiet hours the tests configure.
START = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
_links = itertools.count(1)


def distinct_text(n: int) -> str:
    """A summary no other queued article shares, so each is a story of its own (near
    copies would join one story and alert once)."""
    letters = hashlib.sha256(str(n).encode()).digest()[:30]
    word = "".join(chr(0x0628 + b % 20) for b in letters)
    return f"متن خبر شماره {n}: " + " ".join(word[i:i + 5] for i in range(0, 30, 5))


class Harness:
    def __init__(self, db_url: str, channels: list[dict[str, Any]],
                 env: dict[str, str] | None = None, clock: FakeClock | None = None,
                 owner: str | None = None) -> None:
        self.config = parse_config({
            "database": {"url": db_url},
            "watches": [{"name": "oic", "any": ["سازمان همکاری اسلامی", "OIC"],
                         "case_sensitive": ["OIC"],
                         "channels": [c["name"] for c in channels]}],
            "channels": channels,
            "network": {"allow_private_networks": True},  # the receivers are on loopback
        }, env={})
        self.clock = clock or FakeClock(START)
        secrets = Secrets({"MONITOR_WEBHOOK_SECRET": WEBHOOK_SECRET, **(env or {})})
        self.monitor = Monitor(self.config, secrets, clock=self.clock)
        if owner:
            self.monitor.owner = owner
        self.monitor.db.migrate()
        self.monitor.open_channels()
        self.loop = asyncio.new_event_loop()

    def queue(self, count: int = 1, title: str = "دیدار دبیرکل سازمان همکاری اسلامی",
              summary: str = "") -> None:
        """Store `count` new matching articles; their deliveries are queued with them."""
        candidates = []
        for _ in range(count):
            n = next(_links)
            entry = Entry(key=f"k{n}", link=f"https://news.example.ir/{n}",
                          title=f"{title} {n}" if count > 1 else title,
                          summary=summary or distinct_text(n), content="",
                          published=self.clock())
            candidates.append(prepare(entry, "agency", self.monitor.matcher))
        with self.monitor.db.session() as session:
            store_candidates(session, feed_id=None, origin="agency", candidates=candidates,
                             channels_for=self.monitor.active_channels_for, now=self.clock())

    def deliver(self, limit: int = 200) -> DeliverySummary:
        return self.loop.run_until_complete(self.monitor.deliver(limit))

    def test_alert(self, channel: str) -> DeliveryResult:
        return self.loop.run_until_complete(self.monitor.test_alert(channel))

    def rows(self) -> list[Delivery]:
        with self.monitor.db.session() as session:
            return list(session.scalars(select(Delivery).order_by(Delivery.id)))

    def states(self) -> list[str]:
        return [r.state for r in self.rows()]

    def channel_state(self, name: str) -> str:
        with self.monitor.db.session() as session:
            row = session.get(ChannelState, name)
            return row.state if row else "active"

    def until_next_attempt(self) -> None:
        """Move the clock to the earliest retry time."""
        due = [r.next_attempt_at for r in self.rows() if r.state == "failed"]
        self.clock.now = max(self.clock.now, min(due))

    def close(self) -> None:
        self.loop.run_until_complete(self.monitor.close())
        self.loop.close()
