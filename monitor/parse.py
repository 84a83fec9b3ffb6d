"""Feed bytes to entries with feedparser. Pure: no network, no database.

Before feedparser sees a document, entity declarations that could blow up are removed
(`guard_entities`), and a charset declaration that lies the way Persian and Arabic feeds'
declarations lie is corrected (`_read_charset`).

A refresh of a changed feed passes what it stored last time (`KnownItems`). A changed feed
usually repeats most of its document: an item repeated byte for byte, in the same
surroundings, is not parsed at all (feedparser reads the document without it; `_Items` cuts
it out), and an entry with a known key is left unread (`UnreadEntry`), without its display
text, where its key can be known before its text.
"""

from __future__ import annotations

import calendar
import codecs
import functools
import hashlib
import io
import itertools
import math
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import feedparser

from monitor.text.normalize import display_text

# feedparser asks xml.sax for libxml2's driver before expat. It is not installed, and the
# failed import searched sys.path again on every parse: 128 µs against 3 µs for the parser
# itself. Expat, which it fell back to, is the parser every test reads with.
feedparser.api.PREFERRED_XML_PARSERS.clear()
# At every start tag feedparser joins the document's base URI with the tag's (the same one,
# but for an xml:base) to keep it absolute and of a safe scheme: urllib's urljoin, about 5 %
# of parsing a feed. The function is pure, and within a document it is asked the same
# question again and again, so its answers are kept.
feedparser.mixin.make_safe_absolute_uri = functools.lru_cache(maxsize=256)(
    feedparser.urls.make_safe_absolute_uri)

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


# Entity declarations kept only when small, flat and few: feedparser's loose fallback parser
# expands internal entities, so one 100 KB entity referenced 2,000 times is 200 MB of title.
MAX_ENTITIES = 32
MAX_ENTITY_VALUE = 1_024
MAX_ENTITY_EXPANSION = 64 * 1024  # value length x references, summed over entities

