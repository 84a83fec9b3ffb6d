"""hazm's Normalizer for display text, with its word lists held in a few megabytes.

hazm's `Normalizer(correct_spacing=True)` keeps two lexicons as dicts of Python strings:
the 193,000 words of `words.dat` with their counts and tags, and the 346,000 conjugated
forms of the 692 verbs of `verbs.dat` (built through a `Lemmatizer`, which loads the words
a second time). Together they cost about 135 MB of a daemon's memory and 1.5 s at start.

Its rules only ask whether a string is in a lexicon, and only in three shapes:
- two tokens join with a ZWNJ when the joined form is a verb form or a word seen in the
  corpus (count > 0): «زمین لرزه» -> «زمین‌لرزه», «می رود» -> «می‌رود»;
- a suffix token (ها, های, ترین, ای, ...) joins a preceding token that is a known word:
  «کشور های» -> «کشور‌های»;
- «می»/«نمی» stuck to a verb is split off when the split form is a verb form:
  «میشود» -> «می‌شود».
A joined or split form always holds a ZWNJ, so only lexicon entries holding one can ever
answer yes there; the rest of the words are only asked about as a whole.

`PersianNormalizer` is hazm's class with hazm's rules, tokenizer, tables and settings. It
reads the two lexicons straight into `HashSet`s (16 to 32 bytes per string) of just the
entries those questions can reach, so the dicts are never built (about 12 MB instead of
135 MB, and under 1 s at start), and builds its character table once instead of on every
call. Its output is hazm's, character for character (tests/test_normalize.py checks it
over the Fars News corpus and the shared normalization inputs against a plain
`hazm.Normalizer`).
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from unittest import mock

from monitor.text import hazm_lite

# hazm's normalizer and what it needs, without the rest of hazm (`monitor.text.hazm_lite`).
hazm = hazm_lite.load()
Conjugation, Normalizer, WordTokenizer = hazm.Conjugation, hazm.Normalizer, hazm.WordTokenizer
default_verbs, default_words, maketrans = hazm.default_verbs, hazm.default_words, hazm.maketrans

ZWNJ = "\u200c"
_MI = ("می" + ZWNJ, "نمی" + ZWNJ)

# The settings of the display text. Off: what would change the publisher's wording
# (quotes, digits, emoji, repeated letters). On: letter forms, diacritics, affix ZWNJs,
# kashida, spacing, ligatures spelled out, «می» split off verbs.
# hazm's spacing patterns, by their source, and substrings without which each cannot match:
# such a pattern is skipped when none of them is in the text, since its substitution would
# change nothing. (Without a ZWNJ, `\b\u200c*\B` would need \b and \B at one position.) A
# pattern not listed here, as after a change in hazm, is always applied.
_NEEDLES: dict[str, tuple[str, ...]] = {
    r" {2,}": ("  ",),
    r"\n{3,}": ("\n\n\n",),
    r"\u200c{2,}": (ZWNJ + ZWNJ,),
    r"\u200c{1,} ": (ZWNJ + " ",),
    r" \u200c{1,}": (" " + ZWNJ,),
    r"\b\u200c*\B": (ZWNJ,),
    r"\B\u200c*\b": (ZWNJ,),
    r"[ـ\r]": ("ـ", "\r"),
    "([^ ]ه) ی ": ("ه ی ",),
    "(^| )(ن?می) ": ("می ",),
    # (hazm writes this lookahead with a real newline and escaped brackets)
    r"(?<=[^\n\d \.:!،؛؟»\]\)\}«\[\(\{]{2}) (تر(ین?)?|گری?|های?)"
    "(?=[ \n\\.:!،؛؟»\\]\\)\\}«\\[\\(\\{]|$)": (" تر", " گر", " ها"),
    r"([^ ]ه) (ا(م|یم|ش|ند|ی|ید|ت))(?=[ \n\.:!،؛؟»\]\)\}]|$)": ("ه ا",),
    "(ه)(ها)": ("هها",),
    '" ([^\n"]+) "': ('" ',),
}


def _compiled(patterns: list[tuple[str, str]]) -> list[tuple[re.Pattern[str], str,
                                                             tuple[str, ...] | None]]:
    return [(re.compile(pattern), replacement, _NEEDLES.get(pattern))
            for pattern, replacement in patterns]


def _replace_all(patterns: list[tuple[re.Pattern[str], str, tuple[str, ...] | None]],
                 text: str) -> str:
    """hazm's `regex_replace` on compiled patterns, skipping those that cannot match."""
    for pattern, replacement, needles in patterns:
        if needles is None or any(needle in text for needle in needles):
            text = pattern.sub(replacement, text)
    return text


