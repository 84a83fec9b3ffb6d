"""Readable alerts: right-to-left Persian email with both calendars, highlighted terms and
isolated Latin words; digests; chat payloads. All pure rendering, no network."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from monitor.alerts.message import AlertMessage, ArticleView, Digest
from monitor.alerts.render import (
    email_message,
    rich_text_html,
    telegram_payload,
    term_spans,
    webhook_payload,
)

PUBLISHED = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)  # 11:30 in Tehran, 1 Azar 1405


def _alert(title: str = "دیدار دبیرکل سازمان همكاري اسلامي (OIC) با وزیر خارجه",
           summary: str = "دبیرکل سازمان همکاری‌ اسلامی امروز در جده بود.",
           matched: tuple[str, ...] = ("سازمان همکاری اسلامی", "OIC"), n: int = 1,
           language: str | None = "fa") -> AlertMessage:
    return AlertMessage(
        delivery_id=n, message_id=f"msg_{n}", channel="mail", watch="oic", kind="new",
        matched=matched,
        article=ArticleView(id=n, title=title, link=f"https://www.irna.ir/news/{n}",
                            summary=summary, published=PUBLISHED, feed="irna",
                            language=language),
        created_at=PUBLISHED, story_id=n, other_sources=("isna", "mehr"))


def _parts(message) -> tuple[str, str]:
    email = email_message(message, "monitor@example.org", ["desk@example.org"], PUBLISHED)
    return (email.get_body(("html",)).get_content(), email.get_body(("plain",)).get_content())


def test_persian_email_is_rtl_with_both_calendars_and_highlights() -> None:
    html, text = _parts(_alert())
    assert '<html lang="fa" dir="rtl">' in html
    assert "Vazirmatn" in html and "Tahoma" in html
    # The term was matched on letter-folded text (Arabic yeh/kaf in the title); the
    # highlight finds the same words in the publisher's spelling.
    assert '<mark style="background:#fff3a3">سازمان همكاري اسلامي</mark>' in html
    assert '<mark style="background:#fff3a3"><bdi>OIC</bdi></mark>' in html
    # Across a stray ZWNJ in the summary too.
    assert "<mark style=\"background:#fff3a3\">سازمان همکاری\u200c اسلامی</mark>" in html
    assert "۱ آذر ۱۴۰۵، ۱۱:۳۰" in html and "2026-11-22 11:30 Tehran" in html
    assert 'href="https://www.irna.ir/news/1"' in html
    assert "<bdi>isna</bdi>" in html and "<bdi>irna</bdi>" in html and "پایش" in html
    # The plain-text part says the same without markup.
    assert "<" not in text.replace("<bdi>", "")
    assert "۱ آذر ۱۴۰۵" in text and "2026-11-22 11:30 Tehran" in text
    assert "https://www.irna.ir/news/1" in text and "isna, mehr" in text


def test_feed_markup_is_escaped_before_highlighting() -> None:
    out = rich_text_html('<b onclick="x()">سازمان همکاری اسلامی</b> & AT&T',
                         ["سازمان همکاری اسلامی", "AT&T"], rtl=True)
    assert out.startswith("&lt;<bdi>b onclick</bdi>=&quot;<bdi>x</bdi>()&quot;&gt;<mark")
    assert '<mark style="background:#fff3a3">سازمان همکاری اسلامی</mark>&lt;/' in out
    assert '<mark style="background:#fff3a3"><bdi>AT&amp;T</bdi></mark>' in out
    # A term that is itself markup-like is still only text.
    assert "<script" not in rich_text_html("x <script>", ["<script>"], rtl=False)


def test_term_spans_follow_the_matcher() -> None:
    text = "اجلاس سازمانِ همکاریِ اسلامی و سازمان همکاریهای اسلامی؛ OICA نه"
    spans = [text[a:b] for a, b in term_spans(text, ["سازمان همکاری+ اسلامی", "OIC"])]
    assert spans == ["سازمانِ همکاریِ اسلامی", "سازمان همکاریهای اسلامی"]
    # Without '+' (the term syntax of monitor.text.match) the suffixed form is not the term.
    spans = [text[a:b] for a, b in term_spans(text, ["سازمان همکاری اسلامی"])]
    assert spans == ["سازمانِ همکاریِ اسلامی"]


def test_latin_alert_is_ltr_without_bdi() -> None:
    alert = _alert("OIC summit opens in Jeddah", "Ministers of the OIC met.", ("OIC",),
                   language="en")
    html, _ = _parts(alert)
    assert 'dir="ltr"' in html and 'dir="rtl"' not in html
    assert '<mark style="background:#fff3a3">OIC</mark> summit' in html
    assert "Watch" in html and "1 آذر" not in html


def test_digest_email_and_webhook() -> None:
    alerts = tuple(_alert(f"خبر {n} درباره سازمان همکاری اسلامی", n=n) for n in range(1, 4))
    digest = Digest(message_id="dig_1", channel="mail", alerts=alerts, created_at=PUBLISHED)
    email = email_message(digest, "monitor@example.org", ["desk@example.org"], PUBLISHED)
    assert email["Subject"] == "[monitor] 3 alerts (oic)"
    assert email["Message-ID"] == "<dig_1@example.org>"
    html = email.get_body(("html",)).get_content()
    assert all(f"خبر {n}" in html for n in range(1, 4))
    payload = webhook_payload(digest)
    assert payload["type"] == "monitor.digest" and payload["data"]["count"] == 3
    assert [a["id"] for a in payload["data"]["alerts"]] == ["msg_1", "msg_2", "msg_3"]


def test_telegram_digest_stays_within_its_limit() -> None:
    long = _alert(summary="متن " * 2000)
    alerts = tuple(dataclasses.replace(long, message_id=f"m{n}") for n in range(30))
    body = telegram_payload(Digest("dig_x", "tg", alerts, PUBLISHED), "-100")
    assert len(body["text"]) <= 4096 and body["text"].count("<b>") == body["text"].count("</b>")
