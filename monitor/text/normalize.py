"""Display text and match keys: one pipeline, two outputs.

The display text is what a person reads: markup removed, whitespace tidied and, for Persian,
tidied further by hazm's `Normalizer` (Persian letter forms, ZWNJ before affixes, spacing
around punctuation). Latin words, numbers and URLs are kept out of hazm, whose spacing rules
damage them (`COVID-19` -> `COVID- 19`, `bbc.com` -> `bbc. com`).

The match key is what the matcher compares, built the same way for the keywords of a watch
(at config load) and for the text of an item (at ingest), so the two always agree. It folds
every variation that must not change a match:

- Arabic letter forms to Persian (ي ى→ی, ك→ک, ة→ه), presentation forms and ligatures to their
  letters, hamza carriers to their base letter (أ إ آ→ا, ؤ→و, ئ→ی);
- diacritics (harakat, tanwin, shadda, Latin accents), kashida, ZWJ, bidi controls removed;
- Persian and Arabic-Indic digits to ASCII, Latin case-folded;
- every run of spaces, ZWNJs and punctuation becomes one space.

The key keeps words apart with single spaces (regex terms see it, and it is stored with the
article). Matching uses its *compact form*, where the space between two Persian/Arabic
letters is dropped, so «همکاری‌های», «همکاریهای» and «همکاری های» are the same string;
word boundaries are kept beside it (`FieldKey`). Nothing here imports hazm except
`display_text`, so matching alone stays light.
"""

from __future__ import annotations

import html
import re
import threading
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from operator import methodcaller
from typing import Any

_TAG = re.compile(r"<[^<>]{0,2000}>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/h\d|/tr)\b[^>]{0,200}>", re.IGNORECASE)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_MARKUP_HINT = re.compile(r"<[a-zA-Z/!]|&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")

# After folding, Persian/Arabic letters are all in this block; the space between two of them
# (or between one and a number) is a ZWNJ-or-space joint that matching ignores.
_ARABIC_LETTER = "\u0621-\u06ff"
_JOINT = re.compile(f"(?<=[{_ARABIC_LETTER}]) (?=[{_ARABIC_LETTER}0-9])"
                    f"|(?<=[0-9]) (?=[{_ARABIC_LETTER}])")
_NON_SPACE = re.compile(r"\S+")

# Arabic letter forms and their Persian equivalents, applied after NFKD has split off hamza
# and madda (so أ إ آ ؤ ئ ۀ arrive here as their base letters).
_LETTERS = {
    "\u064a": "\u06cc",  # ي Arabic yeh
    "\u0649": "\u06cc",  # ى alef maksura
    "\u06d2": "\u06cc",  # ے yeh barree
    "\u0620": "\u06cc", "\u063d": "\u06cc", "\u063e": "\u06cc", "\u063f": "\u06cc",
    "\u06cd": "\u06cc", "\u06ce": "\u06cc", "\u06d0": "\u06cc", "\u06d1": "\u06cc",
    "\u0643": "\u06a9",  # ك Arabic kaf
    "\u06aa": "\u06a9", "\u063b": "\u06a9", "\u063c": "\u06a9", "\u06ab": "\u06a9",
    "\u0629": "\u0647",  # ة teh marbuta
    "\u06c1": "\u0647", "\u06c2": "\u0647", "\u06c3": "\u0647", "\u06d5": "\u0647",
    "\u06be": "\u0647",
    "\u0671": "\u0627", "\u0672": "\u0627", "\u0673": "\u0627", "\u0675": "\u0627",
    "\u0621": "",  # a standalone hamza is spelled, or not, at will
}
# Letters of other languages written in Arabic script (Urdu, Pashto, Sindhi, Kurdish...)
# that have no "WITH" in their Unicode name, folded to the Persian letter they extend, as
# hazm's Normalizer does. Letters named "<BASE> WITH <MARKS>" fold to <BASE> by name.
_LETTER_ALIASES = {
    "DOTLESS BEH": "ب", "BEEH": "ب", "BEHEH": "ب", "TTEH": "ت", "TTEHEH": "ت", "TEHEH": "ت",
    "DOTLESS QAF": "ق", "AFRICAN QAF": "ق", "DOTLESS FEH": "ف", "VEH": "ف", "PEHEH": "ف",
    "AFRICAN FEH": "ف", "TCHEHEH": "چ", "DDAL": "د", "DAHAL": "د", "DDAHAL": "د", "DUL": "د",
    "RREH": "ر", "NG": "ک", "NGOEH": "گ", "GUEH": "گ", "NOON GHUNNA": "ن", "RNOON": "ن",
    "AFRICAN NOON": "ن", "KIRGHIZ OE": "و", "OE": "و", "U": "و", "YU": "و", "KIRGHIZ YU": "و",
    "VE": "و", "STRAIGHT WAW": "و", "DYEH": "ح", "NYEH": "ح", "ROHINGYA YEH": "ی",
}
# Ligatures that Unicode gives no decomposition.
_LIGATURES = {"\ufdfd": "بسم الله الرحمن الرحيم"}
# Characters that vanish: they never separate words.
_DROPPED = {"\u0640", "\u0674", "\u200d", "\u00ad", "\ufeff", "\u200e", "\u200f", "\u061c",
            *map(chr, range(0x202a, 0x202f)), *map(chr, range(0x2066, 0x206a))}