SETTINGS = {"correct_spacing": True, "persian_style": False, "persian_numbers": False,
            "remove_specials_chars": False, "decrease_repeated_chars": False,
            "remove_diacritics": True, "unicodes_replacement": True, "seperate_mi": True}


class HashSet:
    """A read-only set of strings kept as a table of their 64-bit hashes: 16 to 32 bytes
    per string instead of ~100 for a set of str. A string that is not in the set but shares
    the hash of one that is would be taken for it: with 220,000 strings, about once in 10^14
    lookups. (`hash` of a str is salted per process, so the table is built in the process.)

    The table is open addressing with linear probing, at most half full: a lookup reads one
    or two slots on average. -1 marks an empty slot, as `hash` never returns -1."""

    def __init__(self, strings: Iterable[str]) -> None:
        # The hashes go through an array, not a set of ints: building leaves no scattered
        # small objects behind to keep the allocator's memory from the system.
        self._build(array("q", map(hash, strings)))

    @classmethod
    def of_hashes(cls, hashes: array[int]) -> HashSet:
        """The set of the strings whose `hash`es these are: for a caller that sorts one
        stream of strings into several sets in a single pass."""
        table = cls.__new__(cls)
        table._build(hashes)
        return table

    def _build(self, hashes: array[int]) -> None:
        size = 1 << (2 * len(hashes)).bit_length()
        self._mask = mask = size - 1
        self._slots = slots = array("q", [-1]) * size
        self._length = 0
        for value in hashes:
            i = value & mask
            while (stored := slots[i]) != value:
                if stored == -1:
                    slots[i] = value
                    self._length += 1
                    break
                i = (i + 1) & mask

    def __contains__(self, text: object) -> bool:
        value = hash(text)
        slots, mask = self._slots, self._mask
        i = value & mask
        while (stored := slots[i]) != -1:
            if stored == value:
                return True
            i = (i + 1) & mask
        return False

    def __len__(self) -> int:
        return self._length


def lexicon_words(words_file: str | Path = default_words) -> Iterator[tuple[str, int]]:
    """(word, corpus count) for each line of hazm's words file, read as its `words_list`
    reads it, one line at a time."""
    with Path(words_file).open(encoding="utf-8") as lines:
        for line in lines:
            item = line.strip().split("\t")
            if len(item) == 3:
                yield item[0], int(item[1])


def verb_forms(verbs_file: str | Path = default_verbs) -> Iterator[str]:
    """Every form hazm's `Lemmatizer(joined_verb_parts=False)` knows as a verb, one at a
    time (hazm builds them all into a dict): «است» and each tense of each verb."""
    yield "است"
    conjugation = Conjugation()
    with Path(verbs_file).open(encoding="utf8") as lines:
        for line in lines:
            if line:
                yield from conjugation.get_all(line.strip())


