"""Story sketches and decisions on hand-made pairs (pure; no database)."""

from __future__ import annotations

import subprocess
import sys
from itertools import combinations

import pytest

from benchmarks.story_cases import STORIES
from monitor import stories
from tests.conftest import ROOT

THRESHOLD = stories.DEFAULT_THRESHOLD

OPENING = ("آغاز نشست وزیران خارجه سازمان همکاری اسلامی در استانبول",
           "نشست وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی صبح امروز با سخنرانی "
           "وزیر خارجه ترکیه در استانبول آغاز شد.")
CLOSING = ("پایان نشست وزیران خارجه سازمان همکاری اسلامی در استانبول با صدور بیانیه",
           "نشست دو روزه وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی عصر امروز با صدور "
           "بیانیه پایانی در استانبول به کار خود پایان داد.")


def score(a: tuple[str, str], b: tuple[str, str]) -> float:
    return stories.similarity(stories.sketch(a[0], a[1], "").shingles,
                              stories.sketch(b[0], b[1], "").shingles)


def test_orthographic_variants_have_the_same_lead_and_band_keys() -> None:
    variants = [
        ("نشست فوق العاده سازمان همکاری اسلامی", "وزیران خارجه کشورهای اسلامی می روند."),
        ("نشست فوق‌العاده سازمان همكاري اسلامي", "وزيران خارجه كشورهاي اسلامي مي‌روند."),
        ("نشست فوقالعاده سازمان همکاری اسلامی", "وزیران خارجه کشورهای اسلامی میروند"),
    ]
    sketches = {stories.sketch(title, summary, "") for title, summary in variants}
    assert len(sketches) == 1
    assert len(next(iter(sketches)).bands) == stories.BANDS


def test_agency_attribution_does_not_count() -> None:
    plain = stories.lead("تیتر", "وزیر خارجه امروز به جده رفت.", "")
    assert stories.lead("تیتر", "به گزارش ایرنا، وزیر خارجه امروز به جده رفت.", "") == plain
    assert stories.lead("تیتر", "خبرگزاري فارس: وزیر خارجه امروز به جده رفت.", "") == plain
    # Only an opening attribution goes; the same words later in the text stay.
    assert stories.lead("تیتر", "وزیر گفت به گزارش ایرنا، او رفت.", "") != plain


def test_reworded_copy_with_another_headline_joins() -> None:
    copy = ("وزیران خارجه سازمان همکاری اسلامی در استانبول گرد هم آمدند", OPENING[1])
    assert score(OPENING, copy) >= THRESHOLD


def test_copy_with_an_extra_sentence_joins() -> None:
    copy = (OPENING[0], OPENING[1] + " این نشست دو روز ادامه دارد و بیانیه پایانی آن فردا "
                                     "منتشر می شود.")
    assert score(OPENING, copy) >= THRESHOLD


