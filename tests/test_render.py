from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from monitor.alerts.message import AlertMessage, ArticleView
from monitor.alerts.render import email_message, webhook_payload


def _alert(title: str, summary: str = "خلاصه", link: str = "https://x.ir/1") -> AlertMessage:
    return AlertMessage(
        delivery_id=1, message_id="msg_abc", channel="mail", watch="oic", kind="new",
        matched=("سازمان همکاری اسلامی",),
        article=ArticleView(id=7, title=title, link=link, summary=summary,
                            published=datetime(2026, 11, 22, 8, tzinfo=UTC), feed="irna",
                            language="fa"),
        created_at=datetime(2026, 11, 22, 8, 1, tzinfo=UTC), story_id=3)


def test_webhook_payload_shape() -> None:
    payload = webhook_payload(_alert("عنوان"))
    assert payload["type"] == "monitor.alert"
    assert payload["timestamp"] == "2026-11-22T08:01:00Z"
    article = payload["data"]["article"]
    assert {"title", "link", "summary", "published", "feed"} <= set(article)
    assert article["published"] == "2026-11-22T08:00:00Z"


def test_header_injection_from_feed_title_is_defused() -> None:
    title = "خبر\r\nBcc: victim@example.org =?UTF-8?Q?=0A?=Bcc: x@y " + "ب" * 2000
    message = email_message(_alert(title), "monitor@example.org", ["desk@example.org"],
                            datetime.now(UTC))
    raw = message.as_bytes()
    header_block = raw.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in raw else raw.split(
        b"\n\n", 1)[0]
    header_names = [line.split(b":", 1)[0].lower() for line in header_block.splitlines()
                    if line and not line[:1].isspace()]
    assert b"bcc" not in header_names
    assert header_names.count(b"subject") == 1
    assert len(str(message["Subject"])) <= 200


def test_html_is_escaped_and_rtl() -> None:
    message = email_message(_alert("<script>alert(1)</script>سازمان",
                                   summary='<img src=x onerror="alert(1)">',
                                   link="javascript:alert(1)"),
                            "monitor@example.org", ["desk@example.org"], datetime.now(UTC))
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img" not in html
    assert "javascript:" not in html
    assert 'dir="rtl"' in html
    text = message.get_body(("plain",)).get_content()
    assert "سازمان" in text


def test_latin_article_is_left_to_right() -> None:
    alert = _alert("OIC summit opens in Jeddah", summary="Ministers of the OIC met today.")
    alert = dataclasses.replace(alert, article=dataclasses.replace(alert.article, language="en"))
    html = email_message(alert, "m@example.org", ["d@example.org"], datetime.now(UTC)) \
        .get_body(("html",)).get_content()
    assert 'dir="ltr"' in html and 'dir="rtl"' not in html
