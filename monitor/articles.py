"""From a parsed entry to an article ready to store: keys, language, matches. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from monitor.identity import canonical_link, fingerprint_of_keys
from monitor.parse import Entry, KnownItems, ParsedFeed, UnreadEntry, parse_feed
from monitor.stories import Sketch, sketch
from monitor.text.match import Match, Matcher, MatchInput
from monitor.text.normalize import ItemKey, item_language


@dataclass(frozen=True)
class Candidate:
    """An entry with everything computed that storage and alerting need."""

    entry: Entry
    canonical_link: str | None
    fingerprint: str
    match_key: str  # ItemKey.stored: the folded fields, one per line
    language: str | None
    matches: tuple[Match, ...]
    sketch: Sketch


def entry_language(entry: Entry, key: ItemKey | None = None) -> str | None:
    """The language of the title and the body (`summary or content`), read from the
    entry's keys (`key`, when the caller has folded it already)."""
    key = key or ItemKey.of(entry.title, entry.summary, entry.content)
    return item_language(key.title, key.body)


def prepare(entry: Entry, feed_name: str, matcher: Matcher) -> Candidate:
    # Each field is folded once, here; the language, fingerprint and story lead are read
    # from these keys (each gives what it would compute from the text).
    key = ItemKey.of(entry.title, entry.summary, entry.content)
    language = entry_language(entry, key)
    matches = matcher.match(MatchInput(title=entry.title, summary=entry.summary,
                                       content=entry.content, feed=feed_name,
                                       language=language), key)
    return Candidate(
        entry=entry,
        canonical_link=canonical_link(entry.link),
        fingerprint=fingerprint_of_keys(key.title.key, key.body.key),
        match_key=key.stored,
        language=language,
        matches=tuple(matches),
        sketch=sketch(entry.title, entry.summary, entry.content, key),
    )


@dataclass(frozen=True)
class PreparedDocument:
    """A changed feed's document: parsed, and its entries prepared but for those the feed
    most likely carried already, which are left as they are (unread where parsing could
    tell by the key alone), for `store_candidates` to check."""

    parsed: ParsedFeed
    candidates: list[Candidate | Entry | UnreadEntry]


def prepare_document(body: bytes, headers: Mapping[str, str], url: str, feed_name: str,
                     matcher: Matcher, known: KnownItems | None = None) -> PreparedDocument:
    """Parse and prepare; `known` is what the feed's last stored document held (`parse_feed`).
    Raises NotAFeed as `parse_feed` does."""
    parsed = parse_feed(body, headers, url, known)
    # Parsing left unread the known entries it could tell by their key alone; an entry
    # whose key comes from its text is checked here.
    keys = frozenset(known.keys) if known is not None else frozenset()
    return PreparedDocument(parsed, [
        e if isinstance(e, UnreadEntry) or e.key in keys else prepare(e, feed_name, matcher)
        for e in parsed.entries])