def test_truncated_summary_joins() -> None:
    words = OPENING[1].split()
    copy = (OPENING[0], " ".join(words[:len(words) * 2 // 3]) + " …")
    assert score(OPENING, copy) >= THRESHOLD


def test_opening_and_closing_of_one_meeting_stay_apart() -> None:
    assert score(OPENING, CLOSING) < THRESHOLD


def test_hand_written_meeting_stories_separate_exactly() -> None:
    """Every copy pair of STORIES joins; no two different stories do, with a margin."""
    items = [(story, version) for story, versions in STORIES.items() for version in versions]
    same, different = [], []
    for (story_a, a), (story_b, b) in combinations(items, 2):
        (same if story_a == story_b else different).append(score(a, b))
    assert min(same) >= THRESHOLD + 0.05
    assert max(different) <= THRESHOLD - 0.02


def test_a_bare_headline_is_not_contained_in_every_longer_text() -> None:
    bare = ("سازمان همکاری اسلامی", "")
    assert score(bare, OPENING) < THRESHOLD


def test_closest_prefers_the_best_then_the_earliest() -> None:
    new = frozenset(range(100))
    candidates = [(3, frozenset(range(20, 120))), (1, frozenset(range(10, 110))),
                  (2, frozenset(range(10, 110))), (4, frozenset(range(90, 190)))]
    assert stories.closest(new, candidates, 0.7) == (1, 0.9)
    assert stories.closest(new, candidates, 0.95) is None
    assert stories.closest(frozenset(), candidates, 0.1) is None


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_band_keys_are_the_same_in_every_process(hash_seed: str) -> None:
    """Band keys are stored: a restarted process (another hash seed) must compute the same."""
    code = ("from monitor.stories import sketch; "
            f"print(sketch({OPENING[0]!r}, {OPENING[1]!r}, '').bands)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONHASHSEED": hash_seed}, timeout=60, check=True)
    assert result.stdout.strip() == str(stories.sketch(OPENING[0], OPENING[1], "").bands)


def test_remembered_lead_shingles_are_the_computed_ones() -> None:
    title, summary = OPENING
    computed = stories.shingles(stories.lead(title, summary, ""))
    memo = stories._LeadMemo(size=1)
    assert memo.shingles(title, summary) == computed  # computed, then remembered
    assert memo.shingles(title, summary) == computed  # remembered
    assert memo.shingles(*CLOSING) == stories.shingles(stories.lead(*CLOSING, ""))
    assert len(memo._shingles) == 1  # the oldest went
    # A feed without a summary: the lead comes from the content, and so does the key.
    assert stories.lead_shingles(title, "", summary) == computed
    assert stories.sketch(title, summary, "").shingles == computed


def _band_keys_by_definition(shingle_set: frozenset[int]) -> tuple[int, ...]:
    """MinHash band keys in Python integers: min over the set of ((a*x + b) mod 2^64) mod p
    per permutation, each band's rows hashed with its number."""
    import hashlib

    mask = (1 << 64) - 1
    signature = [min(((int(a) * x + int(b)) & mask) % stories._PRIME for x in shingle_set)
                 for a, b in zip(stories._A, stories._B, strict=True)]
    keys = []
    for band in range(stories.BANDS):
        rows = signature[band * stories.ROWS:(band + 1) * stories.ROWS]
        chunk = b"".join(r.to_bytes(8, "little") for r in rows)
        digest = hashlib.blake2b(bytes([band]) + chunk, digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big", signed=True))
    return tuple(keys)


@pytest.mark.parametrize("shingle_set", [
    frozenset({0}), frozenset({1, 2, 3}), frozenset({2**32 - 1, 7}),
    frozenset(range(0, 2**32, 2**32 // 300)),
    stories.shingles(stories.lead(*OPENING, "")), stories.shingles(stories.lead(*CLOSING, "")),
])
def test_band_keys_are_minhash_by_definition(shingle_set: frozenset[int]) -> None:
    assert stories.band_keys(shingle_set) == _band_keys_by_definition(shingle_set)


LEAD_CASES = [
    ("تیتر", "به گزارش ایرنا، وزیر خارجه امروز به جده رفت.", ""),
    ("تیتر", "خبرگزاري فارس: وزیر خارجه امروز به جده رفت.", ""),
    ("تیتر", "به گزارش ایرنا،\u00a0\nوزیر خارجه امروز به جده رفت.", ""),
    ("", "", "به گزارش ایرنا، متن کامل خبر " * 30),
    ("تیتر " * 50, "خلاصه", ""),
    ("a <b", "c> d", ""),  # markup could span the newline: the keys are not used
    ("AT&amp;T", "<p>متن</p>", ""),
    ("", "", ""),
    (OPENING[0], OPENING[1], "محتوای دیگر"),
]


@pytest.mark.parametrize("title,summary,content", LEAD_CASES)
def test_lead_from_item_keys_is_lead_from_text(title: str, summary: str, content: str) -> None:
    from monitor.text.normalize import ItemKey

    key = ItemKey.of(title, summary, content)
    keys = (key.title, key.summary if summary else key.content)
    assert stories.lead(title, summary, content, keys) == stories.lead(title, summary, content)
