"""Watch rules compiled into one matcher; pure: data in, matches out.

Term syntax (each entry of a watch's `any`, `all` and `not`):

- A **phrase** matches whole words of the match key (see `normalize`), whatever the letter
  forms, diacritics, kashida, digits, case or ZWNJ/space between its words.
- ``word+`` lets that Persian/Arabic word carry one Persian suffix (ها، های، هایی، ی، ای، ان،
  ات), attached, after a ZWNJ or after a space: ``سازمان همکاری+ اسلامی`` also finds
  «سازمان همکاری‌های اسلامی». Without ``+`` the word must end there, however the text spaces it.
- ``+word`` (first word only) lets the word carry Arabic attached prefixes (و، ف، ب، ک، ل،
  ال، لل and their combinations): ``+منظمة التعاون الإسلامي`` also finds «لمنظمة التعاون» and
  «والمنظمة». A word written with its article (``+المنظمة``) also finds «للمنظمة».
- ``/regex/`` is a Python regular expression searched in the match key (lower case, folded
  letters, single spaces between words); the exception to the one-pass matcher.
- Terms listed in the watch's `case_sensitive` must also match letter case (acronyms:
  ``OIC`` is not «oic»).

All phrase terms of all watches go into one Aho-Corasick automaton over the compact key, so
the cost per item stays flat as the watch list grows; every hit is then checked against the
word boundaries and the term's prefix/suffix rules.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import ahocorasick

from monitor.config import WatchConfig
from monitor.text.normalize import FieldKey, ItemKey, cased_key, compact, match_key

FIELDS = ("title", "summary", "content")
PERSIAN_SUFFIXES = frozenset({"ها", "های", "هایی", "ی", "ای", "ان", "ات"})
_CONJUNCTIONS = ("", "و", "ف")
_PREPOSITIONS = ("", "ب", "ک", "ل")
# Attached prefixes before a word without its article («لمنظمة», «والمنظمة»), and before a
# word written with it, whose alef the preposition ل swallows («للتعاون»).
ARABIC_PREFIXES = frozenset(
    {c + p + a for c in _CONJUNCTIONS for p in _PREPOSITIONS for a in ("", "ال")
     if not (p == "ل" and a)} | {c + "لل" for c in _CONJUNCTIONS}) - {""}
ARTICLE_PREFIXES = frozenset(
    {c + p + "ال" for c in _CONJUNCTIONS for p in _PREPOSITIONS if p != "ل"}
    | {c + "لل" for c in _CONJUNCTIONS})
MAX_PREFIX = max(map(len, ARABIC_PREFIXES))
MAX_SUFFIXED_INNER_WORDS = 3  # each one multiplies the phrase's automaton entries by 8
MAX_SPANS = 50  # per match: a long article naming the OIC 300 times needs no 300 spans
_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff]")


class TermError(ValueError):
    """A term that cannot be compiled; the message says why."""


@dataclass(frozen=True)
class Span:
    """Where a term matched: a range of the field's plain text, and that text."""

    term: str
    field: str
    start: int
    end: int
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"term": self.term, "field": self.field, "start": self.start,
                "end": self.end, "text": self.text}


@dataclass(frozen=True)
class Match:
    watch: str
    terms: tuple[str, ...]
    spans: tuple[Span, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"watch": self.watch, "terms": list(self.terms),
                "spans": [s.as_dict() for s in self.spans]}


@dataclass(frozen=True)
class MatchInput:
    """The texts of one item, and where it came from."""

    title: str
    summary: str = ""
    content: str = ""
    feed: str | None = None
    language: str | None = None


# --- terms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Variant:
    """One automaton entry of a phrase: the compact string and how to check a hit."""

    term: int
    length: int
    prefixes: frozenset[str]  # attached prefixes allowed before the first word
    suffix: bool  # the last word may carry a Persian suffix
    arabic_end: bool  # the last word is Persian/Arabic (its suffixes are not words)
    cased: str | None  # for case-sensitive terms: the compact string with its case


@dataclass
class Term:
    source: str
    case_sensitive: bool
    regex: re.Pattern[str] | None = None
    variants: list[tuple[str, _Variant]] = field(default_factory=list)


@dataclass(frozen=True)
class _Word:
    key: str
    cased: str
    prefix: bool
    suffix: bool


