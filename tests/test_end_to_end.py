"""Feeds in, alerts out: loopback feed server -> monitor -> signed webhook + email."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from monitor.cli import main
from monitor.text.normalize import display_text
from tests.conftest import ROOT, WEBHOOK_SECRET, write_config
from tests.servers import FeedServer, SmtpServer, WebhookReceiver, rss, wait_until

MATCHING = {
    "title": "دیدار دبیرکل سازمان همكاري اسلامي با وزیر خارجه",
    "link": "https://news.example.ir/news/1001?utm_source=rss",
    "description": "دبیرکل سازمان همکاری اسلامی امروز در جده با وزیر خارجه دیدار کرد.",
    "guid": "news-1001",
}
NOT_MATCHING = {
    "title": "پیش بینی هوای تهران برای فردا",
    "link": "https://news.example.ir/news/1002",
    "description": "هوای تهران فردا آفتابی خواهد بود.",
    "guid": "news-1002",
}
# A seed article republished by a feed, with the ZWNJs the seed text lost put back.
SEED_COPY = {
    "title": "نشست کارشناسان ارشد سازمان همکاری اسلامی در استانبول",
    "link": "https://news.example.ir/news/1003",
    "description": "اجلاس کارشناسان ارشد سازمان همکاری‌های اسلامی در استانبول ترکیه با حضور "
                   "روسای هیئت‌های کارشناسی کشورهای اسلامی در استانبول ترکیه آغاز به کار کرد.",
    "guid": "news-1003",
}


def _config(tmp_path: Path, db_url: str, feed_url: str, webhook_url: str,
            smtp_port: int) -> Path:
    return write_config(
        tmp_path / "monitor.yaml", db_url,
        feeds=[{"name": "agency", "url": feed_url, "interval": 1}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی", "OIC"],
                  "channels": ["hook", "mail"]}],
        channels=[
            {"name": "hook", "type": "webhook", "url": webhook_url,
             "secret_env": "MONITOR_WEBHOOK_SECRET"},
            {"name": "mail", "type": "email", "host": "127.0.0.1", "port": smtp_port,
             "from": "monitor@example.org", "to": ["desk@example.org"]},
        ],
    )


def _poll(config: Path) -> str:
    out = io.StringIO()
    assert main(["--config", str(config), "poll"], out=out) == 0
    return out.getvalue()


def _export(config: Path) -> list[dict]:
    out = io.StringIO()
    assert main(["--config", str(config), "export"], out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_poll_delivers_each_alert_once(
    tmp_path: Path, db_url: str, feed_server: FeedServer, webhook_receiver: WebhookReceiver,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    feed_url = feed_server.set_feed("/feed.xml", rss([MATCHING, NOT_MATCHING, SEED_COPY]))
    config = _config(tmp_path, db_url, feed_url, webhook_receiver.url("/hook"),
                     smtp_server.port)

    _poll(config)

    # Exactly one signed webhook, for the matching item.
    assert len(webhook_receiver.posts) == 1
    post = webhook_receiver.posts[0]
    payload = Webhook(WEBHOOK_SECRET).verify(post.body, post.headers)
    assert payload["type"] == "monitor.alert"
    assert payload["data"]["watch"] == "oic"
    # The title as displayed: hazm tidied the Arabic yeh/kaf into Persian letters.
    title = display_text(MATCHING["title"])
    assert title == "دیدار دبیرکل سازمان همکاری اسلامی با وزیر خارجه"
    assert payload["data"]["article"]["title"] == title
    assert payload["data"]["article"]["link"] == MATCHING["link"]
    assert payload["data"]["article"]["feed"] == "agency"
    assert payload["data"]["matched"] == ["سازمان همکاری اسلامی"]
    # Where: the term's span in the title and in the summary, pointing into the shown text.
    spans = payload["data"]["spans"]
    assert {s["field"] for s in spans} == {"title", "summary"}
    for span in spans:
        shown = payload["data"]["article"][span["field"]]
        assert shown[span["start"]:span["end"]] == span["text"] == "سازمان همکاری اسلامی"
        assert span["term"] == "سازمان همکاری اسلامی"
    # Exactly one email, to the configured recipient, right-to-left.
    assert len(smtp_server.messages) == 1
    _, recipients, message = smtp_server.messages[0]
    assert recipients == ["desk@example.org"]
    assert title in message["Subject"]
    html = message.get_body(("html",)).get_content()
    assert 'dir="rtl"' in html

    # The next poll, and a fresh process (a restart), deliver nothing more.
    _poll(config)
    _poll(config)
    assert len(webhook_receiver.posts) == 1
    assert len(smtp_server.messages) == 1

    rows = {r["title"]: r for r in _export(config)}
    assert rows[title]["watches"] == ["oic"]
    assert rows[title]["baseline"] is False
    assert rows[title]["matched"] == {"oic": ["سازمان همکاری اسلامی"]}
    assert [s["text"] for s in rows[title]["spans"]["oic"]] == ["سازمان همکاری اسلامی"] * 2
    assert rows[display_text(NOT_MATCHING["title"])]["watches"] == []
    # The seed copy was recognised as a copy of the known baseline article: it is stored as
    # the feed's article in the seed's (baseline) story, and did not alert.
    seed_title = display_text(SEED_COPY["title"])
    seed_rows = [r for r in _export(config) if r["title"] == seed_title]
    assert [r["feed"].startswith("seed:") for r in seed_rows] == [True, False]
    assert all(r["baseline"] for r in seed_rows)
    assert seed_rows[0]["story"] == seed_rows[1]["story"]
    assert set(rows[title]) >= {"id", "feed", "link", "title", "summary",
                                            "published", "fetched", "baseline", "watches"}


def test_new_item_after_first_poll_alerts_and_webhook_id_is_stable(
    tmp_path: Path, sqlite_url: str, feed_server: FeedServer,
    webhook_receiver: WebhookReceiver, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    feed_url = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    webhook_receiver.statuses = [500]  # the first attempt fails, the retry succeeds
    config = _config(tmp_path, sqlite_url, feed_url, webhook_receiver.url("/hook"),
                     smtp_server.port)
    _poll(config)
    assert webhook_receiver.posts == []

    feed_server.set_feed("/feed.xml", rss([MATCHING, NOT_MATCHING]))
    _poll(config)
    assert len(webhook_receiver.posts) == 1  # answered 500: stays queued
    assert len(smtp_server.messages) == 1

    # The failed delivery waits for its retry time; make it due now, as time would.
    from sqlalchemy import create_engine, text
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET next_attempt_at = '2000-01-01 00:00:00' "
                          "WHERE state = 'failed'"))
    engine.dispose()
    _poll(config)
    assert len(webhook_receiver.posts) == 2
    first, second = webhook_receiver.posts
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(WEBHOOK_SECRET).verify(second.body, second.headers)
    _poll(config)
    assert len(webhook_receiver.posts) == 2
    assert len(smtp_server.messages) == 1


def test_config_error_names_yaml_path_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    config = write_config(tmp_path / "bad.yaml", f"sqlite:///{db}",
                          feeds=[{"name": "a", "url": "http://127.0.0.1:1/a"},
                                 {"name": "b", "url": "http://127.0.0.1:1/b"},
                                 {"name": "c", "url": "file:///etc/passwd"}])
    result = subprocess.run([sys.executable, "-m", "monitor", "--config", str(config), "poll"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "feeds[2].url" in result.stderr
    assert not db.exists()


@pytest.mark.slow
def test_daemon_alerts_within_seconds_and_stops_on_sigterm(
    tmp_path: Path, db_url: str, feed_server: FeedServer, webhook_receiver: WebhookReceiver,
    smtp_server: SmtpServer,
) -> None:
    feed_url = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    config = _config(tmp_path, db_url, feed_url, webhook_receiver.url("/hook"),
                     smtp_server.port)
    # Plus a feed that cannot be reached: it must be reported, not fatal.
    text = config.read_text(encoding="utf-8").replace(
        "feeds:\n", "feeds:\n- {name: unreachable, url: 'http://127.0.0.1:9/rss', interval: 1}\n")
    config.write_text(text, encoding="utf-8")
    env = {**os.environ, "MONITOR_WEBHOOK_SECRET": WEBHOOK_SECRET}
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config),
                                   "run"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        assert wait_until(lambda: feed_server.hits("/feed.xml") >= 1, timeout=30)
        feed_server.set_feed("/feed.xml", rss([MATCHING, NOT_MATCHING]))
        published = time.monotonic()
        assert wait_until(lambda: len(webhook_receiver.posts) == 1, timeout=15)
        assert time.monotonic() - published < 10
        assert wait_until(lambda: len(smtp_server.messages) == 1, timeout=10)
        daemon.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        daemon.wait(timeout=10)
        assert time.monotonic() - stopped < 10
        assert daemon.returncode == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    output = log_path.read_text()
    assert "feed unreachable: connection failed" in output
    assert "monitor stopped" in output
    assert WEBHOOK_SECRET not in output
    Webhook(WEBHOOK_SECRET).verify(webhook_receiver.posts[0].body,
                                   webhook_receiver.posts[0].headers)
