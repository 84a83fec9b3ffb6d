"""Alert payloads and email bodies. Pure: feed text is data, escaped wherever it lands."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from monitor.alerts.message import AlertMessage
from monitor.text.normalize import is_right_to_left

# Control characters (CR, LF, tabs, NUL...) and encoded-word openers must never reach a
# header from feed text: EmailMessage passes "=?UTF-8?Q?=0A?=Bcc: x@y" through as a raw line.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
MAX_SUBJECT = 200


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def article_payload(alert: AlertMessage) -> dict[str, Any]:
    a = alert.article
    return {
        "id": a.id,
        "title": a.title,
        "link": a.link,
        "summary": a.summary,
        "published": _iso(a.published),
        "feed": a.feed,
        "language": a.language,
        "story": alert.story_id,
    }


def webhook_payload(alert: AlertMessage) -> dict[str, Any]:
    return {
        "type": "monitor.alert",
        "timestamp": _iso(alert.created_at),
        "data": {
            "id": alert.message_id,
            "watch": alert.watch,
            "kind": alert.kind,
            "article": article_payload(alert),
            "matched": list(alert.matched),
            "spans": [span.as_dict() for span in alert.spans],
            "other_sources": list(alert.other_sources),
        },
    }


def header_safe(text: str, limit: int = MAX_SUBJECT) -> str:
    text = _HEADER_UNSAFE.sub(" ", text)
    text = text.replace("=?", "=\u200b?")  # defuse RFC 2047 encoded words
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def email_subject(alert: AlertMessage) -> str:
    prefix = "[monitor] " + ("update: " if alert.kind == "update" else "")
    return header_safe(f"{prefix}{alert.watch}: {alert.article.title or '(untitled)'}")


def email_text(alert: AlertMessage) -> str:
    a = alert.article
    lines = [a.title, "", a.summary, ""]
    if a.link:
        lines.append(a.link)
    lines += [
        "",
        f"Watch: {alert.watch}",
        f"Matched: {', '.join(alert.matched)}",
        f"Source: {a.feed}",
    ]
    if a.published:
        lines.append(f"Published: {_iso(a.published)}")
    if alert.other_sources:
        lines.append(f"Also reported by: {', '.join(alert.other_sources)}")
    return "\n".join(lines).strip() + "\n"


def email_html(alert: AlertMessage) -> str:
    a = alert.article
    e = html.escape
    # The language was judged at ingest on the whole text; re-guess only when it is unknown.
    rtl = a.language in ("fa", "ar") if a.language else is_right_to_left(
        f"{a.title} {a.summary}")
    direction = "rtl" if rtl else "ltr"
    align = "right" if rtl else "left"
    link = (f'<p><a href="{e(a.link, quote=True)}">{e(a.link)}</a></p>'
            if a.link and a.link.lower().startswith(("http://", "https://")) else "")
    others = (f"<p>Also reported by: {e(', '.join(alert.other_sources))}</p>"
              if alert.other_sources else "")
    published = f"<br>Published: {e(_iso(a.published) or '')}" if a.published else ""
    return (
        f'<!DOCTYPE html><html lang="{e(a.language or "")}" dir="{direction}">'
        '<head><meta charset="utf-8"></head>'
        f'<body dir="{direction}" style="text-align:{align};'
        "font-family:Vazirmatn,Tahoma,'Segoe UI',Arial,sans-serif\">"
        f"<h2>{e(a.title or '(untitled)')}</h2>"
        f"<p>{e(a.summary)}</p>{link}"
        f'<p dir="ltr" style="color:#555">Watch: <bdi>{e(alert.watch)}</bdi><br>'
        f"Matched: <bdi>{e(', '.join(alert.matched))}</bdi><br>"
        f"Source: <bdi>{e(a.feed)}</bdi>{published}</p>{others}"
        "</body></html>"
    )


def email_message(alert: AlertMessage, sender: str, recipients: list[str],
                  now: datetime) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = email_subject(alert)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(now)
    # The same Message-ID on every retry lets the receiving side drop a repeat.
    domain = sender.rpartition("@")[2] or "monitor.local"
    message["Message-ID"] = f"<{alert.message_id}@{header_safe(domain, 100)}>"
    message["X-Monitor-Watch"] = header_safe(alert.watch, 100)
    message.set_content(email_text(alert))
    message.add_alternative(email_html(alert), subtype="html")
    return message