def _phrase_words(source: str) -> list[_Word]:
    words: list[_Word] = []
    for raw in source.split():
        prefix, suffix = raw.startswith("+"), raw.endswith("+") and len(raw) > 1
        core = raw.strip("+")
        keys = match_key(core).split()
        cased = cased_key(core).split()
        if not keys:
            if core:
                continue  # punctuation inside a phrase, as in the text
            raise TermError(f"a lone '+' in {source!r}; write it against a word")
        if (prefix or suffix) and not _ARABIC_SCRIPT.search(core):
            raise TermError(f"'+' marks Persian suffixes or Arabic prefixes; {core!r} is "
                            "not a Persian or Arabic word")
        if prefix and words:
            raise TermError(f"'+{core}': Arabic prefixes are allowed on the first word only")
        for i, (key, case) in enumerate(zip(keys, cased, strict=True)):
            words.append(_Word(key, case, prefix and i == 0, suffix and i == len(keys) - 1))
    if not words:
        raise TermError(f"term {source!r} has no letters or digits")
    return words


def compile_term(source: str, case_sensitive: bool = False, term_id: int = 0) -> Term:
    """Raises TermError for an empty term, a misplaced '+' or an invalid regex."""
    term = Term(source, case_sensitive)
    stripped = source.strip()
    if len(stripped) >= 2 and stripped.startswith("/") and stripped.endswith("/"):
        try:
            term.regex = re.compile(stripped[1:-1])
        except re.error as exc:
            raise TermError(f"invalid regular expression {source!r}: {exc}") from None
        if term.regex.search(""):
            raise TermError(f"regular expression {source!r} matches empty text")
        return term
    words = _phrase_words(stripped)
    first = words[0]
    prefixes: frozenset[str] = frozenset()
    if first.prefix:
        prefixes = ARABIC_PREFIXES
        if first.key.startswith("ال") and len(first.key) > 3:
            # «+التعاون» is found as «تعاون» after an article: «التعاون», «للتعاون».
            prefixes = ARTICLE_PREFIXES
            words[0] = _Word(first.key[2:], first.cased[2:], True, first.suffix)
    inner = [i for i, w in enumerate(words[:-1]) if w.suffix]
    if len(inner) > MAX_SUFFIXED_INNER_WORDS:
        raise TermError(f"{source!r}: at most {MAX_SUFFIXED_INNER_WORDS} words before the "
                        "last may carry '+'")
    options = [["", *sorted(PERSIAN_SUFFIXES)] if i in inner else [""]
               for i in range(len(words))]
    last = words[-1]
    for endings in itertools.product(*options):
        keys = " ".join(w.key + e for w, e in zip(words, endings, strict=True))
        pattern = compact(keys)
        cased = None
        if case_sensitive:
            cased = compact(" ".join(w.cased + e for w, e in zip(words, endings, strict=True)))
        term.variants.append((pattern, _Variant(
            term_id, len(pattern), prefixes, last.suffix,
            bool(_ARABIC_SCRIPT.search(last.key)), cased)))
    return term


# --- one item's scan --------------------------------------------------------------------


@dataclass(frozen=True)
class _Hit:
    term: int
    field: str
    start: int  # compact positions (key positions for regex terms)
    end: int
    on_compact: bool = True


@dataclass(frozen=True)
class _Miss:
    """A hit the boundary rules turned down, kept for `explain`."""

    term: int
    field: str
    start: int
    end: int
    reason: str


def _suffix_after(f: FieldKey, position: int) -> int:
    """The length of the Persian suffix that starts at `position` and ends a word, or 0."""
    text = f.compact
    for suffix in PERSIAN_SUFFIXES:
        if text.startswith(suffix, position) and f.is_boundary(position + len(suffix)):
            return len(suffix)
    return 0


def _prefix_before(f: FieldKey, position: int, prefixes: frozenset[str]) -> int:
    """The length of the allowed prefix that ends at `position` and starts a word, or 0."""
    text = f.compact
    for length in range(1, MAX_PREFIX + 1):
        start = position - length
        if start >= 0 and text[start:position] in prefixes and f.is_boundary(start):
            return length
    return 0


def _check(f: FieldKey, variant: _Variant, end: int) -> tuple[int, int] | str:
    """The (start, end) of the whole words matched, or why the hit does not count."""
    start = end - variant.length
    text = f.compact
    if variant.cased is not None and f.compact_cased[start:end] != variant.cased:
        return "letter case differs (the term is case-sensitive)"
    if not f.is_boundary(start):
        prefix = _prefix_before(f, start, variant.prefixes) if variant.prefixes else 0
        if not prefix:
            if variant.prefixes or not _ARABIC_SCRIPT.match(text[start]):
                return "starts inside a longer word"
            return "starts inside a longer word (a '+' before it allows Arabic prefixes)"
        start -= prefix
    # A suffix attached, or written apart («همکاری های»: one compact word), is this word's.
    suffix = _suffix_after(f, end) if variant.arabic_end and end < len(text) else 0
    if f.is_boundary(end) and not suffix:
        return start, end
    if not suffix:
        if variant.arabic_end and not variant.suffix:
            return "the word goes on (a '+' after it allows Persian suffixes)"
        return "ends inside a longer word"
    if not variant.suffix:
        return "the word carries a suffix the term does not allow (add '+')"
    return start, end + suffix


