"""A slow channel delays only its own alerts: the daemon sends each channel's batch apart."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from monitor.store.models import Delivery
from tests.conftest import write_config
from tests.running import daemon_in_loop, eventually
from tests.servers import FeedServer, WebhookReceiver, rss
from tests.test_end_to_end import MATCHING

SECOND = {
    "title": "نشست وزیران خارجه سازمان همکاری اسلامی در اسلام آباد",
    "link": "https://news.example.ir/news/2001",
    "description": "وزیران خارجه کشورهای عضو سازمان همکاری اسلامی در اسلام آباد گرد آمدند.",
    "guid": "news-2001",
}


class HangingReceiver(WebhookReceiver):
    """Answers nothing until `answer` is set, like a server that accepted the connection
    and then hung."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = threading.Event()

    def respond(self, handler: Any, body: bytes) -> None:
        self.answer.wait(timeout=30)
        super().respond(handler, body)


def _states(db_url: str) -> dict[str, list[str]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Delivery.channel, Delivery.state).order_by(Delivery.id)).all()
    finally:
        engine.dispose()
    states: dict[str, list[str]] = {}
    for channel, state in rows:
        states.setdefault(channel, []).append(state)
    return states


def test_a_hanging_channel_does_not_hold_back_the_others(
    tmp_path: Path, db_url: str, feed_server: FeedServer,
) -> None:
    slow, fast = HangingReceiver().start(), WebhookReceiver().start()
    feed = feed_server.set_feed("/feed.xml", rss([MATCHING]))
    config = write_config(
        tmp_path / "monitor.yaml", db_url,
        scheduler={"tick": 0.2, "delivery_interval": 0.5, "shutdown_grace": 5},
        feeds=[{"name": "agency", "url": feed, "interval": 0.5}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"],
                  "channels": ["slow", "fast"]}],
        channels=[{"name": "slow", "type": "webhook", "url": slow.url("/hook"), "timeout": 20},
                  {"name": "fast", "type": "webhook", "url": fast.url("/hook")}])

    async def scenario() -> None:
        async with daemon_in_loop(config):
            assert await eventually(lambda: len(slow.posts) == 1 and len(fast.posts) == 1)
            # The slow server still holds the first alert; the fast channel's copy of it
            # is recorded, and a second alert reaches the fast channel at once.
            assert await eventually(lambda: _states(db_url).get("fast") == ["delivered"])
            feed_server.set_feed("/feed.xml", rss([SECOND, MATCHING]))
            assert await eventually(lambda: len(fast.posts) == 2, timeout=5)
            assert json.loads(fast.posts[1].body)["data"]["article"]["link"] == SECOND["link"]
            assert len(slow.posts) == 1 and not slow.answer.is_set()
            assert _states(db_url)["slow"] == ["delivering", "pending"]
            # Once the slow server answers, its queued alert follows.
            slow.answer.set()
            assert await eventually(lambda: len(slow.posts) == 2)
            assert await eventually(
                lambda: _states(db_url) == {"slow": ["delivered"] * 2,
                                            "fast": ["delivered"] * 2})

    try:
        asyncio.run(scenario())
    finally:
        slow.answer.set()
        slow.stop()
        fast.stop()