def _fold_char(ch: str, keep_case: bool) -> str:
    """The key form of one character: '' (dropped), ' ' (separator) or letters/digits."""
    if ch in _DROPPED:
        return ""
    if ch in _LIGATURES:
        return "".join(_fold_char(c, keep_case) for c in _LIGATURES[ch])
    out = []
    for part in unicodedata.normalize("NFKD", ch):
        if part in _DROPPED or unicodedata.category(part) == "Mn":
            continue  # diacritics, Latin accents, hamza/madda marks
        part = _base_letter(part)
        part = _LETTERS.get(part, part)
        if not part:
            continue
        if part.isdecimal():
            part = str(unicodedata.decimal(part))
        elif not part.isalnum():
            part = " "
        elif not keep_case:
            folded = part.casefold()
            # Keep one character per character so that the cased and folded keys align.
            part = folded if len(folded) == len(part) else part.lower()
        out.append(part)
    return "".join(out)


def _base_letter(ch: str) -> str:
    if not "\u0620" <= ch <= "\u08ff":
        return ch
    name = unicodedata.name(ch, "").removeprefix("ARABIC LETTER ")
    if name in _LETTER_ALIASES:
        return _LETTER_ALIASES[name]
    if " WITH " in name:
        try:
            return unicodedata.lookup("ARABIC LETTER " + name.split(" WITH ")[0])
        except KeyError:
            return ch
    return ch


class _FoldTable(dict[int, str]):
    """A `str.translate` table filled on first sight of each character: C speed after.
    Threads may race to fill an entry; they store the same value."""

    def __init__(self, keep_case: bool) -> None:
        super().__init__()
        self.keep_case = keep_case

    def __missing__(self, code: int) -> str:
        value = self[code] = _fold_char(chr(code), self.keep_case)
        return value


_FOLD = _FoldTable(keep_case=False)
_FOLD_CASED = _FoldTable(keep_case=True)


def strip_markup(raw: str) -> str:
    """HTML to plain text: scripts dropped, tags removed, entities decoded."""
    text = _SCRIPT.sub(" ", raw)
    text = _BLOCK_TAG.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def has_markup(text: str) -> bool:
    return bool(_MARKUP_HINT.search(text))


_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
_FILLER = "\u200d"  # dropped from the key, so a masked tag joins what it stood between


def _mask_markup(text: str) -> str:
    """The text with markup made invisible to the key but every offset kept: scripts and
    block tags become spaces, inline tags vanish, an entity becomes its character. Spans
    found in the key then point into the text as given."""
    text = _SCRIPT.sub(lambda m: " " * len(m.group()), text)
    text = _BLOCK_TAG.sub(lambda m: " " * len(m.group()), text)
    text = _TAG.sub(lambda m: _FILLER * len(m.group()), text)

    def entity(m: re.Match[str]) -> str:
        char = html.unescape(m.group())
        return char + _FILLER * (len(m.group()) - len(char)) if len(char) == 1 else (
            " " * len(m.group()))

    return _ENTITY.sub(entity, text)