class PersianNormalizer(Normalizer):
    """hazm's Normalizer with `SETTINGS`, its lexicons compact (see the module docstring)."""

    def __init__(self) -> None:
        # hazm's constructor gives its tokenizer the 193,000 words as a dict (~80 MB while
        # it lasts, and memory scattered after), though `tokenize` never reads them; and
        # with «می» splitting on, a Lemmatizer that loads them again with the verbs. It is
        # built with a tokenizer on an empty word list and without «می» splitting; the
        # words and verb forms are read here, straight into compact tables.
        with mock.patch.object(hazm.normalizer, "WordTokenizer",
                               partial(WordTokenizer, words_file=os.devnull)):
            super().__init__(**{**SETTINGS, "seperate_mi": False})
        joinable_words: dict[str, bool] = {}  # the last line of a word counts, as in hazm

        def all_words() -> Iterator[str]:
            for word, count in lexicon_words():
                if ZWNJ in word:
                    joinable_words[word] = count > 0
                yield word

        self.words = HashSet(all_words())
        # The verb forms are made in one pass (conjugating is 0.2 s) and sorted by hash:
        # those `token_spacing` may join two tokens into (with a ZWNJ) and, among them,
        # those `seperate_mi` asks about («می‌» or «نمی‌» and the rest of a verb).
        joined_verbs, mi_verbs = array("q"), array("q")
        for form in verb_forms():
            if ZWNJ in form:
                joined_verbs.append(hash(form))
                if form.startswith(_MI):
                    mi_verbs.append(hash(form))
        # What `token_spacing` joins two tokens into: a verb form or a corpus word.
        joined_verbs.extend(hash(word) for word, joinable in joinable_words.items() if joinable)
        self._joinable = HashSet.of_hashes(joined_verbs)
        self._seperate_mi = True
        self.verbs = HashSet.of_hashes(mi_verbs)
        self._translations = maketrans(self.translation_src, self.translation_dst)
        # Any of the ligatures `unicodes_replacement` spells out (﷽ ﷲ ﻻ ...).
        self._ligature = re.compile("|".join(old for old, _ in self.replacements))
        # hazm passes its patterns as strings to `re.sub` on every call; compiled once here.
        self._diacritics = _compiled(self.diacritics_patterns)
        self._extra_space = _compiled(self.extra_space_patterns)
        self._affix_spacing = _compiled(self.affix_spacing_patterns)
        self._punctuation_spacing = _compiled(self.punctuation_spacing_patterns)
        self._joint_mi = re.compile(r"\bن?می[آابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهی]+")
        tokenizer = self.tokenizer
        # The tokenizer pads each punctuation or number run with spaces through `sub(r" \1 ")`
        # (a Python call per run on Python 3.11); its group is the whole match, so joining
        # `split`'s pieces with spaces gives the same text. Only with the options hazm's
        # Normalizer gives its tokenizer, which do nothing else.
        self._token_pattern: re.Pattern[str] | None = tokenizer.pattern if not (
            tokenizer._join_verb_parts or tokenizer._join_abbreviation
            or tokenizer.separate_emoji or tokenizer.replace_emails or tokenizer.replace_links
            or tokenizer.replace_ids or tokenizer.replace_hashtags
            or tokenizer.replace_numbers) and tokenizer.pattern.groups == 1 else None

    def normalize(self, text: str) -> str:
        """hazm's `normalize` for `SETTINGS`, steps in hazm's order; the character table is
        built once (hazm rebuilds it on every call)."""
        text = text.translate(self._translations)
        text = self.remove_diacritics(text)
        text = self.correct_spacing(text)
        text = self.unicodes_replacement(text)
        return self.seperate_mi(text)

    def remove_diacritics(self, text: str) -> str:
        return _replace_all(self._diacritics, text)

    def correct_spacing(self, text: str) -> str:
        """hazm's `correct_spacing`: its patterns compiled and skipped where they cannot
        match, and its tokenizer's padding done by `split`."""
        text = _replace_all(self._extra_space, text)
        text = "\n".join(" ".join(self.token_spacing(self._tokenize(line)))
                         for line in text.split("\n"))
        text = _replace_all(self._affix_spacing, text)
        return _replace_all(self._punctuation_spacing, text)

    def _tokenize(self, line: str) -> list[str]:
        if self._token_pattern is None:
            return self.tokenizer.tokenize(line)
        padded = " ".join(self._token_pattern.split(line.replace("\n", " ").replace("\t", " ")))
        return [token for token in padded.split(" ") if token]

    def seperate_mi(self, text: str) -> str:
        """hazm's `seperate_mi`: «می»/«نمی» stuck to a verb is split off with a ZWNJ. (hazm
        inserts the ZWNJ with a regular expression per candidate word.)"""
        for word in self._joint_mi.findall(text):
            cut = 3 if word.startswith("نمی") else 2  # the pattern's «ن?می» is greedy
            split = word[:cut] + ZWNJ + word[cut:]
            if split in self.verbs:
                text = text.replace(word, split)
        return text

    def unicodes_replacement(self, text: str) -> str:
        """hazm's, skipped where none of its eleven patterns can match (nearly always)."""
        return super().unicodes_replacement(text) if self._ligature.search(text) else text

    def token_spacing(self, tokens: list[str]) -> list[str]:
        """hazm's `token_spacing` on the compact lexicons: a token joins the one before it
        with a ZWNJ when the pair is a verb form or a word seen in the corpus, or when it
        is a suffix and the one before is a known word. (hazm also vetoes a join when the
        token and the next form a `_`-joined verb, which its Lemmatizer without joined
        verb parts never holds.)"""
        result: list[str] = []
        for token in tokens:
            if result:
                pair = result[-1] + ZWNJ + token
                if pair in self._joinable or (token in self.suffixes
                                              and result[-1] in self.words):
                    result[-1] = pair
                    continue
            result.append(token)
        return result
