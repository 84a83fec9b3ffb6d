"""Three loopback agencies publish one story with variations: one alert per watch, and
`monitor stories` shows one story told by three sources."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from monitor.cli import main
from tests.conftest import WEBHOOK_SECRET, write_config
from tests.servers import FeedServer, SmtpServer, WebhookReceiver, rss

OPENING = {
    "title": "آغاز نشست وزیران خارجه سازمان همکاری اسلامی در استانبول",
    "link": "https://irna.example/news/501",
    "description": "نشست فوق العاده وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی صبح "
                   "امروز با سخنرانی وزیر خارجه ترکیه در استانبول آغاز شد.",
    "guid": "irna-501",
}
# Another headline, Arabic yeh and kaf, «فوق‌العاده» with a ZWNJ, its own opening formula,
# a tracking parameter.
OPENING_ISNA = {
    "title": "نشست وزرای خارجه کشورهای اسلامی در استانبول آغاز به کار کرد",
    "link": "https://isna.example/news/77?utm_source=telegram",
    "description": "به گزارش ایسنا، نشست فوق‌العاده وزيران امور خارجه كشورهاي عضو سازمان "
                   "همكاري اسلامي صبح امروز با سخنراني وزير خارجه تركيه در استانبول آغاز شد.",
    "guid": "isna-77",
}
# A sentence added, and the full text sent along.
OPENING_MEHR = {
    "title": "آغاز نشست وزیران خارجه سازمان همکاری اسلامی در استانبول",
    "link": "https://mehr.example/news/9",
    "description": "نشست فوق العاده وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی صبح "
                   "امروز با سخنرانی وزیر خارجه ترکیه در استانبول آغاز شد. این نشست تا فردا "
                   "ادامه دارد.",
    "guid": "mehr-9",
}
# The same meeting's closing: another story.
CLOSING = {
    "title": "پایان نشست وزیران خارجه سازمان همکاری اسلامی در استانبول با صدور بیانیه",
    "link": "https://mehr.example/news/10",
    "description": "نشست دو روزه وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی عصر امروز "
                   "با صدور بیانیه پایانی در استانبول به کار خود پایان داد.",
    "guid": "mehr-10",
}


def _run(config: Path, *args: str) -> str:
    out = io.StringIO()
    assert main(["--config", str(config), *args], out=out) == 0
    return out.getvalue()


def test_three_agencies_one_story_one_alert_per_watch(
    tmp_path: Path, db_url: str, webhook_receiver: WebhookReceiver, smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    servers = [FeedServer().start() for _ in range(3)]
    try:
        feeds = [
            {"name": name, "url": server.set_feed("/rss", rss(items)), "interval": 1}
            for name, server, items in (("irna", servers[0], [OPENING]),
                                        ("isna", servers[1], [OPENING_ISNA]),
                                        ("mehr", servers[2], [OPENING_MEHR, CLOSING]))]
        config = write_config(
            tmp_path / "monitor.yaml", db_url, feeds=feeds,
            watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["hook"]},
                     {"name": "istanbul", "any": ["استانبول"], "channels": ["mail"]}],
            channels=[{"name": "hook", "type": "webhook", "url": webhook_receiver.url("/h"),
                       "secret_env": "MONITOR_WEBHOOK_SECRET"},
                      {"name": "mail", "type": "email", "host": "127.0.0.1",
                       "port": smtp_server.port, "from": "monitor@example.org",
                       "to": ["desk@example.org"]}])
        _run(config, "poll")
        _run(config, "poll")  # nothing new, nothing re-sent
    finally:
        for server in servers:
            server.stop()

    # Two stories (opening, closing), each alerting once per watch.
    payloads = [Webhook(WEBHOOK_SECRET).verify(p.body, p.headers)["data"]
                for p in webhook_receiver.posts]
    assert len(payloads) == 2 and len(smtp_server.messages) == 2
    [closing] = [p for p in payloads if p["article"]["title"] == CLOSING["title"]]
    [opening] = [p for p in payloads if p is not closing]
    assert closing["article"]["story"] != opening["article"]["story"]
    assert closing["other_sources"] == []
    # The copies were stored before the alert was sent, so it names them.
    assert len(opening["other_sources"]) == 2
    assert {opening["article"]["feed"], *opening["other_sources"]} == {"irna", "isna", "mehr"}
    mail_bodies = [m.get_body(("plain",)).get_content() for _, _, m in smtp_server.messages]
    # The email about the opening names both other agencies; the closing's names none.
    assert sum(all(source in body for source in opening["other_sources"])
               for body in mail_bodies) == 1

    stories = [json.loads(line) for line in _run(config, "stories", "--json").splitlines()]
    told = [s for s in stories if not s["baseline"]]
    assert len(told) == 2
    [story] = [s for s in told if len(s["articles"]) > 1]
    assert sorted(story["sources"]) == ["irna", "isna", "mehr"]
    assert len(story["articles"]) == 3
    text = _run(config, "stories", "--limit", "2")
    assert f"story {story['id']}:" in text and "3 article(s)" in text

    exported = [json.loads(line) for line in _run(config, "export").splitlines()]
    by_link = {row["link"]: row for row in exported}
    assert (by_link[OPENING["link"]]["story"] == by_link[OPENING_ISNA["link"]]["story"]
            == by_link[OPENING_MEHR["link"]]["story"] != by_link[CLOSING["link"]]["story"])