# --- watches ----------------------------------------------------------------------------


@dataclass
class _Watch:
    config: WatchConfig
    index: int
    any: list[int]
    all: list[int]
    not_: list[int]
    fields: tuple[str, ...]

    def accepts_origin(self, item: MatchInput) -> str | None:
        """Why the item's feed or language is outside this watch, or None."""
        config = self.config
        if config.feeds and not (item.feed and any(
                fnmatch.fnmatchcase(item.feed, g) for g in config.feeds)):
            return f"feed {item.feed!r} is not among {config.feeds}"
        if config.languages and item.language not in config.languages:
            return f"language {item.language!r} is not among {config.languages}"
        return None


@dataclass(frozen=True)
class Explanation:
    """Why one watch did or did not match one item: for `monitor explain`."""

    watch: str
    matched: bool
    match: Match | None
    reasons: tuple[str, ...]


def validate_watches(watches: Sequence[WatchConfig]) -> list[str]:
    """Term problems as 'watches[i].any[j]: message' lines, for the config loader."""
    problems = []
    for i, watch in enumerate(watches):
        sensitive = set(watch.case_sensitive)
        sources = set(watch.any) | set(watch.all) | set(watch.not_)
        for key, terms in (("any", watch.any), ("all", watch.all), ("not", watch.not_)):
            for j, term in enumerate(terms):
                try:
                    compile_term(term, term in sensitive)
                except TermError as exc:
                    problems.append(f"watches[{i}].{key}[{j}]: {exc}")
        for j, term in enumerate(watch.case_sensitive):
            if term not in sources:
                problems.append(f"watches[{i}].case_sensitive[{j}]: {term!r} is not one of "
                                "this watch's terms (write it exactly as in any/all/not)")
    return problems


