"""From a parsed entry to an article ready to store: keys, language, matches. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.identity import canonical_link, fingerprint
from monitor.parse import Entry
from monitor.stories import Sketch, sketch
from monitor.text.match import Match, Matcher, MatchInput
from monitor.text.normalize import ItemKey, detect_language


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


def entry_language(entry: Entry) -> str | None:
    return detect_language(f"{entry.title}\n{entry.summary or entry.content}")


def prepare(entry: Entry, feed_name: str, matcher: Matcher) -> Candidate:
    body = entry.summary or entry.content
    language = entry_language(entry)
    key = ItemKey.of(entry.title, entry.summary, entry.content)  # once per item
    matches = matcher.match(MatchInput(title=entry.title, summary=entry.summary,
                                       content=entry.content, feed=feed_name,
                                       language=language), key)
    return Candidate(
        entry=entry,
        canonical_link=canonical_link(entry.link),
        fingerprint=fingerprint(entry.title, body),
        match_key=key.stored,
        language=language,
        matches=tuple(matches),
        sketch=sketch(entry.title, entry.summary, entry.content),
    )
