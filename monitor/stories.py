"""Stories: which earlier article a new one retells. Pure: sketches and decisions, no I/O.

An article is reduced to its *lead*: the match key of its headline and the first words of
its summary (or of its content when the feed sends no summary), with every space removed, so
that «فوق العاده» / «فوق‌العاده» / «فوقالعاده» and Arabic/Persian letter forms are the same
text. Two leads are compared by the share of character 4-grams of the shorter one that the
other contains.

Finding the earlier articles worth comparing must not scan the database, so each lead also
gets a MinHash signature cut into bands (locality-sensitive hashing): two leads share at
least one band key with a probability that rises steeply with their similarity. The band
keys are stored and indexed; a new article is compared exactly only with the few stored
articles that share a band key with it. The threshold and the banding were chosen from
measurements (`benchmarks/story_quality.py`, README "Stories").
"""

from __future__ import annotations

import hashlib
import re
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np

from monitor.text.normalize import FieldKey, ItemKey, fold_words, has_markup, match_key

SHINGLE_CHARS = 4
# Headline plus about two sentences: what an RSS description carries. A full article body
# in one feed and a two-line summary in another are then compared on the same footing.
LEAD_WORDS = 40
MIN_SHINGLES = 30
BANDS = 32
ROWS = 3
DEFAULT_THRESHOLD = 0.75

_PRIME = (1 << 61) - 1


def _coefficients(name: bytes) -> np.ndarray:
    # Derived from fixed names, not from a random generator whose stream may change between
    # numpy releases: band keys are stored, so every process and release must compute the
    # same ones for the same text.
    return np.array([int.from_bytes(hashlib.blake2b(name + i.to_bytes(2, "big"),
                                                    digest_size=8).digest(), "big")
                     % (_PRIME - 1) + 1 for i in range(BANDS * ROWS)], dtype=np.uint64)


_A = _coefficients(b"monitor.stories.a")
_B = _coefficients(b"monitor.stories.b")


@dataclass(frozen=True)
class StoryRules:
    """The configured clustering: `stories.window`, `stories.threshold`, and the watches with
    `alert_on_update`."""

    window: timedelta = timedelta(days=3)
    threshold: float = DEFAULT_THRESHOLD
    update_watches: frozenset[str] = frozenset()


DEFAULT_RULES = StoryRules()


@dataclass(frozen=True)
class Sketch:
    """An article's lead as shingles (for exact comparison) and band keys (for lookup)."""

    shingles: frozenset[int]
    bands: tuple[int, ...]


# "به گزارش ایرنا،", "خبرگزاری فارس:", "به گزارش خبرنگار مهر از تبریز،": who tells it, not
# what happened; a republishing agency replaces it with its own.
_ATTRIBUTION = re.compile(
    r"^\s*(?:به\s+گزارش[^،,:.\n]{0,60}[،,:]|خبرگزار[یي]\s+[^:،,\n]{1,30}[:،,])\s*")


def lead(title: str, summary: str, content: str,
         keys: tuple[FieldKey, FieldKey] | None = None) -> str:
    """The text a story is recognised by: headline + start of the body, spacing removed.

    `keys`, the keys of the title and of the body (`summary or content`) when the caller
    holds them, save folding the text again."""
    source = summary or content
    body = _ATTRIBUTION.sub("", source, count=1)
    words = None if keys is None else _lead_words(title, source, body, *keys)
    if words is None:
        words = match_key(f"{title}\n{body}").split()
    return "".join(words[:LEAD_WORDS])


def _lead_words(title: str, source: str, body: str, title_key: FieldKey,
                source_key: FieldKey) -> list[str] | None:
    """The first words of `match_key(f"{title}\n{body}")` taken from the fields' keys, or
    None when those are not keys of this text. Folding is per character and the newline
    folds to a space, so those words are the title's words, then the body's; and the
    attribution cut from the front of the body ends in a comma, colon or space, which folds
    to a space, so the body's words are the source's words after the attribution's."""
    if (title_key.text is not title or source_key.text is not source
            or has_markup(title) or has_markup(source)):
        return None  # markup is masked, and a masked tag could span the newline
    words = title_key.key.split(None, LEAD_WORDS)[:LEAD_WORDS]
    skip = len(fold_words(source[:len(source) - len(body)]))
    return words + source_key.key.split(None, skip + LEAD_WORDS)[skip:skip + LEAD_WORDS]


def shingles(text: str) -> frozenset[int]:
    if len(text) <= SHINGLE_CHARS:
        return frozenset({zlib.crc32(text.encode("utf-8"))}) if text else frozenset()
    return frozenset(zlib.crc32(text[i:i + SHINGLE_CHARS].encode("utf-8"))
                     for i in range(len(text) - SHINGLE_CHARS + 1))


_MERSENNE_SHIFT = np.uint64(61)
_P = np.uint64(_PRIME)
_ROW_BYTES = ROWS * 8
_BAND_PREFIXES = [bytes([band]) for band in range(BANDS)]