def plain_text(raw: str | None) -> str:
    """Markup removed and whitespace tidied, nothing else."""
    if not raw:
        return ""
    text = strip_markup(raw) if has_markup(raw) else raw
    text = text.replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return text.strip()


def _key(text: str, table: _FoldTable) -> str:
    return " ".join(text.translate(table).split())


# An item's title and body are keyed for matching and then again for its fingerprint
# (`monitor.identity`), a few calls apart: the last few keys are kept (few, as a content
# field may be 200,000 characters).
@lru_cache(maxsize=8)
def _folded(source: str) -> str:
    return _key(source, _FOLD)


def match_key(text: str | None) -> str:
    """The folded form of a text, words separated by single spaces; never shown."""
    return FieldKey.of(text).key if text else ""


def fold_words(text: str) -> list[str]:
    """The words of `match_key(text)` for a text without markup (`has_markup`), uncached."""
    return text.translate(_FOLD).split()


def cased_key(text: str) -> str:
    """The match key without case folding, for case-sensitive terms."""
    return _key(text, _FOLD_CASED)


def compact(key: str) -> str:
    """A key without the joints between Persian/Arabic words (what the matcher scans)."""
    return _JOINT.sub("", key)


class _cached:
    """functools.cached_property without its per-access lock (Python 3.11), which costs
    more than the keys it caches on the matcher's hot path."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function
        self.name = function.__name__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self.function(instance)
        instance.__dict__[self.name] = value  # later reads find it before the descriptor
        return value


def _is_arabic(ch: str) -> bool:
    return "\u0621" <= ch <= "\u06ff"


@dataclass(frozen=True)
class FieldKey:
    """The key of one field of an item and its compact form; on demand (only for fields
    where a term was found), its word boundaries and the way back to the original text."""

    text: str  # the text as given; spans point into it
    key: str
    source: str  # `text` with any markup masked, offset for offset: what the key folds

    @classmethod
    def of(cls, text: str | None) -> FieldKey:
        text = text or ""
        source = _mask_markup(text) if has_markup(text) else text
        return cls(text, _folded(source), source)

    @_cached
    def _pieces(self) -> list[str]:
        return _JOINT.split(self.key)

    @_cached
    def compact(self) -> str:
        return "".join(self._pieces)

    @_cached
    def _joints(self) -> list[int]:
        """Compact positions where a joint (a dropped space) was."""
        return list(accumulate(map(len, self._pieces[:-1])))

    @_cached
    def _joint_set(self) -> frozenset[int]:
        return frozenset(self._joints)

    def is_boundary(self, position: int) -> bool:
        """Whether a word starts or ends at this compact position: the ends of the text, a
        space, a joint, or a number against a Persian/Arabic word («۹کیلومتر»)."""
        text = self.compact
        if position <= 0 or position >= len(text):
            return True
        before, after = text[position - 1], text[position]
        return (before == " " or after == " " or position in self._joint_set
                or (before.isdigit() and _is_arabic(after))
                or (_is_arabic(before) and after.isdigit()))

    def word_at(self, position: int) -> tuple[int, int]:
        """The (start, end) of the compact word containing `position`."""
        start, end = position, position + 1
        while not self.is_boundary(start):
            start -= 1
        while not self.is_boundary(end):
            end += 1
        return start, min(end, len(self.compact))

    @_cached
    def key_cased(self) -> str:
        """The key without case folding, aligned with `key` character for character."""
        return cased_key(self.source)

    @_cached
    def compact_cased(self) -> str:
        return compact(self.key_cased)

    @_cached
    def _text_map(self) -> tuple[list[tuple[int, int]], list[int], list[int] | None]:
        """The words of the folded text (start, end), where each starts in the key, and,
        when folding changed the length (dropped diacritics, expanded ligatures), where each
        text character's folded output ends."""
        folded = self.source.translate(_FOLD)
        words = [m.span() for m in _NON_SPACE.finditer(folded)]
        key_starts = [0, *accumulate(end - start + 1 for start, end in words)][:-1]
        ends = None
        if len(folded) != len(self.source):
            ends = list(accumulate(map(len, map(_FOLD.__getitem__, map(ord, self.source)))))
        return words, key_starts, ends

    def _text_position(self, key_position: int) -> int:
        words, key_starts, ends = self._text_map
        w = max(bisect_right(key_starts, key_position) - 1, 0)
        start, end = words[w]
        folded = min(start + key_position - key_starts[w], end)
        return folded if ends is None else bisect_right(ends, folded)

    def span_in_text(self, start: int, end: int, *, on_compact: bool = True) -> tuple[int, int]:
        """The range of `text` that produced compact (or key) characters start..end."""
        if end <= start or not self.key:
            return 0, 0
        if on_compact:  # a compact position moves right by the joints before it
            start += bisect_right(self._joints, start)
            end = end - 1 + bisect_right(self._joints, end - 1) + 1
        return self._text_position(start), self._text_position(end - 1) + 1


