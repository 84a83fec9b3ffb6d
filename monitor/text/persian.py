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
from itertools import chain
from pathlib import Path
from unittest import mock

import hazm.normalizer
from hazm import Conjugation, Normalizer, WordTokenizer, default_verbs, default_words
from hazm.utils import maketrans

ZWNJ = "\u200c"
_MI = ("می" + ZWNJ, "نمی" + ZWNJ)

# The settings of the display text. Off: what would change the publisher's wording
# (quotes, digits, emoji, repeated letters). On: letter forms, diacritics, affix ZWNJs,
# kashida, spacing, ligatures spelled out, «می» split off verbs.
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
        hashes = array("q", map(hash, strings))
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
        # What `token_spacing` joins two tokens into: a verb form or a corpus word.
        self._joinable = HashSet(chain(
            (form for form in verb_forms() if ZWNJ in form),
            (word for word, joinable in joinable_words.items() if joinable)))
        # What `seperate_mi` asks about: «می‌» or «نمی‌» and the rest of a verb.
        self._seperate_mi = True
        self.verbs = HashSet(form for form in verb_forms() if form.startswith(_MI))
        self._translations = maketrans(self.translation_src, self.translation_dst)
        # Any of the ligatures `unicodes_replacement` spells out (﷽ ﷲ ﻻ ...).
        self._ligature = re.compile("|".join(old for old, _ in self.replacements))

    def normalize(self, text: str) -> str:
        """hazm's `normalize` for `SETTINGS`, steps in hazm's order; the character table is
        built once (hazm rebuilds it on every call)."""
        text = text.translate(self._translations)
        text = self.remove_diacritics(text)
        text = self.correct_spacing(text)
        text = self.unicodes_replacement(text)
        return self.seperate_mi(text)

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
