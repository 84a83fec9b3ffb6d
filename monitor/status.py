"""`monitor status`: feeds, watches and channels at a glance, as a table or JSON.

The table stays aligned with Persian and Arabic names: a right-to-left cell is wrapped in
Unicode isolates (FSI ... PDI) so the terminal's bidi algorithm cannot reorder it with the
columns around it, and columns are padded by display width, not by code points (ZWNJ,
diacritics and the isolates themselves take no column; wide CJK letters take two).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.alerts.outbox import state_counts, stopped_channels
from monitor.config import Config, Secrets, channel_missing_secrets
from monitor.store.models import Alert, Delivery, Feed, FeedEntry

FSI, PDI = "\u2068", "\u2069"
DAY = timedelta(hours=24)
MAX_ERROR_WIDTH = 60


@dataclass(frozen=True)
class FeedStatus:
    name: str
    state: str  # new ok failing gone disabled
    last_success: datetime | None
    last_checked: datetime | None
    last_error: str | None
    error_count: int
    items_24h: int
    next_check: datetime | None


@dataclass(frozen=True)
class WatchStatus:
    name: str
    alerts_24h: int
    last_alert: datetime | None


@dataclass(frozen=True)
class ChannelStatus:
    name: str
    type: str
    # active, disabled, inactive (set VAR), not configured, or what the daemon decided at
    # run time: paused (SMTP 535) or disabled (webhook 410), with the reason
    status: str
    held: int  # waiting for a digest, quiet hours or the rate limit
    pending: int
    failed: int
    dead: int
    delivered_24h: int
    last_success: datetime | None


@dataclass(frozen=True)
class Status:
    generated_at: datetime
    feeds: list[FeedStatus]
    watches: list[WatchStatus]
    channels: list[ChannelStatus]

    def as_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))


def collect(session: Session, config: Config, secrets: Secrets, now: datetime) -> Status:
    since = now - DAY
    rows = {f.name: f for f in session.scalars(select(Feed))}
    items = dict(session.execute(
        select(FeedEntry.feed_id, func.count()).where(FeedEntry.first_seen >= since)
        .group_by(FeedEntry.feed_id)).all())
    feeds = []
    for feed in config.feeds:
        row = rows.get(feed.name)
        state = "disabled" if not feed.enabled else (row.state if row else "new")
        feeds.append(FeedStatus(
            name=feed.name, state=state,
            last_success=row.last_success_at if row else None,
            last_checked=row.last_checked_at if row else None,
            last_error=row.last_error if row else None,
            error_count=row.error_count if row else 0,
            items_24h=items.get(row.id, 0) if row else 0,
            next_check=row.next_check_at if row and feed.enabled else None))

    recent = dict(session.execute(
        select(Alert.watch, func.count()).where(Alert.created_at >= since)
        .group_by(Alert.watch)).all())
    last = dict(session.execute(
        select(Alert.watch, func.max(Alert.created_at)).group_by(Alert.watch)).all())
    watches = [WatchStatus(w.name, recent.get(w.name, 0), last.get(w.name))
               for w in config.watches]

    counts = state_counts(session)
    stopped = stopped_channels(session)
    delivered = dict(session.execute(
        select(Delivery.channel, func.count()).where(Delivery.delivered_at >= since)
        .group_by(Delivery.channel)).all())
    last_success = dict(session.execute(
        select(Delivery.channel, func.max(Delivery.delivered_at))
        .group_by(Delivery.channel)).all())

    def channel_status(name: str, kind: str, status: str) -> ChannelStatus:
        c = counts.get(name, {})
        if name in stopped and status == "active":
            status = f"{stopped[name].state}: {stopped[name].reason or 'no reason recorded'}"
        return ChannelStatus(name, kind, status, c.get("held", 0),
                             c.get("pending", 0) + c.get("delivering", 0), c.get("failed", 0),
                             c.get("dead", 0), delivered.get(name, 0), last_success.get(name))

    channels = []
    for channel in config.channels:
        missing = channel_missing_secrets(channel, secrets)
        status = ("disabled" if not channel.enabled else
                  f"inactive (set {', '.join(missing)})" if missing else "active")
        channels.append(channel_status(channel.name, channel.type, status))
    # Deliveries queued for a channel since removed from the config wait for it to return.
    configured = {c.name for c in config.channels}
    for name in sorted(set(counts) - configured):
        channels.append(channel_status(name, "?", "not configured"))
    return Status(now, feeds, watches, channels)


# --- rendering -------------------------------------------------------------------------

def display_width(text: str) -> int:
    """Terminal columns: combining marks and format characters (ZWNJ, isolates) take none,
    East Asian wide and fullwidth characters take two."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def has_rtl(text: str) -> bool:
    """Any right-to-left letter: a mixed cell needs isolating as much as a Persian one."""
    return any(unicodedata.bidirectional(c) in ("R", "AL") for c in text)


def isolate(text: str) -> str:
    return f"{FSI}{text}{PDI}" if has_rtl(text) else text


def truncate(text: str, width: int) -> str:
    text = " ".join(text.split())  # an error message may hold newlines
    if display_width(text) <= width:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > width - 1:
            break
        out += char
    return out + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-to-right columns padded by display width; right-to-left cells isolated."""
    cells = [[isolate(c) for c in row] for row in [headers, *rows]]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c + " " * (w - display_width(c)) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return lines


def relative(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = (when - now).total_seconds()
    span = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            amount = f"{int(span // size)}{unit}"
            break
    else:
        amount = f"{int(span)}s"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def render(status: Status) -> str:
    now = status.generated_at
    feed_rows = [[f.name, f.state, relative(f.last_success, now),
                  truncate(f.last_error, MAX_ERROR_WIDTH) if f.last_error else "-",
                  str(f.items_24h), relative(f.next_check, now)] for f in status.feeds]
    watch_rows = [[w.name, str(w.alerts_24h), relative(w.last_alert, now)]
                  for w in status.watches]
    channel_rows = [[c.name, c.type, truncate(c.status, MAX_ERROR_WIDTH), str(c.held),
                     str(c.pending), str(c.failed), str(c.dead),
                     str(c.delivered_24h), relative(c.last_success, now)]
                    for c in status.channels]
    sections = [
        (f"feeds ({len(status.feeds)})",
         ["name", "state", "last success", "last error", "items 24h", "next check"], feed_rows),
        (f"watches ({len(status.watches)})", ["name", "alerts 24h", "last alert"], watch_rows),
        (f"channels ({len(status.channels)})",
         ["name", "type", "status", "held", "pending", "failed", "dead", "delivered 24h",
          "last success"], channel_rows),
    ]
    out = [f"monitor status at {now:%Y-%m-%d %H:%M:%S} UTC"]
    for title, headers, rows in sections:
        out += ["", title, *(table(headers, rows) if rows else ["  (none configured)"])]
    return "\n".join(out) + "\n"