@dataclass(frozen=True)
class ItemKey:
    """The match keys of an item's fields, computed once at ingest."""

    title: FieldKey
    summary: FieldKey
    content: FieldKey

    @classmethod
    def of(cls, title: str | None, summary: str | None = "",
           content: str | None = "") -> ItemKey:
        return cls(FieldKey.of(title), FieldKey.of(summary), FieldKey.of(content))

    def field(self, name: str) -> FieldKey:
        return getattr(self, name)

    @property
    def body(self) -> FieldKey:
        """The key of the item's body: its summary, or its content when it has none."""
        return self.summary if self.summary.text else self.content

    @property
    def stored(self) -> str:
        """The form kept in `articles.match_key`: the field keys, one per line."""
        return "\n".join((self.title.key, self.summary.key, self.content.key))


# --- language ---------------------------------------------------------------------------

_PERSIAN_LETTERS = re.compile("[\u067e\u0686\u0698\u06af]")  # پ چ ژ گ: not in Arabic
_PERSIAN_FORMS = re.compile("[\u06a9\u06cc]")  # ک ی: Persian keyboards, never Arabic text
_ARABIC_LETTERS = re.compile("[\u0629\u0623\u0625]")  # ة أ إ: rare in Persian spelling
_FA_WORDS = frozenset(("در", "به", "از", "که", "این", "را", "با", "است", "های", "برای", "شد",
                       "کرد", "می", "تا", "هم", "بر", "خود", "نیز", "آن", "یک", "شده", "کند"))
_AR_WORDS = frozenset(("فی", "من", "علی", "الی", "عن", "التی", "الذی", "هذا", "هذه", "ان",
                       "مع", "قد", "کان", "لم", "ما", "بین", "ذلک", "حیث"))
# Letters counted as what is left when everything else is removed (no list of strings).
_NOT_ARABIC_SCRIPT = re.compile(f"[^{_ARABIC_LETTER}]+")
_NOT_LATIN = re.compile("[^A-Za-z\u00c0-\u024f]+")
_FR_HINTS = re.compile(r"[éèêàçôùâîûëï]|\b(?:le|la|les|des|du|de|et|pour|une|un|dans|sur|au|"
                       r"aux|est|avec|l|d|qu)\b")
_EN_HINTS = re.compile(r"\b(?:the|of|and|to|in|for|on|with|is|by|at|from|a|an|as|its)\b")


def detect_language(text: str, words: list[str] | None = None) -> str | None:
    """A coarse guess from letters and common words: 'fa', 'ar', 'en', 'fr' or None.

    Persian written with Arabic yeh and kaf (cp1256 feeds) is still Persian: its common
    words decide, not its letter forms. A caller that already holds the words of
    `match_key(text[:3000])` passes them, which saves folding the text again.
    """
    sample = text[:3000]
    arabic_script = len(_NOT_ARABIC_SCRIPT.sub("", sample))
    latin = len(_NOT_LATIN.sub("", sample))
    if arabic_script == 0 and latin == 0:
        return None
    if arabic_script >= latin:
        if words is None:
            words = match_key(sample).split()
        # Every listed word, and every word starting with «ال», is non-ASCII: counting over
        # all the words gives the counts over the non-ASCII ones.
        persian = (3 * len(_PERSIAN_LETTERS.findall(sample))
                   + len(_PERSIAN_FORMS.findall(sample)) / 4
                   + 2 * sum(map(_FA_WORDS.__contains__, words)))
        arabic = (3 * len(_ARABIC_LETTERS.findall(sample))
                  + 2 * sum(map(_AR_WORDS.__contains__, words))
                  + sum(map(_starts_with_al, words)) / 2)
        return "ar" if arabic > persian else "fa"
    lowered = sample.lower()
    return "fr" if len(_FR_HINTS.findall(lowered)) > len(_EN_HINTS.findall(lowered)) else "en"


