"""Watch rules compiled into one matcher; pure: data in, matches out.

A term is a phrase (matched as whole words on the match key, with Persian suffixes and
Arabic attached prefixes tolerated) or ``/regex/`` (a regular expression on the match key).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from monitor.config import WatchConfig
from monitor.text.normalize import match_key

# Persian plural / ezafe / indefinite endings a word may carry, attached or after a space
# (the ZWNJ that should separate them is often dropped or typed as a space).
_PERSIAN_SUFFIX = r"(?: ?(?:هایی|های|ها|ای|ی|ان|ات))?"
# Arabic attached prefixes: the conjunction, prepositions and the article.
_ARABIC_PREFIX = r"(?:و|ف|ب|ل|ك|ک)?(?:ال|لل)?"
_ARABIC_SCRIPT = re.compile(r"[\u0600-\u06ff]")


@dataclass(frozen=True)
class MatchInput:
    """The display texts of one item, and where it came from."""

    title: str
    summary: str = ""
    content: str = ""
    feed: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Match:
    watch: str
    terms: tuple[str, ...]


@dataclass(frozen=True)
class _Term:
    source: str
    pattern: re.Pattern[str]
    on_raw_text: bool = False  # case-sensitive acronyms are matched on the display text


@dataclass
class _CompiledWatch:
    config: WatchConfig
    any: list[_Term] = field(default_factory=list)
    all: list[_Term] = field(default_factory=list)
    not_: list[_Term] = field(default_factory=list)


def _phrase_pattern(words: list[str]) -> str:
    parts = []
    for i, word in enumerate(words):
        arabic = bool(_ARABIC_SCRIPT.search(word))
        prefix = _ARABIC_PREFIX if (arabic and i == 0) else ""
        suffix = _PERSIAN_SUFFIX if arabic else ""
        parts.append(prefix + re.escape(word) + suffix)
    return r"(?<!\w)" + r" ?".join(parts) + r"(?!\w)"


def compile_term(source: str, case_sensitive: bool = False) -> _Term:
    """Raises ValueError for an empty term or an invalid regex."""
    if len(source) >= 2 and source.startswith("/") and source.endswith("/"):
        try:
            return _Term(source, re.compile(source[1:-1]))
        except re.error as exc:
            raise ValueError(f"invalid regular expression {source!r}: {exc}") from None
    if case_sensitive:
        return _Term(source, re.compile(r"(?<!\w)" + re.escape(source.strip()) + r"(?!\w)"),
                     on_raw_text=True)
    words = match_key(source).split()
    if not words:
        raise ValueError(f"term {source!r} has no letters or digits")
    return _Term(source, re.compile(_phrase_pattern(words)))


def _compile_watch(watch: WatchConfig) -> _CompiledWatch:
    sensitive = set(watch.case_sensitive)
    compiled = _CompiledWatch(watch)
    compiled.any = [compile_term(t, t in sensitive) for t in watch.any]
    compiled.all = [compile_term(t, t in sensitive) for t in watch.all]
    compiled.not_ = [compile_term(t, t in sensitive) for t in watch.not_]
    return compiled


def validate_watches(watches: Sequence[WatchConfig]) -> list[str]:
    """Term problems as 'watches[i].any[j]: message' lines, for the config loader."""
    problems = []
    for i, watch in enumerate(watches):
        sensitive = set(watch.case_sensitive)
        for key, terms in (("any", watch.any), ("all", watch.all), ("not", watch.not_)):
            for j, term in enumerate(terms):
                try:
                    compile_term(term, term in sensitive)
                except ValueError as exc:
                    problems.append(f"watches[{i}].{key}[{j}]: {exc}")
    return problems


class Matcher:
    def __init__(self, watches: Sequence[WatchConfig]) -> None:
        self._watches = [_compile_watch(w) for w in watches]

    @property
    def watch_names(self) -> list[str]:
        return [w.config.name for w in self._watches]

    def match(self, item: MatchInput) -> list[Match]:
        raw_fields = {"title": item.title, "summary": item.summary, "content": item.content}
        key_fields = {name: match_key(text) for name, text in raw_fields.items()}
        matches = []
        for watch in self._watches:
            config = watch.config
            if config.feeds and not (item.feed and any(
                    fnmatch.fnmatchcase(item.feed, g) for g in config.feeds)):
                continue
            if config.languages and item.language not in config.languages:
                continue
            keys = " \n ".join(key_fields[f] for f in config.fields)
            raws = "\n".join(raw_fields[f] for f in config.fields)

            def found(term: _Term, keys: str = keys, raws: str = raws) -> bool:
                return bool(term.pattern.search(raws if term.on_raw_text else keys))

            hits = [t.source for t in watch.any if found(t)]
            if watch.any and not hits:
                continue
            if not all(found(t) for t in watch.all):
                continue
            if any(found(t) for t in watch.not_):
                continue
            matches.append(Match(config.name, tuple(hits + [t.source for t in watch.all])))
        return matches