def band_keys(shingle_set: frozenset[int]) -> tuple[int, ...]:
    """One signed 64-bit key per band of the MinHash signature (fits a BIGINT column)."""
    if not shingle_set:
        return ()
    values = np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set))
    # a*x + b for every permutation at once; uint64 wrap-around is part of the hash.
    with np.errstate(over="ignore"):
        hashed = values[:, None] * _A
        hashed += _B
    # Then mod p without numpy's slow 64-bit division: p = 2^61 - 1, so 2^61 = 1 (mod p)
    # and y = (y >> 61) + (y & p) (mod p), a sum below 2p; min(r, r - p) then picks r - p
    # exactly when r >= p (below p, r - p wraps around to above r).
    reduced = hashed >> _MERSENNE_SHIFT
    hashed &= _P
    reduced += hashed
    with np.errstate(over="ignore"):
        np.subtract(reduced, _P, out=hashed)
    np.minimum(reduced, hashed, out=reduced)
    signature = reduced.min(axis=0).astype("<u8", copy=False).tobytes()
    return tuple(
        int.from_bytes(hashlib.blake2b(_BAND_PREFIXES[band]
                                       + signature[band * _ROW_BYTES:(band + 1) * _ROW_BYTES],
                                       digest_size=8).digest(), "big", signed=True)
        for band in range(BANDS))


# How many leads `lead_shingles` remembers, at about 1 KB each.
LEAD_MEMO_SIZE = 8192


class _LeadMemo:
    """The shingles of the most recently used leads, by a digest of the text they come from.

    A stored article is compared with every later article that shares a band key with it,
    and its lead costs a pass of text normalization each time; remembered, it costs a dict
    lookup. Kept as packed arrays (a frozenset of 200 ints is over ten times the size).
    Refreshes run in threads, hence the lock.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._shingles: OrderedDict[bytes, array[int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(title: str, body: str) -> bytes:
        return hashlib.blake2b(f"{len(title)}:{title}{body}".encode(), digest_size=16).digest()

    def shingles(self, title: str, body: str,
                 keys: tuple[FieldKey, FieldKey] | None = None) -> frozenset[int]:
        key = self._key(title, body)
        with self._lock:
            packed = self._shingles.get(key)
            if packed is not None:
                self._shingles.move_to_end(key)
        if packed is not None:
            return frozenset(packed)
        found = shingles(lead(title, body, "", keys))
        self._keep(key, found)
        return found

    def remember(self, title: str, body: str, found: frozenset[int]) -> None:
        """Take the shingles of this lead as computed elsewhere (`sketch` in a parse worker)."""
        self._keep(self._key(title, body), found)

    def _keep(self, key: bytes, found: frozenset[int]) -> None:
        with self._lock:
            self._shingles[key] = array("I", found)
            self._shingles.move_to_end(key)
            while len(self._shingles) > self.size:
                self._shingles.popitem(last=False)


_memo = _LeadMemo(LEAD_MEMO_SIZE)


def lead_shingles(title: str, summary: str, content: str) -> frozenset[int]:
    """`shingles(lead(title, summary, content))`, remembered for recent texts."""
    return _memo.shingles(title, summary or content)


def remember_lead(title: str, summary: str, content: str, sketch: Sketch) -> None:
    """Make `lead_shingles` of this text answer with the sketch's shingles. A new article's
    sketch comes from a parse worker, while the daemon compares stored articles with the
    later ones that share a band key: most articles of a busy story are read back that way
    soon after they are stored, and the daemon would fold and shingle each lead again."""
    _memo.remember(title, summary or content, sketch.shingles)


def sketch(title: str, summary: str, content: str, key: ItemKey | None = None) -> Sketch:
    """The item's sketch; `key`, its keys when the caller holds them, saves folding again."""
    keys = None if key is None else (key.title, key.body)
    shingle_set = _memo.shingles(title, summary or content, keys)
    return Sketch(shingle_set, band_keys(shingle_set))


def similarity(a: frozenset[int], b: frozenset[int]) -> float:
    """The share of the shorter lead found in the other (the overlap coefficient).

    A copy with a sentence added or its summary cut short keeps most of its shingles in the
    original, where Jaccard would punish the length difference. The floor on the denominator
    keeps a bare few-word headline from counting as "contained" in any longer text.
    """
    if not a or not b:
        return 0.0
    return len(a & b) / max(min(len(a), len(b)), MIN_SHINGLES)


# A candidate's key: an article id, or any other key that orders candidates by age.
_Key = TypeVar("_Key", int, tuple[int, int])


def closest(new: frozenset[int], candidates: Iterable[tuple[_Key, frozenset[int]]],
            threshold: float) -> tuple[_Key, float] | None:
    """The (key, score) of the most similar candidate at or above the threshold, if any.

    Ties go to the earliest key, so a story keeps being found through its first article.
    """
    best: tuple[_Key, float] | None = None
    for key, other in candidates:
        score = similarity(new, other)
        if score >= threshold and (best is None or score > best[1]
                                   or (score == best[1] and key < best[0])):
            best = (key, score)
    return best