_starts_with_al = methodcaller("startswith", "ال")  # the Arabic article


def item_language(title: FieldKey, body: FieldKey) -> str | None:
    """`detect_language(f"{title.text}\n{body.text}")`, from the two fields' keys when they
    are the keys of that text: folding is per character and the newline folds to a space,
    so the words of the joined text are the title's words, then the body's. Not so when
    the detector would cut the text (it reads 3,000 characters) or markup is masked (a
    masked tag could span the newline)."""
    text = f"{title.text}\n{body.text}"
    if len(text) > 3000 or has_markup(title.text) or has_markup(body.text):
        return detect_language(text)
    return detect_language(text, title.key.split() + body.key.split())


def is_right_to_left(text: str) -> bool:
    return detect_language(text) in ("fa", "ar")


# --- display text -------------------------------------------------------------------------

# A run without spaces or Persian/Arabic letters that holds a Latin letter or a digit (of any
# script): a word, number, date, URL or e-mail address that hazm's spacing rules must not
# touch (`COVID-19` -> `COVID- 19`, `۱۴۰۳/۰۵/۱۲` -> `۱۴۰۳ / ۰۵ / ۱۲`, `۲۵٫۵` -> `۲۵ ٫ ۵`).
_RUN_CHAR = ("[^\\s\u200c\u0621-\u063a\u0641-\u064a\u066e-\u066f\u0671-\u06d3\u06d5"
             "\u06fa-\u06ff\ufb50-\ufdff\ufe70-\ufeff]")
_LATIN_RUN = re.compile(f"{_RUN_CHAR}*[A-Za-z0-9\u00c0-\u024f\u0660-\u0669\u06f0-\u06f9]"
                        f"{_RUN_CHAR}*")
_HAS_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff\ufb50-\ufdff\ufe70-\ufeff]")
_normalizer: Any = None
_normalizer_lock = threading.Lock()


def _hazm() -> Any:
    """hazm's Normalizer (`monitor.text.persian`), built on first use only: its lexicons
    cost ~15 MB and ~1 s."""
    global _normalizer
    if _normalizer is None:
        with _normalizer_lock:
            if _normalizer is None:
                from monitor.text.persian import PersianNormalizer

                _normalizer = PersianNormalizer()
    return _normalizer


def load_normalizer() -> None:
    """Build hazm's Normalizer now rather than on the first Persian entry: a daemon pays
    the ~1 s at start instead of delaying its first alert."""
    _hazm()


# A changed feed is parsed whole, so the lines of its entries stored at earlier fetches
# come back every time, and copies of one story repeat lines across feeds; hazm is the
# dearest step of parsing and a pure function of the line.
@lru_cache(maxsize=4096)
def tidy_persian(text: str) -> str:
    """hazm's normalization on the Persian stretches of a line, Latin runs left as they are."""
    normalizer = _hazm()
    out = []
    position = 0
    for run in _LATIN_RUN.finditer(text):
        out.append(_tidy_stretch(normalizer, text[position:run.start()]))
        out.append(run.group())
        position = run.end()
    out.append(_tidy_stretch(normalizer, text[position:]))
    return "".join(out)


def _tidy_stretch(normalizer: Any, stretch: str) -> str:
    if not _HAS_ARABIC_SCRIPT.search(stretch):
        return stretch
    core = stretch.strip()
    lead = stretch[: len(stretch) - len(stretch.lstrip())]
    trail = stretch[len(stretch.rstrip()):]
    tidy = normalizer.normalize(core)
    # hazm drops a ZWNJ or space at the edges; keep one space where the text had one.
    return (" " if lead else "") + tidy + (" " if trail else "")


def display_text(raw: str | None) -> str:
    """What a person reads: the publisher's wording, markup removed, whitespace tidied, and
    Persian tidied by hazm (Arabic-language text keeps its own letter forms)."""
    text = plain_text(raw)
    if not text or detect_language(_LATIN_RUN.sub(" ", text)) != "fa":
        return text
    return "\n".join(tidy_persian(line) for line in text.split("\n"))