class Matcher:
    """Every term of every watch, compiled once; `match` is called per item."""

    def __init__(self, watches: Sequence[WatchConfig]) -> None:
        self.watches = tuple(watches)
        self._terms: list[Term] = []
        self._term_ids: dict[tuple[str, bool], int] = {}
        # For each term, the watches that use it as a positive (any/all) term.
        self._owners: list[list[int]] = []
        self._watches: list[_Watch] = []
        for index, config in enumerate(watches):
            sensitive = set(config.case_sensitive)
            any_, all_ = (self._term_ids_of(terms, sensitive, index)
                          for terms in (config.any, config.all))
            not_ = self._term_ids_of(config.not_, sensitive, None)
            self._watches.append(_Watch(config, index, any_, all_, not_, tuple(config.fields)))
        self._regex_terms = [i for i, t in enumerate(self._terms) if t.regex is not None]
        self._fields = tuple(f for f in FIELDS if any(f in w.fields for w in self._watches))
        self._automaton = self._build_automaton()
        self.uses_languages = any(w.config.languages for w in self._watches)

    def _term_ids_of(self, terms: Iterable[str], sensitive: set[str],
                     owner: int | None) -> list[int]:
        """Term ids, compiling each distinct term once; `owner` is the watch that needs
        one of them found to be worth evaluating (None for 'not' terms)."""
        ids = []
        for source in terms:
            term_id = self._term_id(source, source in sensitive)
            if owner is not None:
                self._owners[term_id].append(owner)
            ids.append(term_id)
        return ids

    def _term_id(self, source: str, case_sensitive: bool) -> int:
        key = (source, case_sensitive)
        if key not in self._term_ids:
            self._term_ids[key] = len(self._terms)
            self._terms.append(compile_term(source, case_sensitive, len(self._terms)))
            self._owners.append([])
        return self._term_ids[key]

    def _build_automaton(self) -> ahocorasick.Automaton | None:
        entries: dict[str, list[_Variant]] = defaultdict(list)
        for term in self._terms:
            for pattern, variant in term.variants:
                entries[pattern].append(variant)
        if not entries:
            return None
        automaton = ahocorasick.Automaton()
        for pattern, variants in entries.items():
            automaton.add_word(pattern, tuple(variants))
        automaton.make_automaton()
        return automaton

    @property
    def term_count(self) -> int:
        return len(self._terms)

    # --- scanning -----------------------------------------------------------------------

    def _scan(self, key: ItemKey, misses: list[_Miss] | None = None) -> dict[int, list[_Hit]]:
        """Every accepted occurrence of every term, by term id."""
        found: dict[int, list[_Hit]] = defaultdict(list)
        for name in self._fields:
            f = key.field(name)
            if not f.key:
                continue
            if self._automaton is not None:
                for last, variants in self._automaton.iter(f.compact):
                    for variant in variants:
                        checked = _check(f, variant, last + 1)
                        if isinstance(checked, tuple):
                            found[variant.term].append(_Hit(variant.term, name, *checked))
                        elif misses is not None:
                            misses.append(_Miss(variant.term, name, last + 1 - variant.length,
                                                last + 1, checked))
            for term_id in self._regex_terms:
                term = self._terms[term_id]
                assert term.regex is not None
                text = f.key_cased if term.case_sensitive else f.key
                for m in term.regex.finditer(text):
                    if m.end() > m.start():
                        found[term_id].append(_Hit(term_id, name, m.start(), m.end(), False))
        return found

    def _evaluate(self, watch: _Watch, item: MatchInput, key: ItemKey,
                  found: dict[int, list[_Hit]],
                  with_spans: bool = True) -> tuple[Match | None, list[str]]:
        reasons: list[str] = []
        outside = watch.accepts_origin(item)
        if outside:
            return None, [outside]

        def hits(term_id: int) -> list[_Hit]:
            if term_id not in found:  # most terms of a watch are not in a given item
                return []
            return [h for h in found[term_id] if h.field in watch.fields]

        any_found = [t for t in watch.any if hits(t)]
        if watch.any and not any_found:
            reasons.append("none of the 'any' terms is in " + ", ".join(watch.fields))
        missing = [t for t in watch.all if not hits(t)]
        for t in missing:
            reasons.append(f"'all' term {self._terms[t].source!r} is not found")
        for t in watch.not_:
            for h in hits(t)[:1]:
                reasons.append(f"'not' term {self._terms[t].source!r} is found in {h.field}: "
                               f"«{self._span(h, key).text}»")
        if reasons:
            return None, reasons
        positive = any_found + watch.all
        spans: list[Span] = []
        for t in positive if with_spans else ():
            for h in hits(t)[:MAX_SPANS - len(spans)]:
                spans.append(self._span(h, key))
        return Match(watch.config.name,
                     tuple(dict.fromkeys(self._terms[t].source for t in positive)),
                     tuple(dict.fromkeys(spans))), []

    def _span(self, hit: _Hit, key: ItemKey) -> Span:
        f = key.field(hit.field)
        start, end = f.span_in_text(hit.start, hit.end, on_compact=hit.on_compact)
        return Span(self._terms[hit.term].source, hit.field, start, end, f.text[start:end])

    # --- the interface --------------------------------------------------------------------

    def match(self, item: MatchInput, key: ItemKey | None = None,
              with_spans: bool = True) -> list[Match]:
        """The watches this item matches, in config order, with their terms and spans.

        Pass `key` when it is already computed (ingest computes it once and stores it);
        `with_spans=False` skips locating the spans in the text (the backtest needs none).
        """
        key = key or ItemKey.of(item.title, item.summary, item.content)
        found = self._scan(key)
        candidates = sorted({w for t in found for w in self._owners[t]})
        matches = []
        for index in candidates:
            match, _ = self._evaluate(self._watches[index], item, key, found, with_spans)
            if match is not None:
                matches.append(match)
        return matches

    def explain(self, item: MatchInput, key: ItemKey | None = None) -> list[Explanation]:
        """For every watch: matched or not, and why; includes hits that the word boundary
        rules turned down, so a near miss says which rule stopped it."""
        key = key or ItemKey.of(item.title, item.summary, item.content)
        misses: list[_Miss] = []
        found = self._scan(key, misses)
        out = []
        for watch in self._watches:
            match, reasons = self._evaluate(watch, item, key, found)
            if match is None and not watch.accepts_origin(item):
                for miss in misses:
                    term = self._terms[miss.term]
                    if miss.term in watch.any + watch.all and miss.field in watch.fields:
                        f = key.field(miss.field)
                        word_start, _ = f.word_at(miss.start)
                        _, word_end = f.word_at(max(miss.end - 1, 0))
                        start, end = f.span_in_text(word_start, word_end)
                        reasons.append(f"{term.source!r} appears in {miss.field} «"
                                       f"{f.text[start:end]}» but {miss.reason}")
            out.append(Explanation(watch.config.name, match is not None, match,
                                   tuple(dict.fromkeys(reasons))))
        return out


@functools.lru_cache(maxsize=64)
def _terms_matcher(terms: tuple[str, ...]) -> Matcher:
    usable = []
    for term in terms:
        try:
            compile_term(term)
        except TermError:
            continue
        usable.append(term)
    return Matcher([WatchConfig(name="terms", any=usable)] if usable else [])


def locate_terms(text: str, terms: Sequence[str]) -> list[Span]:
    """Where these terms are in a text, found exactly as the matcher finds them: for
    highlighting an article by the terms an alert names."""
    matches = _terms_matcher(tuple(dict.fromkeys(terms))).match(MatchInput(title=text))
    return [span for match in matches for span in match.spans]
