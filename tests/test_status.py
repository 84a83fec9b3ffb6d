"""`monitor status`: JSON after real polls, and a table that Persian names cannot scramble."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.alerts.outbox import set_channel_state
from monitor.status import FSI, PDI, display_width, isolate, table
from monitor.store.database import Database
from tests.conftest import write_config
from tests.running import run_cli
from tests.servers import FeedServer, WebhookReceiver, rss
from tests.test_end_to_end import MATCHING, NOT_MATCHING

GOOD, BAD = "خبرگزاری ایرنا", "bad-feed"


def test_status_json_after_polls_with_a_good_and_a_failing_feed(
    tmp_path: Path, db_url: str, feed_server: FeedServer, webhook_receiver: WebhookReceiver,
) -> None:
    good = feed_server.set_feed("/good.xml", rss([MATCHING, NOT_MATCHING]))
    bad = feed_server.set_feed("/bad.xml", "busy", status=503)
    config = write_config(
        tmp_path / "monitor.yaml", db_url,
        feeds=[{"name": GOOD, "url": good}, {"name": BAD, "url": bad},
               {"name": "off", "url": good, "enabled": False}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["hook"]},
                 {"name": "quiet", "any": ["never-mentioned"], "channels": ["hook"]}],
        channels=[{"name": "hook", "type": "webhook", "url": webhook_receiver.url("/hook")},
                  {"name": "mail", "type": "email", "host": "127.0.0.1", "port": 1,
                   "starttls": True, "from": "m@example.org", "to": ["d@example.org"],
                   "username_env": "STATUS_TEST_UNSET_USER",
                   "password_env": "STATUS_TEST_UNSET_PASSWORD"}])
    started = datetime.now(UTC)
    for _ in range(3):  # three consecutive errors make a feed "failing"
        run_cli(config, "poll")

    status = json.loads(run_cli(config, "status", "--json"))
    feeds = {f["name"]: f for f in status["feeds"]}
    assert feeds[GOOD]["state"] == "ok"
    assert feeds[GOOD]["items_24h"] == 2
    assert feeds[GOOD]["last_error"] is None
    assert datetime.fromisoformat(feeds[GOOD]["last_success"]) >= started
    assert datetime.fromisoformat(feeds[GOOD]["next_check"]) > started
    assert feeds[BAD]["state"] == "failing"
    assert feeds[BAD]["error_count"] == 3
    assert "503" in feeds[BAD]["last_error"]
    assert feeds[BAD]["last_success"] is None
    assert feeds[BAD]["items_24h"] == 0
    assert feeds["off"]["state"] == "disabled" and feeds["off"]["next_check"] is None
    watches = {w["name"]: w for w in status["watches"]}
    assert watches["oic"]["alerts_24h"] == 1 and watches["oic"]["last_alert"] is not None
    assert watches["quiet"] == {"name": "quiet", "alerts_24h": 0, "last_alert": None}
    channels = {c["name"]: c for c in status["channels"]}
    assert channels["hook"]["status"] == "active"
    assert channels["hook"]["delivered_24h"] == 1
    assert channels["hook"]["pending"] == channels["hook"]["failed"] == 0
    assert datetime.fromisoformat(channels["hook"]["last_success"]) >= started
    assert channels["mail"]["status"].startswith("inactive (set STATUS_TEST_UNSET_USER")

    text = run_cli(config, "status")
    assert f"{FSI}{GOOD}{PDI}" in text
    assert "failing" in text and "HTTP 503" in text

    # What the daemon decided at run time shows too: a channel it paused, and why.
    db = Database(db_url)
    with db.session() as session:
        set_channel_state(session, "hook", "paused", "SMTP 535 bad credentials",
                          datetime.now(UTC))
    db.dispose()
    channels = {c["name"]: c for c in json.loads(run_cli(config, "status", "--json"))["channels"]}
    assert channels["hook"]["status"] == "paused: SMTP 535 bad credentials"


def _columns(line: str, cells: list[str]) -> list[int]:
    """The display column where each cell starts in a rendered line."""
    starts, position = [], 0
    for cell in cells:
        index = line.index(cell, position)
        starts.append(display_width(line[:index]))
        position = index + len(cell)
    return starts


def test_table_columns_stay_aligned_with_persian_cells() -> None:
    headers = ["name", "state", "last error", "items"]
    rows = [
        ["خبرگزاری ایرنا", "ok", "-", "12"],
        ["همشهری‌آنلاین", "failing", "HTTP 503 سرویس در دسترس نیست", "0"],  # ZWNJ
        ["سازمانِ همکاری", "ok", "-", "3"],  # a diacritic takes no column
        ["bbc-persian", "gone", "HTTP 410 Gone", "0"],
        ["新闻", "ok", "-", "1"],  # wide letters take two columns
    ]
    lines = table(headers, rows)
    rendered = [[isolate(c) for c in row] for row in [headers, *rows]]
    expected = _columns(lines[0], headers)
    for line, cells in zip(lines, rendered, strict=True):
        assert _columns(line, cells) == expected, line
    # No right-to-left letter outside an isolate: the terminal cannot pull it across a column.
    for line in lines:
        depth = 0
        for char in line:
            depth += (char == FSI) - (char == PDI)
            if unicodedata.bidirectional(char) in ("R", "AL"):
                assert depth == 1, line
        assert depth == 0


@pytest.mark.parametrize(("text", "width"), [
    ("abc", 3), ("خانه‌ها", 6), ("سازمانِ", 6), (f"{FSI}ایران{PDI}", 5), ("新闻", 4), ("", 0),
])
def test_display_width(text: str, width: int) -> None:
    assert display_width(text) == width
