"""Webhook delivery against real loopback receivers that fail, redirect, vanish, throttle,
hang and trickle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from standardwebhooks import Webhook

from monitor.alerts.channels.webhook import parse_retry_after
from tests.alert_servers import FakeClock, Reply, ScriptedWebhook
from tests.conftest import WEBHOOK_SECRET
from tests.delivery_harness import Harness


@pytest.fixture
def receiver() -> Iterator[ScriptedWebhook]:
    server = ScriptedWebhook().start()
    yield server
    server.stop()


def _hook(receiver: ScriptedWebhook, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": receiver.url("/hook"),
            "secret_env": "MONITOR_WEBHOOK_SECRET", **extra}


@pytest.fixture
def harness(sqlite_url: str, receiver: ScriptedWebhook) -> Iterator[Harness]:
    h = Harness(sqlite_url, [_hook(receiver, timeout=1)])
    yield h
    h.close()


def test_fails_twice_then_succeeds_with_the_same_id(harness: Harness,
                                                    receiver: ScriptedWebhook) -> None:
    receiver.script = [Reply(500), Reply(502)]
    harness.queue()
    first = harness.clock()
    assert harness.deliver().failed == 1
    [row] = harness.rows()
    # Full jitter within the first step of the default schedule (5 s).
    assert row.state == "failed" and first <= row.next_attempt_at <= first + timedelta(seconds=5)
    assert harness.deliver().attempted == 0  # not due yet
    harness.until_next_attempt()
    second = harness.clock()
    assert harness.deliver().failed == 1
    [row] = harness.rows()
    assert second <= row.next_attempt_at <= second + timedelta(seconds=300)
    harness.until_next_attempt()
    assert harness.deliver().delivered == 1

    assert len(receiver.posts) == 3
    assert len(set(receiver.ids())) == 1
    for post in receiver.posts:
        Webhook(WEBHOOK_SECRET).verify(post.body, post.headers)
    [row] = harness.rows()
    assert (row.state, row.attempts, row.last_error) == ("delivered", 3, None)
    harness.clock.advance(days=5)
    assert harness.deliver().attempted == 0
    assert len(receiver.posts) == 3


def test_redirect_is_not_followed(harness: Harness, receiver: ScriptedWebhook) -> None:
    receiver.script = [Reply(301, {"location": receiver.url("/moved")})]
    harness.queue()
    harness.deliver()
    assert [r.path for r in receiver.requests] == ["/hook"]
    [row] = harness.rows()
    assert row.state == "failed"
    assert "301" in row.last_error and "/moved" in row.last_error


def test_410_disables_the_channel_across_restarts_until_resumed(
        db_url: str, receiver: ScriptedWebhook, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    receiver.script = [Reply(410)]
    # The CLI below uses the real clock, so this test does too.
    first = Harness(db_url, [_hook(receiver)], clock=FakeClock(datetime.now(UTC)))
    first.queue()
    first.deliver()
    assert first.channel_state("hook") == "disabled"
    assert "410" in caplog.text and "alerts resume hook" in caplog.text
    first.queue()
    first.clock.advance(hours=1)
    first.deliver()
    assert len(receiver.posts) == 1
    first.close()

    # A new process on the same database.
    restarted = Harness(db_url, [_hook(receiver)], clock=first.clock)
    restarted.clock.advance(hours=2)
    restarted.deliver()
    assert len(receiver.posts) == 1  # still disabled: nothing sent, nothing lost
    assert set(restarted.states()) <= {"failed", "pending"}
    # The 410 attempt does not count against the retry schedule.
    assert [r.attempts for r in restarted.rows()] == [0, 0]

    from monitor.cli import main
    config = restarted.config
    path = _write(tmp_path / "monitor.yaml", db_url, config)
    assert main(["--config", str(path), "alerts", "resume", "hook"]) == 0
    restarted.deliver()
    assert restarted.states() == ["delivered", "delivered"]
    assert len(receiver.posts) == 3
    restarted.close()


def _write(path: Path, db_url: str, config: Any) -> Path:
    """The harness's channels as a YAML file, for the CLI."""
    path.write_text(yaml.safe_dump({
        "database": {"url": db_url},
        "channels": [c.model_dump(by_alias=True, exclude_none=True, mode="json")
                     for c in config.channels]}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(harness: Harness, receiver: ScriptedWebhook,
                                         status: int) -> None:
    receiver.script = [Reply(status, {"retry-after": "120"})]
    harness.queue()
    now = harness.clock()
    harness.deliver()
    [row] = harness.rows()
    assert row.state == "failed"
    assert row.next_attempt_at >= now + timedelta(seconds=120)
    harness.clock.advance(seconds=119)
    harness.deliver()
    assert len(receiver.posts) == 1
    harness.until_next_attempt()
    harness.deliver()
    assert harness.states() == ["delivered"] and len(receiver.posts) == 2


def test_retry_after_http_date() -> None:
    now = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(minutes=10), usegmt=True)
    assert parse_retry_after(later, now) == 600
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0


@pytest.mark.parametrize("reply", [Reply(hang=40), Reply(200, trickle=0.3)],
                         ids=["hang", "trickle"])
def test_whole_attempt_has_one_deadline(harness: Harness, receiver: ScriptedWebhook,
                                        reply: Reply) -> None:
    receiver.script = [reply]
    harness.queue()
    started = time.monotonic()
    summary = harness.deliver()
    elapsed = time.monotonic() - started
    assert summary.failed == 1
    # timeout: 1 s for the whole attempt; a trickle of a byte every 0.3 s never trips a
    # per-read timeout, only the overall deadline.
    assert elapsed < 3
    [row] = harness.rows()
    assert row.state == "failed" and "within 1 s" in row.last_error


def test_schedule_spent_means_dead(sqlite_url: str, receiver: ScriptedWebhook) -> None:
    receiver.default = Reply(500)
    h = Harness(sqlite_url, [_hook(receiver, retry={"delays": [1, 2], "then": 5,
                                                    "give_up_after": 30})])
    h.queue()
    for _ in range(40):
        h.deliver()
        if h.states() == ["dead"]:
            break
        h.until_next_attempt()
    assert h.states() == ["dead"]
    [row] = h.rows()
    assert row.attempts >= 3 and row.last_error == "HTTP 500"
    # Every attempt fell inside the configured give-up window.
    assert h.clock() - row.released_at <= timedelta(seconds=30)
    h.close()


@pytest.mark.parametrize("fmt", ["slack", "discord", "telegram"])
def test_chat_formats_post_their_shapes(sqlite_url: str, receiver: ScriptedWebhook,
                                        fmt: str) -> None:
    import json

    extra: dict[str, Any] = {"format": fmt}
    if fmt == "telegram":
        extra["chat_id"] = "-1001"
    h = Harness(sqlite_url, [{"name": "hook", "type": "webhook", "url_env": "HOOK_URL",
                              **extra}], env={"HOOK_URL": receiver.url(f"/{fmt}")})
    h.queue(title="نشست <b>سازمان همکاری اسلامی</b> @everyone")
    h.deliver()
    [post] = receiver.posts
    body = json.loads(post.body)
    if fmt == "slack":
        assert "blocks" in body and "&lt;b&gt;" in body["blocks"][0]["text"]["text"]
    elif fmt == "discord":
        assert body["allowed_mentions"] == {"parse": []} and body["embeds"][0]["title"]
    else:
        assert body["chat_id"] == "-1001" and body["parse_mode"] == "HTML"
        assert "&lt;b&gt;" in body["text"] and "<b>" in body["text"]
    assert h.states() == ["delivered"]
    h.close()