_ENTITY_DECL = re.compile(r"""<!ENTITY\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.I)
_ENTITY_PARTS = re.compile(
    r"""<!ENTITY\s+(%\s+)?([^\s"'%>]+)\s*(SYSTEM|PUBLIC)?[^"']*(?:"([^"]*)"|'([^']*)')?""",
    re.I)

# sy:updatePeriod (RSS 1.0 syndication module) in seconds.
_UPDATE_PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400,
                   "monthly": 30 * 86400, "yearly": 365 * 86400}
_SINGLE_BYTE = re.compile(r"^(us-?ascii|ascii|latin-?1|l1|iso[-_]?8859[-_]?\d+|"
                          r"(windows|cp)[-_]?125\d)$", re.I)
_UTF8 = re.compile(r"^utf-?8$", re.I)
# A UTF-8 document with at most one bad sequence per this many good non-ASCII characters (or
# one in all) is UTF-8 with damage, not text in another charset (bad nearly everywhere).
_MAX_BAD_UTF8_SHARE = 50
# windows-1256 text read as such is Arabic script, the joiners of Persian typing, NBSP and
# punctuation. Text in another single-byte charset read as windows-1256 has the Latin-1
# letters and signs windows-1256 keeps among its Arabic letters (é, ç, ô, ×...) or its
# direction marks (where Turkish has ı and ş): Cyrillic, Greek, Hebrew and Turkish have some
# in nearly every line.
_CP1256_TEXT = re.compile("[\u0600-\u06ff\u200c\u200d\u00a0\u00ab\u00bb\u2010-\u2027]")
_MIN_CP1256_SHARE = 0.99
_MIN_CP1256_LETTERS = 8


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    entries: list[Entry | UnreadEntry]  # only `Entry` unless `parse_feed` had `known`
    problem: str | None  # set when the XML was not well-formed but entries were recovered
    ttl_seconds: float | None = None  # RSS <ttl>
    update_period_seconds: float | None = None  # sy:updatePeriod / sy:updateFrequency
    # Per entry, the digest of its item's bytes in their surroundings (`_Items`); 0 where
    # the document could not be cut into items. Empty when none could.
    item_digests: tuple[int, ...] = ()


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
    text = text.encode("utf-8", "ignore").decode("utf-8")
    return text[:limit]


def _codec(body: bytes) -> str:
    """A codec that maps `body` to text and back byte for byte: UTF-16/32 when the bytes
    say so, else latin-1 (every byte is one character, so nothing is altered)."""
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return name
    if body[:4] in (b"<\x00?\x00", b"<\x00!\x00"):
        return "utf-16-le"
    if body[:4] in (b"\x00<\x00?", b"\x00<\x00!"):
        return "utf-16-be"
    return "latin-1"


def guard_entities(body: bytes) -> tuple[bytes, str | None]:
    """Remove entity declarations that are large, nested, external, parameter entities, too
    many, or referenced so often that expanding them would be huge. References to a removed
    entity stay as text. Returns the body and a note when something was removed."""
    codec = _codec(body)
    if codec == "latin-1" and b"<!ENTITY" not in body.upper():
        return body, None  # the common case costs one scan
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        return body, None
    declarations = list(_ENTITY_DECL.finditer(text))
    if not declarations:
        return body, None
    too_many = len(declarations) > MAX_ENTITIES
    expansion = 0
    removed: list[tuple[int, int]] = []
    for match in declarations:
        parts = _ENTITY_PARTS.match(match.group(0))
        value = (parts.group(4) or parts.group(5) or "") if parts else ""
        keep = (parts is not None and not too_many and not parts.group(1)
                and not parts.group(3) and len(value) <= MAX_ENTITY_VALUE
                and "&" not in value and "%" not in value)
        if keep:
            assert parts is not None
            expansion += len(value) * text.count(f"&{parts.group(2)};")
            keep = expansion <= MAX_ENTITY_EXPANSION
        if not keep:
            removed.append(match.span())
    if not removed:
        return body, None
    for start, end in reversed(removed):
        text = text[:start] + text[end:]
    note = (f"removed {len(removed)} of {len(declarations)} entity declarations "
            "(external, nested, too large or too many)")
    return text.encode(codec), note


_CHARREF = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")


def _drop_bad_charrefs(body: bytes) -> bytes:
    """Remove character references to NUL, surrogates or beyond Unicode: feedparser raises
    UnicodeEncodeError on ``&#xD800;`` and PostgreSQL rejects NUL."""
    if b"&#" not in body:
        return body

    def replace(match: re.Match[bytes]) -> bytes:
        code = int(match.group(1), 16) if match.group(1) else int(match.group(2))
        bad = code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF
        return b"" if bad else match.group(0)

    return _CHARREF.sub(replace, body)


def _declared_charsets(body: bytes, headers: Mapping[str, str]) -> list[str]:
    """The charsets the HTTP header and the XML declaration name, in that order."""
    content_type = headers.get("content-type", "")
    header_charset = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.I)
    declaration = re.match(rb"\s*<\?xml[^>]*encoding\s*=\s*[\"']([\w.:-]+)", body[:200])
    declared = [m.group(1) for m in (header_charset, declaration) if m]
    return [d.decode("ascii", "replace") if isinstance(d, bytes) else d for d in declared]


def _with_charset(headers: dict[str, str], charset: str) -> dict[str, str]:
    media_type = headers.get("content-type", "").split(";")[0].strip() or "application/xml"
    return {**headers, "content-type": f"{media_type}; charset={charset}"}


def _read_charset(body: bytes, headers: dict[str, str]
                  ) -> tuple[bytes, dict[str, str], str | None]:
    """Body and headers that make feedparser read the text the publisher wrote, when the
    declared charset is wrong in one of the ways Persian and Arabic feeds get it wrong.
    Returns a note when the body had to be repaired.

    - A legacy single-byte charset declared, valid UTF-8 with non-ASCII text: UTF-8. A wrong
      declaration, not a coincidence: cp1252 or cp1256 text is almost never valid UTF-8.
    - UTF-8 declared (or nothing, which means UTF-8 in XML) but not valid UTF-8:
      - a few bad sequences in UTF-8 text (a CMS that cut a summary in the middle of a
        two-byte Persian letter): the bad bytes are dropped. Otherwise feedparser reads the
        whole document as windows-1252 and every item of the feed becomes mojibake, stored
        and never matched, and carried as known once the feed is mended;
      - windows-1256 text (older Iranian and Arab CMSes that label it UTF-8): read as
        windows-1256, when nearly all its non-ASCII characters are then Arabic script.
    Anything else is left to feedparser, which notes what it did (cp1252 read as cp1252)."""
    if body.isascii() or _codec(body) != "latin-1":  # ASCII, or UTF-16/32 by its bytes
        return body, headers, None
    declared = _declared_charsets(body, headers)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if declared and all(_SINGLE_BYTE.match(d) for d in declared):
            return body, _with_charset(headers, "utf-8"), None
        return body, headers, None
    if not all(_UTF8.match(d) for d in declared):
        return body, headers, None
    text, kept = body.decode("utf-8", "replace"), body.decode("utf-8", "ignore")
    bad = text.count("\ufffd") - kept.count("\ufffd")
    good = sum(not c.isascii() for c in kept)
    if 0 < bad <= max(1, good // _MAX_BAD_UTF8_SHARE) < good:
        return kept.encode("utf-8"), _with_charset(headers, "utf-8"), (
            f"declared as UTF-8 but {bad} invalid byte sequence(s) in it; dropped")
    legacy = body.decode("cp1256")  # every byte maps to a character
    foreign = [c for c in legacy if not c.isascii()]
    arabic = sum(1 for c in foreign if _CP1256_TEXT.match(c))
    if arabic >= _MIN_CP1256_LETTERS and arabic >= _MIN_CP1256_SHARE * len(foreign):
        return legacy.encode("utf-8"), _with_charset(headers, "utf-8"), (
            "declared as UTF-8 but written in windows-1256; read as windows-1256")
    return body, headers, None


def _link(raw: Mapping[str, object]) -> str | None:
    return _clean(str(raw.get("link") or ""), 2000) or None


def _key_of_identity(raw: Mapping[str, object], link: str | None) -> str | None:
    """The entry's key when it names the entry itself: its GUID, else its link. None when
    the key must be made from the entry's text (`_entry`)."""
    guid = raw.get("id") or raw.get("guid")
    if guid:
        return "guid:" + _clean(str(guid), 500)
    if link:
        return "link:" + link[:500]
    return None


def _entry(raw: Mapping[str, object]) -> Entry | None:
    title = _clean(display_text(str(raw.get("title") or "")), MAX_TITLE)
    summary = _clean(display_text(str(raw.get("summary") or "")), MAX_SUMMARY)
    contents = raw.get("content") or []
    content = ""
    if isinstance(contents, list) and contents:
        content = _clean(display_text(str(contents[0].get("value") or "")), MAX_CONTENT)
    if content == summary:
        content = ""
    link = _link(raw)
    if not (title or summary or content or link):
        return None
    key = _key_of_identity(raw, link)
    if key is None:
        digest = hashlib.sha256(f"{title}\n{summary}\n{content}".encode()).hexdigest()
        key = "hash:" + digest[:40]
    return Entry(key=key, link=link, title=title,
                 summary=summary, content=content, published=_published(raw),
                 author=_author(raw))


def _published(raw: Mapping[str, object]) -> datetime | None:
    return _datetime(raw.get("published_parsed") or raw.get("updated_parsed"))


def _author(raw: Mapping[str, object]) -> str | None:
    author = raw.get("author")
    return _clean(str(author), 200) or None if author else None


@dataclass(frozen=True)
class UnreadEntry:
    """An entry of the document whose text was not made, because its feed most likely stored
    it before (`parse_feed`'s `known`): making display text is most of the cost of an entry
    once feedparser is done, and feedparser most of the rest. It has what identifies it.

    `raw` is feedparser's entry, from which `read` makes the `Entry` that `parse_feed` would
    have made, for when the guess was wrong. It is None for an item that was not parsed at
    all (repeated byte for byte): then the entry is read from the whole document again
    (`entries_by_key`)."""

    key: str
    published: datetime | None
    raw: Mapping[str, object] | None

    def read(self) -> Entry:
        assert self.raw is not None, "an unparsed item is read with entries_by_key"
        entry = _entry(self.raw)
        assert entry is not None, "an entry with a link is never dropped"
        return entry


@dataclass(frozen=True, slots=True)
class KnownItems:
    """What a feed's last stored document held, for parsing its next one: every entry's key,
    and per entry the digest of its item's bytes (0 when the document could not be cut into
    items) and its published time (NaN for none). Keys, not their digests: an item that is
    not parsed still needs its key to be stored as carried."""

    keys: tuple[str, ...] = ()
    digests: array[int] = field(default_factory=lambda: array("q"))
    published: array[float] = field(default_factory=lambda: array("d"))

    @classmethod
    def of(cls, parsed: ParsedFeed) -> KnownItems:
        digests = parsed.item_digests or (0,) * len(parsed.entries)
        return cls(tuple(e.key for e in parsed.entries), array("q", digests),
                   array("d", (e.published.timestamp() if e.published else math.nan
                               for e in parsed.entries)))

    def unparsed(self) -> dict[int, UnreadEntry]:
        """The entries whose items need not be parsed again, by their items' digests."""
        return {digest: UnreadEntry(key, None if math.isnan(published)
                                    else datetime.fromtimestamp(published, UTC), None)
                for key, digest, published in zip(self.keys, self.digests, self.published,
                                                   strict=True) if digest}


def _unread_or_entry(raw: Mapping[str, object], known: frozenset[str]
                     ) -> Entry | UnreadEntry | None:
    """The entry, or left unread when its key is known. Only an entry with a link can be:
    its key does not depend on its text (a GUID or the link), and it is never dropped for
    lack of text (`_entry`), whatever its text turns out to be."""
    if known and (link := _link(raw)) is not None:
        key = _key_of_identity(raw, link)
        if key is not None and key in known:
            return UnreadEntry(key=key, published=_published(raw), raw=raw)
    return _entry(raw)


# Item and entry elements, skipping CDATA sections and comments, which may hold either as text.
_ITEM_MARKUP = re.compile(
    rb"<!\[CDATA\[.*?\]\]>|<!--.*?-->"
    rb"|<(/?)((?:[A-Za-z_][\w.-]*:)?(?:item|entry))(?=[\s/>])(?:[^>\"']|\"[^\"]*\"|'[^']*')*>",
    re.S)
_TAG = re.compile(rb"<(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")


@dataclass(frozen=True)
class _Items:
    """A document cut into its item (RSS) or entry (Atom) elements, each kept as its bytes,
    and what is around them. Each item's digest covers its bytes and its surroundings: the
    feed's URL and charset, the prolog (the XML declaration, the DOCTYPE and its entities)
    and the tags before the first item with their attributes (namespaces, xml:base) but not
    the text between them (the channel's changing dates). What feedparser makes of an item
    depends on nothing else, so an item with a known digest would be parsed into the entry
    it was parsed into before.

    Cut only where that is plain: items one after the other with nothing but white space
    between them, never one inside another, one element name throughout."""

    head: bytes
    items: list[bytes]
    tail: bytes
    digests: list[int]

    @classmethod
    def cut(cls, body: bytes, headers: Mapping[str, str], url: str) -> _Items | None:
        spans: list[tuple[int, int]] = []
        start, name = -1, b""
        for tag in _ITEM_MARKUP.finditer(body):
            if tag.group(2) is None:
                continue  # CDATA or a comment
            closing = bool(tag.group(1))
            if (name and tag.group(2) != name) or closing != (start >= 0) \
                    or tag.group(0).endswith(b"/>"):
                return None
            name = tag.group(2)
            if closing:
                spans.append((start, tag.end()))
                start = -1
            else:
                start = tag.start()
        if not spans or start >= 0:
            return None
        if any(body[end:next_start].strip()
               for (_, end), (next_start, _) in itertools.pairwise(spans)):
            return None
        head = body[:spans[0][0]]
        # The prolog as it is (the XML declaration, the DOCTYPE and its entities), then the
        # tags with their attributes and without the text between them.
        root = _FIRST_ELEMENT.search(head)
        prolog, markup = (head[:root.start()], head[root.start():]) if root else (head, b"")
        context = hashlib.blake2b(
            b"\n".join([url.encode(), headers.get("content-type", "").encode(), prolog,
                        *_TAG.findall(markup)]), digest_size=16).digest()
        items = [body[a:b] for a, b in spans]
        digests = [int.from_bytes(hashlib.blake2b(item, digest_size=8, key=context).digest(),
                                  "little", signed=True) or 1 for item in items]
        return cls(head, items, body[spans[-1][1]:], digests)

    def without(self, drop: Sequence[bool]) -> bytes:
        """The document with the items marked in `drop` left out."""
        return self.head + b"\n".join(
            item for item, dropped in zip(self.items, drop, strict=True) if not dropped
        ) + self.tail


def parse_feed(body: bytes, headers: Mapping[str, str], url: str,
               known: KnownItems | None = None) -> ParsedFeed:
    """Parse feed bytes. Headers carry the charset; feedparser never sees a str or URL.

    `known` is what the caller stored from the feed's last document. An item repeated byte
    for byte is not parsed (feedparser reads the document without it), and an entry with a
    known key is not read where its key is known without its text: both come back as
    `UnreadEntry`, in their places. Without `known`, every entry is an `Entry`.

    Raises NotAFeed when nothing feed-like could be recovered.
    """
    response_headers = {k.lower(): v for k, v in headers.items()}
    response_headers["content-location"] = url
    body, entity_note = guard_entities(body)
    body = _drop_bad_charrefs(body)
    body, response_headers, charset_note = _read_charset(body, response_headers)
    items = _Items.cut(body, response_headers, url) \
        if _cuttable(body, response_headers) else None
    repeated = known.unparsed() if known is not None and items is not None else {}
    # Per item of the document, its digest and, when it is repeated, the entry it made.
    slots = [(digest, repeated.get(digest)) for digest in items.digests] if items else []
    result = None
    if items is not None and any(entry for _, entry in slots):
        result = _feedparser(items.without([entry is not None for _, entry in slots]),
                             response_headers)
        if not _read_cleanly(result) or len(result.get("entries", [])) != _fresh(slots):
            result = None  # not what it was cut as (a malformed document): read it all
    if result is None:
        result = _feedparser(body, response_headers)
        slots = [(digest, None) for digest, _ in slots]
    raws = result.get("entries", [])
    if not _read_cleanly(result) or len(raws) != _fresh(slots):
        # The digests go with the entries only where feedparser read each item as one
        # entry, in a document it read without trouble.
        slots = [(0, None)] * len(raws)
    notes = [entity_note, charset_note]
    if result.get("bozo"):
        exc = result.get("bozo_exception")
        notes.append(f"{type(exc).__name__}: {exc}"[:300] if exc else "malformed feed")
    problem = "; ".join(filter(None, notes)) or None
    keys = frozenset(known.keys) if known is not None else frozenset()
    fresh = iter(raws)
    entries: list[Entry | UnreadEntry] = []
    digests: list[int] = []
    for digest, repeated_entry in slots:
        entry = repeated_entry or _unread_or_entry(next(fresh), keys)
        if entry is not None:
            entries.append(entry)
            digests.append(digest)
    feed_info = result.get("feed", {})
    if not entries and not result.get("version") and not feed_info.get("title"):
        raise NotAFeed(problem or "no RSS or Atom document found")
    title = _clean(display_text(str(feed_info.get("title") or "")), MAX_TITLE) or None
    return ParsedFeed(title=title, entries=entries, problem=problem,
                      ttl_seconds=_minutes(feed_info.get("ttl")),
                      update_period_seconds=_update_period(feed_info),
                      item_digests=tuple(digests) if any(digests) else ())


def _read_cleanly(result: Any) -> bool:
    """Whether feedparser read the document as well-formed XML. A media type that is not
    XML's is noted (bozo) but changes nothing in how it is read, and a document must not lose
    its repeated items for a server's wrong Content-Type."""
    return not result.get("bozo") or isinstance(result.get("bozo_exception"),
                                                 feedparser.NonXMLContentType)


def _fresh(slots: Sequence[tuple[int, UnreadEntry | None]]) -> int:
    return sum(entry is None for _, entry in slots)


def entries_by_key(body: bytes, headers: Mapping[str, str], url: str) -> dict[str, Entry]:
    """The document read whole, each entry by its key (the first, should two share one):
    for the items `parse_feed` did not parse (their bytes were known) that turn out not to be
    stored after all."""
    entries: dict[str, Entry] = {}
    for entry in parse_feed(body, headers, url).entries:
        assert isinstance(entry, Entry)
        entries.setdefault(entry.key, entry)
    return entries


def _cuttable(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether the document's bytes can be searched for markup: ASCII-compatible, in a
    charset where every `<` byte is one (UTF-8 or single-byte)."""
    return _codec(body) == "latin-1" and all(
        _UTF8.match(c) or _SINGLE_BYTE.match(c) for c in _declared_charsets(body, headers))


def _feedparser(body: bytes, response_headers: Mapping[str, str]) -> Any:
    try:
        # No HTML sanitizing or link resolving inside the markup (a tenth of the parse):
        # monitor keeps no markup, every field becomes plain text (`display_text`) and is
        # escaped wherever it lands.
        return feedparser.parse(io.BytesIO(body), response_headers=response_headers,
                                sanitize_html=False, resolve_relative_uris=False)
    except Exception as exc:  # a feedparser bug on hostile input is this feed's problem only
        raise NotAFeed(f"the feed parser failed: {type(exc).__name__}: {exc}"[:300]) from exc


def _minutes(value: object) -> float | None:
    try:
        minutes = float(str(value).strip())
    except ValueError:
        return None
    return minutes * 60 if 0 < minutes < 1e7 else None


def _update_period(feed_info: Mapping[str, object]) -> float | None:
    period = _UPDATE_PERIODS.get(str(feed_info.get("sy_updateperiod") or "").strip().lower())
    if period is None:
        return None
    try:
        frequency = max(1, int(str(feed_info.get("sy_updatefrequency") or "1").strip()))
    except ValueError:
        frequency = 1
    return period / frequency
