"""Alert payloads and email bodies. Pure: feed text is data, escaped wherever it lands.

There are no user templates: every string from a feed is inserted as escaped text (HTML,
Slack mrkdwn, Telegram HTML) or as a JSON string, never interpreted as markup or template.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import jdatetime

from monitor.alerts.message import AlertMessage, Digest, Outgoing
from monitor.text.match import locate_terms
from monitor.text.normalize import is_right_to_left

TEHRAN = ZoneInfo("Asia/Tehran")
# Control characters (CR, LF, tabs, NUL...) and encoded-word openers must never reach a
# header from feed text: EmailMessage passes "=?UTF-8?Q?=0A?=Bcc: x@y" through as a raw line.
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
MAX_SUBJECT = 200
# Fonts a Persian reader's mail client is likely to have, best first.
PERSIAN_FONTS = ("Vazirmatn, Vazir, Sahel, 'Noto Naskh Arabic', 'Noto Sans Arabic', Tahoma, "
                 "'Segoe UI', Arial, sans-serif")
LATIN_FONTS = "-apple-system, 'Segoe UI', Roboto, Arial, sans-serif"
# A run of Latin words (with digits and light punctuation inside): isolated with <bdi> so
# "OIC" or a URL does not scramble the right-to-left line around it.
_LATIN_RUN = re.compile(r"[A-Za-z\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f.,'’&:/@_\-]*"
                        r"(?:\s+[A-Za-z0-9\u00c0-\u024f][A-Za-z0-9\u00c0-\u024f.,'’&:/@_\-]*)*")
_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
_LABELS = {
    "rtl": {"watch": "پایش", "matched": "عبارت‌ها", "source": "منبع", "published": "انتشار",
            "others": "منابع دیگر", "link": "مشاهده خبر", "alerts": "هشدار",
            "untitled": "(بدون عنوان)"},
    "ltr": {"watch": "Watch", "matched": "Matched", "source": "Source",
            "published": "Published", "others": "Also reported by", "link": "Read the article",
            "alerts": "alerts", "untitled": "(untitled)"},
}
CHAT_DIGEST_ITEMS = 10  # chat services cap message sizes; the rest is summarised as "+N"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


# --- dates -----------------------------------------------------------------------------

def jalali_date(value: datetime) -> str:
    """Solar Hijri date and time in Tehran, Persian month names and digits."""
    local = jdatetime.datetime.fromgregorian(datetime=value.astimezone(TEHRAN), locale="fa_IR")
    return f"{local.day} {local.strftime('%B')} {local.year}، {local.strftime('%H:%M')}" \
        .translate(_PERSIAN_DIGITS)


def gregorian_date(value: datetime) -> str:
    return value.astimezone(TEHRAN).strftime("%Y-%m-%d %H:%M") + " Tehran"


def both_dates(value: datetime) -> str:
    return f"{jalali_date(value)} — {gregorian_date(value)}"


# --- highlighting ----------------------------------------------------------------------

def term_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """Where the matched terms occur in the display text, found by the matcher itself, as
    merged (start, end) offsets."""
    if not text or not terms:
        return []
    merged: list[tuple[int, int]] = []
    for span in sorted(locate_terms(text, terms), key=lambda s: (s.start, s.end)):
        if merged and span.start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(span.end, merged[-1][1]))
        else:
            merged.append((span.start, span.end))
    return merged


def _escape_isolating_latin(text: str, rtl: bool) -> str:
    if not rtl:
        return html.escape(text)
    out, last = [], 0
    for m in _LATIN_RUN.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        out.append(f"<bdi>{html.escape(m.group())}</bdi>")
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def rich_text_html(text: str, terms: Sequence[str], rtl: bool) -> str:
    """Feed text as safe HTML: every piece escaped first, then <mark> around the matched
    terms and <bdi> around Latin runs inserted between the escaped pieces."""
    out, last = [], 0
    for start, end in term_spans(text, terms):
        out.append(_escape_isolating_latin(text[last:start], rtl))
        out.append('<mark style="background:#fff3a3">'
                   f"{_escape_isolating_latin(text[start:end], rtl)}</mark>")
        last = end
    out.append(_escape_isolating_latin(text[last:], rtl))
    return "".join(out)


# --- shared pieces ---------------------------------------------------------------------

def is_rtl(alert: AlertMessage) -> bool:
    a = alert.article
    # The language was judged at ingest on the whole text; re-guess only when it is unknown.
    if a.language:
        return a.language in ("fa", "ar")
    return is_right_to_left(f"{a.title} {a.summary}")


def _safe_link(link: str | None) -> str | None:
    return link if link and link.lower().startswith(("http://", "https://")) else None


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


def _alert_data(alert: AlertMessage) -> dict[str, Any]:
    return {
        "id": alert.message_id,
        "watch": alert.watch,
        "kind": alert.kind,
        "article": article_payload(alert),
        "matched": list(alert.matched),
        "spans": [span.as_dict() for span in alert.spans],
        "other_sources": list(alert.other_sources),
    }


# --- webhook payloads ------------------------------------------------------------------

def webhook_payload(message: Outgoing) -> dict[str, Any]:
    """The JSON body for `format: json` (documented in README)."""
    if isinstance(message, Digest):
        return {
            "type": "monitor.digest",
            "timestamp": _iso(message.created_at),
            "data": {"id": message.message_id, "count": len(message.alerts),
                     "alerts": [_alert_data(a) for a in message.alerts]},
        }
    return {"type": "monitor.alert", "timestamp": _iso(message.created_at),
            "data": _alert_data(message)}


def _alerts_of(message: Outgoing) -> tuple[AlertMessage, ...]:
    return message.alerts if isinstance(message, Digest) else (message,)


def _digest_heading(message: Digest) -> str:
    watches = ", ".join(dict.fromkeys(a.watch for a in message.alerts))
    return f"monitor: {len(message.alerts)} alerts ({watches})"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(message: Outgoing) -> dict[str, Any]:
    alerts = _alerts_of(message)
    blocks: list[dict[str, Any]] = []
    if isinstance(message, Digest):
        blocks.append({"type": "header", "text": {"type": "plain_text",
                                                  "text": _clip(_digest_heading(message), 150)}})
    for alert in alerts[:CHAT_DIGEST_ITEMS]:
        a = alert.article
        title = _slack_escape(_clip(a.title or "(untitled)", 300))
        link = _safe_link(a.link)
        # "<" and "|" cannot appear in an escaped title, so the link markup stays intact.
        heading = f"*<{_slack_escape(link)}|{title}>*" if link else f"*{title}*"
        when = f" · {gregorian_date(a.published)}" if a.published else ""
        text = (f"{heading}\n{_slack_escape(_clip(a.summary, 600))}\n"
                f"_{_slack_escape(alert.watch)} · {_slack_escape(a.feed)}{when}_")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, 3000)}})
    if len(alerts) > CHAT_DIGEST_ITEMS:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"+{len(alerts) - CHAT_DIGEST_ITEMS} more"}]})
    fallback = (_digest_heading(message) if isinstance(message, Digest)
                else f"[{message.watch}] {message.article.title}")
    return {"text": _slack_escape(_clip(fallback, 300)), "blocks": blocks,
            "unfurl_links": False}


def discord_payload(message: Outgoing) -> dict[str, Any]:
    alerts = _alerts_of(message)
    embeds = []
    # Discord allows 10 embeds and 6,000 characters across them.
    budget = 4000 if len(alerts) == 1 else 350
    for alert in alerts[:CHAT_DIGEST_ITEMS]:
        a = alert.article
        embed: dict[str, Any] = {
            "title": _clip(a.title or "(untitled)", 250),
            "description": _clip(a.summary, budget),
            "footer": {"text": _clip(f"{alert.watch} · {a.feed} · "
                                     f"{', '.join(alert.matched)}", 200)},
        }
        if _safe_link(a.link):
            embed["url"] = a.link
        if a.published:
            embed["timestamp"] = _iso(a.published)
        embeds.append(embed)
    content = _digest_heading(message) if isinstance(message, Digest) else ""
    if len(alerts) > CHAT_DIGEST_ITEMS:
        content += f" (+{len(alerts) - CHAT_DIGEST_ITEMS} more)"
    # Feed text must never ping @everyone or a role.
    return {"content": content, "embeds": embeds, "allowed_mentions": {"parse": []}}


def telegram_payload(message: Outgoing, chat_id: str) -> dict[str, Any]:
    alerts = _alerts_of(message)
    parts = []
    if isinstance(message, Digest):
        parts.append(f"<b>{html.escape(_digest_heading(message))}</b>")
    summary_limit = 1500 if len(alerts) == 1 else 200
    for alert in alerts[:CHAT_DIGEST_ITEMS]:
        a = alert.article
        title = html.escape(a.title or "(untitled)")
        link = _safe_link(a.link)
        heading = f'<a href="{html.escape(link, quote=True)}">{title}</a>' if link else title
        when = f"\n{html.escape(both_dates(a.published))}" if a.published else ""
        parts.append(f"<b>{heading}</b>\n{html.escape(_clip(a.summary, summary_limit))}\n"
                     f"<i>{html.escape(alert.watch)} · {html.escape(a.feed)}</i>{when}")
    if len(alerts) > CHAT_DIGEST_ITEMS:
        parts.append(f"+{len(alerts) - CHAT_DIGEST_ITEMS} more")
    text = "\n\n".join(parts)
    if len(text) > 4096:  # Telegram's limit; cut between items so no tag is left open
        text = "\n\n".join(parts[:2])[:4000]
    return {"chat_id": chat_id, "text": text, "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": isinstance(message, Digest)}}


# --- email -----------------------------------------------------------------------------

def header_safe(text: str, limit: int = MAX_SUBJECT) -> str:
    text = _HEADER_UNSAFE.sub(" ", text)
    text = text.replace("=?", "=\u200b?")  # defuse RFC 2047 encoded words
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def email_subject(message: Outgoing) -> str:
    if isinstance(message, Digest):
        return header_safe(f"[monitor] {_digest_heading(message).removeprefix('monitor: ')}")
    prefix = "[monitor] " + ("update: " if message.kind == "update" else "")
    return header_safe(f"{prefix}{message.watch}: {message.article.title or '(untitled)'}")


def _alert_text(alert: AlertMessage, labels: dict[str, str]) -> str:
    a = alert.article
    lines = [a.title or labels["untitled"], ""]
    if a.summary:
        lines += [a.summary, ""]
    if a.link:
        lines += [a.link, ""]
    lines += [f"{labels['watch']}: {alert.watch}",
              f"{labels['matched']}: {', '.join(alert.matched)}",
              f"{labels['source']}: {a.feed}"]
    if a.published:
        lines.append(f"{labels['published']}: {jalali_date(a.published)}")
        lines.append(f"{' ' * len(labels['published'])}  {gregorian_date(a.published)}")
    if alert.other_sources:
        lines.append(f"{labels['others']}: {', '.join(alert.other_sources)}")
    return "\n".join(lines)


def email_text(message: Outgoing) -> str:
    alerts = _alerts_of(message)
    labels = _LABELS["rtl" if is_rtl(alerts[0]) else "ltr"]
    parts = [_alert_text(a, labels) for a in alerts]
    if isinstance(message, Digest):
        parts.insert(0, _digest_heading(message))
    return ("\n\n" + "-" * 40 + "\n\n").join(parts).strip() + "\n"


def _alert_html(alert: AlertMessage, heading: str) -> str:
    a = alert.article
    e = html.escape
    rtl = is_rtl(alert)
    direction = "rtl" if rtl else "ltr"
    labels = _LABELS[direction]
    link = _safe_link(a.link)
    title = rich_text_html(a.title, alert.matched, rtl) if a.title else e(labels["untitled"])
    if link:
        title = f'<a href="{e(link, quote=True)}" style="color:#0b4f8a">{title}</a>'
    rows = [(labels["watch"], f"<bdi>{e(alert.watch)}</bdi>"),
            (labels["matched"], "، ".join(f"<mark style=\"background:#fff3a3\"><bdi>{e(t)}"
                                          "</bdi></mark>" for t in alert.matched)),
            (labels["source"], f"<bdi>{e(a.feed)}</bdi>")]
    if a.published:
        rows.append((labels["published"], f"{e(jalali_date(a.published))}<br>"
                     f'<span dir="ltr">{e(gregorian_date(a.published))}</span>'))
    if alert.other_sources:
        rows.append((labels["others"],
                     "، ".join(f"<bdi>{e(s)}</bdi>" for s in alert.other_sources)))
    cells = "".join(f'<tr><td style="color:#666;padding:2px 0 2px 12px;vertical-align:top;'
                    f'white-space:nowrap">{e(k)}</td><td style="padding:2px 0">{v}</td></tr>'
                    for k, v in rows)
    more = (f'<p><a href="{e(link, quote=True)}">{e(labels["link"])}</a> '
            f'<span dir="ltr" style="color:#888;font-size:12px">{e(link)}</span></p>'
            if link else "")
    return (f'<div dir="{direction}" style="text-align:{"right" if rtl else "left"};'
            f'font-family:{PERSIAN_FONTS if rtl else LATIN_FONTS};line-height:1.8;'
            'margin-bottom:24px">'
            f"<{heading} style=\"margin:0 0 8px\">{title}</{heading}>"
            f"<p style=\"margin:0 0 8px\">{rich_text_html(a.summary, alert.matched, rtl)}</p>"
            f'<table style="border-collapse:collapse;font-size:14px">{cells}</table>{more}'
            "</div>")


def email_html(message: Outgoing) -> str:
    alerts = _alerts_of(message)
    rtl = is_rtl(alerts[0])
    direction = "rtl" if rtl else "ltr"
    lang = alerts[0].article.language or ("fa" if rtl else "en")
    if isinstance(message, Digest):
        body = (f"<h2>{html.escape(_digest_heading(message))}</h2>"
                + "<hr>".join(_alert_html(a, "h3") for a in alerts))
    else:
        body = _alert_html(message, "h2")
    return (f'<!DOCTYPE html><html lang="{html.escape(lang)}" dir="{direction}">'
            '<head><meta charset="utf-8">'
            f"<title>{html.escape(email_subject(message))}</title></head>"
            f'<body dir="{direction}" style="margin:16px;font-family:'
            f'{PERSIAN_FONTS if rtl else LATIN_FONTS}">{body}</body></html>')


def email_message(message: Outgoing, sender: str, recipients: Sequence[str],
                  now: datetime) -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = email_subject(message)
    email["From"] = sender
    email["To"] = ", ".join(recipients)
    email["Date"] = format_datetime(now)
    # The same Message-ID on every retry lets the receiving side drop a repeat.
    domain = sender.rpartition("@")[2] or "monitor.local"
    email["Message-ID"] = f"<{message.message_id}@{header_safe(domain, 100)}>"
    watches = dict.fromkeys(a.watch for a in _alerts_of(message))
    email["X-Monitor-Watch"] = header_safe(", ".join(watches), 100)
    email.set_content(email_text(message))
    email.add_alternative(email_html(message), subtype="html")
    return email
