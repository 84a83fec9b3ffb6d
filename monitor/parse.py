"""Feed bytes to entries with feedparser. Pure: no network, no database."""

from __future__ import annotations

import calendar
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import feedparser

from monitor.text.normalize import display_text

# Stored field caps: a hostile feed must not fill the database or the matcher's time.
MAX_TITLE = 1_000
MAX_SUMMARY = 20_000
MAX_CONTENT = 200_000


@dataclass(frozen=True)
class Entry:
    """One item of a feed, as display text."""

    key: str  # identity within its feed: GUID, else link, else content hash
    link: str | None
    title: str
    summary: str
    content: str
    published: datetime | None
    author: str | None = None


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    entries: list[Entry]
    problem: str | None  # set when the XML was not well-formed but entries were recovered
    ttl_seconds: float | None = None


class NotAFeed(ValueError):
    """The body holds no feed at all (an HTML page, an error document, empty bytes)."""


def _datetime(parsed: object) -> datetime | None:
    if not parsed:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _clean(text: str, limit: int) -> str:
    # NUL and lone surrogates: PostgreSQL rejects the first, UTF-8 encoding the second.
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _entry(raw: Mapping[str, object]) -> Entry | None:
    title = _clean(display_text(str(raw.get("title") or "")), MAX_TITLE)
    summary = _clean(display_text(str(raw.get("summary") or "")), MAX_SUMMARY)
    contents = raw.get("content") or []
    content = ""
    if isinstance(contents, list) and contents:
        content = _clean(display_text(str(contents[0].get("value") or "")), MAX_CONTENT)
    if content == summary:
        content = ""
    link = raw.get("link") or None
    if not (title or summary or content or link):
        return None
    guid = raw.get("id") or raw.get("guid")
    if guid:
        key = "guid:" + str(guid)[:500]
    elif link:
        key = "link:" + str(link)[:500]
    else:
        digest = hashlib.sha256(f"{title}\n{summary}\n{content}".encode()).hexdigest()
        key = "hash:" + digest[:40]
    published = _datetime(raw.get("published_parsed") or raw.get("updated_parsed"))
    author = raw.get("author")
    return Entry(key=key, link=str(link)[:2000] if link else None, title=title,
                 summary=summary, content=content, published=published,
                 author=str(author)[:200] if author else None)


def parse_feed(body: bytes, headers: Mapping[str, str], url: str) -> ParsedFeed:
    """Parse feed bytes. Headers carry the charset; feedparser never sees a str or URL.

    Raises NotAFeed when nothing feed-like could be recovered.
    """
    response_headers = {k.lower(): v for k, v in headers.items()}
    response_headers["content-location"] = url
    result = feedparser.parse(io.BytesIO(body), response_headers=response_headers)
    problem = None
    if result.get("bozo"):
        exc = result.get("bozo_exception")
        problem = f"{type(exc).__name__}: {exc}"[:300] if exc else "malformed feed"
    entries = [e for raw in result.get("entries", []) if (e := _entry(raw)) is not None]
    feed_info = result.get("feed", {})
    if not entries and not result.get("version") and not feed_info.get("title"):
        raise NotAFeed(problem or "no RSS or Atom document found")
    ttl = None
    try:
        if feed_info.get("ttl"):
            ttl = float(feed_info["ttl"]) * 60
    except (TypeError, ValueError):
        ttl = None
    title = display_text(str(feed_info.get("title") or "")) or None
    return ParsedFeed(title=title, entries=entries, problem=problem, ttl_seconds=ttl)
