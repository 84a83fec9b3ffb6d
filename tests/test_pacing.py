"""Digest mode, quiet hours and rate limits, driven by a hand-moved clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from monitor.alerts.outbox import RetryPolicy
from monitor.alerts.pacing import in_quiet_hours, next_digest_time
from monitor.config import DigestConfig, QuietHoursConfig
from tests.alert_servers import FakeClock, Reply, ScriptedWebhook
from tests.delivery_harness import Harness

TEHRAN = ZoneInfo("Asia/Tehran")


def tehran(hour: int, minute: int = 0, day: int = 22) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=TEHRAN).astimezone(UTC)


@pytest.fixture
def receiver() -> Iterator[ScriptedWebhook]:
    server = ScriptedWebhook().start()
    yield server
    server.stop()


def _harness(db_url: str, receiver: ScriptedWebhook, start: datetime,
             **channel: Any) -> Harness:
    return Harness(db_url, [{"name": "hook", "type": "webhook", "url": receiver.url("/hook"),
                             **channel}], clock=FakeClock(start))


def _bodies(receiver: ScriptedWebhook) -> list[dict[str, Any]]:
    return [json.loads(p.body) for p in receiver.posts]


def test_quiet_hours_hold_alerts_then_send_one_digest(db_url: str,
                                                      receiver: ScriptedWebhook) -> None:
    h = _harness(db_url, receiver, tehran(23, 30),
                 quiet_hours={"start": "23:00", "end": "07:00"})
    h.queue(3)
    h.deliver()
    assert receiver.posts == [] and h.states() == ["held"] * 3
    h.clock.now = tehran(4, 0, day=23)
    h.queue(1)
    h.deliver()
    h.clock.now = tehran(6, 59, day=23)
    h.deliver()
    assert receiver.posts == []
    h.clock.now = tehran(7, 0, day=23)
    h.deliver()
    [digest] = _bodies(receiver)
    assert digest["type"] == "monitor.digest" and digest["data"]["count"] == 4
    assert h.states() == ["delivered"] * 4
    # After quiet hours alerts go out one by one again.
    h.queue(1)
    h.deliver()
    assert _bodies(receiver)[-1]["type"] == "monitor.alert"
    h.clock.advance(days=1)
    h.deliver()
    assert len(receiver.posts) == 2
    h.close()


def test_digest_mode_sends_at_its_schedule(sqlite_url: str, receiver: ScriptedWebhook) -> None:
    h = _harness(sqlite_url, receiver, tehran(10, 5), mode="digest",
                 digest={"every": "30m"})
    h.queue(2)
    h.deliver()
    h.clock.now = tehran(10, 29)
    h.queue(1)
    h.deliver()
    assert receiver.posts == []
    h.clock.now = tehran(10, 30)
    h.deliver()
    [digest] = _bodies(receiver)
    assert digest["data"]["count"] == 3
    h.clock.now = tehran(10, 45)
    h.queue(1)
    h.deliver()
    assert len(receiver.posts) == 1
    h.clock.now = tehran(11, 0)
    h.deliver()
    assert len(receiver.posts) == 2
    # A digest of one alert is sent as that alert.
    assert _bodies(receiver)[-1]["type"] == "monitor.alert"
    h.close()


def test_digest_that_fails_is_retried_whole_with_the_same_id(
        sqlite_url: str, receiver: ScriptedWebhook) -> None:
    receiver.script = [Reply(500)]
    h = _harness(sqlite_url, receiver, tehran(7, 55), mode="digest",
                 digest={"at": ["08:00", "18:00"]})
    h.queue(3)
    h.deliver()
    h.clock.now = tehran(8, 0)
    h.deliver()
    assert h.states() == ["failed"] * 3
    h.until_next_attempt()
    h.deliver()
    assert h.states() == ["delivered"] * 3
    first, second = receiver.posts
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("dig_")
    h.close()


def test_rate_limit_folds_the_rest_into_the_next_digest(db_url: str,
                                                        receiver: ScriptedWebhook) -> None:
    start = tehran(12, 0)
    h = _harness(db_url, receiver, start, rate_limit=2)
    h.queue(5)
    h.deliver()
    assert [b["type"] for b in _bodies(receiver)] == ["monitor.alert"] * 2
    assert h.states().count("held") == 3
    h.clock.now = start + timedelta(minutes=30)
    h.queue(1)  # still over the limit: joins the held ones
    h.deliver()
    assert len(receiver.posts) == 2
    h.clock.now = start + timedelta(minutes=61)
    h.deliver()
    assert len(receiver.posts) == 3
    digest = _bodies(receiver)[-1]
    assert digest["type"] == "monitor.digest" and digest["data"]["count"] == 4
    assert h.states() == ["delivered"] * 6
    h.close()


def test_quiet_hours_and_digest_times_in_the_channel_zone() -> None:
    quiet = QuietHoursConfig(start=time(23), end=time(7))
    assert in_quiet_hours(quiet, tehran(23, 0), TEHRAN)
    assert in_quiet_hours(quiet, tehran(2, 0), TEHRAN)
    assert not in_quiet_hours(quiet, tehran(7, 0), TEHRAN)
    assert not in_quiet_hours(quiet, tehran(22, 59), TEHRAN)
    daytime = QuietHoursConfig(start=time(13), end=time(14))
    assert in_quiet_hours(daytime, tehran(13, 30), TEHRAN)
    assert not in_quiet_hours(daytime, tehran(14, 30), TEHRAN)

    every = DigestConfig(every=45 * 60)
    assert next_digest_time(every, tehran(10, 0), TEHRAN) == tehran(10, 30)
    assert next_digest_time(every, tehran(23, 50), TEHRAN) == tehran(0, 0, day=23)
    fixed = DigestConfig(at=[time(18), time(8)])
    assert next_digest_time(fixed, tehran(9, 0), TEHRAN) == tehran(18, 0)
    assert next_digest_time(fixed, tehran(18, 0), TEHRAN) == tehran(8, 0, day=23)


def test_retry_schedule_full_jitter_and_give_up() -> None:
    import random

    policy = RetryPolicy(delays=(5, 300), then=1800, give_up_after=86400)
    since = now = tehran(12, 0)
    rng = random.Random(7)
    waits = [(policy.next_attempt(n, since, now, rng=rng) - now).total_seconds()
             for n in (1, 2, 3, 9) for _ in range(200)]
    assert min(waits[:200]) >= 0 and max(waits[:200]) <= 5
    assert max(waits[200:400]) <= 300 and max(waits[200:400]) > 150  # spread, not fixed
    assert max(waits[400:]) <= 1800
    assert policy.next_attempt(3, since, now, retry_after=7200, rng=rng) == now + timedelta(
        hours=2)
    assert policy.next_attempt(50, since, since + timedelta(hours=2), rng=rng) is not None
    assert policy.next_attempt(50, since, since + timedelta(hours=24), retry_after=1) is None
