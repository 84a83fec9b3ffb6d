"""The text pipeline: match keys (both sides agree on every spelling), display text (hazm on
Persian only, Latin and URLs untouched), language guesses, and the shared normalization
cases from hazm, virastar and persian-tools."""

from __future__ import annotations

import json

import pytest

from monitor.text.normalize import (
    FieldKey,
    ItemKey,
    compact,
    detect_language,
    display_text,
    match_key,
    tidy_persian,
)
from tests.conftest import shared_testdata

OIC_FA = "سازمان همکاری اسلامی"


def _same(a: str, b: str) -> bool:
    """What the matcher compares: the compact form of the key."""
    return compact(match_key(a)) == compact(match_key(b))


@pytest.mark.parametrize("variant", [
    "سازمان همکاري اسلامي",  # Arabic yeh
    "سازمان همكاری اسلامی",  # Arabic kaf
    "سازمـان همکـاری اسلامی",  # kashida
    "سازمانِ همکاریِ اسلامی",  # diacritics
    "سازمان  همکاری   اسلامی",  # double spaces
    "سازمان\u200cهمکاری\u200cاسلامی",  # ZWNJ between words
    "سازمان \u200cهمکاری\u200c اسلامی",
    "<b>سازمان</b> همکاری اسلامی",  # markup inside
    "سازمان همکاری&nbsp;اسلامی",
    "\ufeb3\ufe8e\ufeaf\ufee3\ufe8e\ufee5 همکاری اسلامی",  # presentation forms
    "سازمان همکاری\u200f اسلامی",  # a bidi mark
])
def test_every_spelling_has_one_key(variant: str) -> None:
    assert match_key(variant) == match_key(OIC_FA) == "سازمان همکاری اسلامی"


@pytest.mark.parametrize(("a", "b"), [
    ("همکاری‌های", "همکاریهای"),
    ("همکاری‌های", "همکاری های"),
    ("منظمة التعاون الإسلامي", "منظمه التعاون الاسلامی"),  # hamza, teh marbuta, yeh
    ("المؤتمر", "الموتمر"),  # hamza on waw
    ("هیئت", "هییت"),  # hamza on yeh
    ("إلى", "الی"),  # hamza under alef, alef maksura
    ("آیسسکو", "ایسسکو"),  # madda
    ("منظّمة", "منظمة"),  # shadda
    ("۱۳۴۸", "1348"),
    ("١٣٤٨", "1348"),
    ("Coopération", "COOPERATION"),
    ("İslam", "islam"),
])
def test_folding(a: str, b: str) -> None:
    assert _same(a, b)


@pytest.mark.parametrize(("a", "b"), [
    ("OIC", "OICA"),
    ("سازمان همکاری", "سازمان همکار"),
    ("ک", "گ"),
    ("ی", "ئ ی"),
])
def test_what_stays_apart(a: str, b: str) -> None:
    assert not _same(a, b)


def test_key_is_words_and_single_spaces() -> None:
    assert match_key("  COVID-19: bbc.com/news?x=1 — «سلام»!  ") == "covid 19 bbc com news x 1 سلام"
    assert match_key(None) == match_key("") == ""


def test_item_key_stores_fields_one_per_line() -> None:
    key = ItemKey.of("عنوان", "خلاصه OIC", None)
    assert key.stored == "عنوان\nخلاصه oic\n"


def test_field_key_maps_back_to_the_text() -> None:
    text = "<i>x</i> سازمـانِ  همكاري‌ها ۹کیلومتر ﷲ OIC"
    f = FieldKey.of(text)
    assert f.text == text  # markup is masked for the key, offsets kept: spans fit `text`
    assert f.compact == "x سازمانهمکاریها9کیلومترالله oic"
    start = f.compact.index("سازمان")
    span = f.span_in_text(start, start + len("سازمانهمکاریها"))
    assert f.text[span[0]:span[1]] == "سازمـانِ  همكاري‌ها"
    boundaries = [p for p in range(len(f.compact) + 1) if f.is_boundary(p)]
    assert boundaries == [0, 1, 2, 8, 14, 16, 17, 24, 28, 29, 32]
    assert f.word_at(10) == (8, 14)
    assert f.word_at(18) == (17, 24)
    span = f.span_in_text(24, 28)
    assert f.text[span[0]:span[1]] == "ﷲ"  # a ligature is reported whole
    span = f.span_in_text(29, 32)
    assert f.text[span[0]:span[1]] == "OIC"


def test_markup_and_entities_keep_offsets() -> None:
    text = "<p>L&#39;<b>OCI</b>&nbsp;et <i>سازمـان</i> همکاری</p><br>AT&amp;T"
    f = FieldKey.of(text)
    assert f.key == "l oci et سازمان همکاری at t"
    words = []
    position = 0
    for word in f.key.split(" "):
        start, end = f.span_in_text(position, position + len(word), on_compact=False)
        words.append(text[start:end])
        position += len(word) + 1
    assert words == ["L", "OCI", "et", "سازمـان", "همکاری", "AT", "T"]


def test_spans_map_back_on_real_text() -> None:
    """Every word of 100 real articles maps back to text that has the same key."""
    folder = shared_testdata("fars-news")
    articles = json.loads((folder / "fars-news-1.json").read_text(encoding="utf-8"))
    for article in articles[:100]:
        f = FieldKey.of("\n".join(article["paragraphs"]))
        assert len(f.compact_cased) == len(f.compact)
        position = 0
        for word in f.key.split(" "):
            start, end = f.span_in_text(position, position + len(word), on_compact=False)
            assert match_key(f.text[start:end]) == word
            position += len(word) + 1


# --- display text ---------------------------------------------------------------------------


def test_display_text_tidies_persian_and_keeps_latin() -> None:
    raw = "<p>ويروس COVID-19 در bbc.com و https://x.org/a?b=1 گزارش شد .</p> کتاب ها"
    shown = display_text(raw)
    assert "COVID-19" in shown and "bbc.com" in shown and "https://x.org/a?b=1" in shown
    assert "ویروس" in shown  # Arabic yeh tidied to Persian
    assert "کتاب\u200cها" in shown  # hazm's ZWNJ before the plural suffix
    assert "شد." in shown
    assert match_key(shown) == match_key(raw)  # the tidy never changes the key


@pytest.mark.parametrize("number", ["۱۴۰۳/۰۵/۱۲", "۲۵٫۵", "۵+۱", "۱۸:۳۰", "3.5%"])
def test_display_text_keeps_numbers_whole(number: str) -> None:
    assert display_text(f"در تاریخ {number} اعلام شد") == f"در تاریخ {number} اعلام شد"


def test_display_text_leaves_arabic_and_latin_alone() -> None:
    arabic = "الأمين العام لمنظمة التعاون الإسلامي يزور طهران"
    assert display_text(arabic) == arabic
    english = "OIC  chief  visits Tehran, says  COVID-19 is over"
    assert display_text(english) == "OIC chief visits Tehran, says COVID-19 is over"


def test_tidy_persian_keeps_the_spaces_around_latin_runs() -> None:
    assert tidy_persian("نشست OIC در جده") == "نشست OIC در جده"
    assert tidy_persian("سازمان همكاري (OIC)") == "سازمان همکاری (OIC)"


@pytest.mark.parametrize(("raw", "shown"), [
    ("همکاری های دو کشور", "همکاری‌های دو کشور"),  # plural suffix joins with a ZWNJ
    ("سازمان همكاري هاي اسلامي", "سازمان همکاری‌های اسلامی"),  # cp1256 letters too
    ("کشور های عضو", "کشور‌های عضو"),
    ("کشورهای عضو", "کشورهای عضو"),  # written joined: left joined
    ("همکاری‌های دو کشور", "همکاری‌های دو کشور"),  # already right: unchanged
    ("این کار انجام می شود", "این کار انجام می‌شود"),  # «می» prefix
    ("این کار انجام میشود", "این کار انجام می‌شود"),  # «می» stuck to a verb: split
    ("نمیدانم چه میگفت", "نمی‌دانم چه می‌گفت"),
    ("نمی توان گفت", "نمی‌توان گفت"),
    ("میز بزرگ", "میز بزرگ"),  # «میز» is no verb
    ("زمین لرزه ای به بزرگی", "زمین‌لرزه‌ای به بزرگی"),  # a compound of the lexicon
    ("بزرگ ترین کشور ها", "بزرگ‌ترین کشور‌ها"),
    ("شنبهها تعطیل است", "شنبه‌ها تعطیل است"),
    ("او رفته ام", "او رفته‌ام"),
    ("سلام‌‌ دنیـــا", "سلام دنیا"),  # stray ZWNJs and kashida
])
def test_display_text_spacing_a_persian_reader_checks(raw: str, shown: str) -> None:
    assert display_text(raw) == shown
    assert _same(shown, raw)  # the matcher's compact key ignores ZWNJ joints


def _corpus_lines(limit: int) -> list[str]:
    folder = shared_testdata("fars-news")
    articles = json.loads((folder / "fars-news-1.json").read_text(encoding="utf-8"))
    lines = []
    for article in articles[:limit]:
        lines += [article["title"], article["abstract"], *article["paragraphs"]]
    return [line for line in lines if line]


def test_persian_normalizer_is_hazms_normalizer() -> None:
    """The compact lexicons and the table built once change nothing: on real articles and
    on the shared normalization inputs the output is a plain hazm Normalizer's."""
    from hazm import Normalizer

    from monitor.text.persian import SETTINGS, PersianNormalizer

    ours, hazms = PersianNormalizer(), Normalizer(**SETTINGS)
    assert ours.tokenizer.words == {}  # hazm's dict of words was never built
    cases = json.loads((shared_testdata("normalization") / "hazm" / "normalizer_cases.json")
                       .read_text(encoding="utf-8"))
    virastar = json.loads((shared_testdata("normalization") / "virastar" /
                           "cleanup_cases.json").read_text(encoding="utf-8"))
    texts = [*_corpus_lines(150), *(_text(c["input"]) for c in cases),
             *(c["input"] for c in virastar)]
    assert len(texts) > 1500
    differ = [t for t in texts if ours.normalize(t) != hazms.normalize(t)]
    assert differ == []


# Texts where each spacing pattern that `PersianNormalizer` may skip has something to do,
# beside and without the substrings it is skipped for.
SPACING_CASES = [
    "\u200cسلام\u200c به \u200cهمه\u200c", "کاروان\u200c\u200cسرا", "سلام\u200c \u200cدنیا",
    "سلام   دنیا", "دنیـــا\r", "خانه ی ما", "او می رود و نمی آید", "می روند", "کتاب ها و کشور های",
    "بزرگ ترین و اخلال گر", "خانه ام و خانه اش", "شنبهها و جمعهها", '" سلام به همه "',
    "به طول ۹متر و عرض۶", "نسخه 2.5 در ساعت 22:00 تهران،1396.", "سلام.دنیا ( خیلی ) !!!",
    "نمیدانم چه میگفت", "میز و نمیمکت", "رفت\tو آمد", "آیا؟بله", "فی سبیل الله ﷲ ﻻ",
    "\u200c", "", " ", "می", "نمی", "ها", "هها",
]


def test_persian_normalizer_skips_only_what_cannot_change() -> None:
    """The patterns skipped for a missing substring, the tokenizer's padding by `split`
    and the «می» split without a regular expression give hazm's output."""
    from hazm import Normalizer

    from monitor.text.persian import SETTINGS, PersianNormalizer

    ours, hazms = PersianNormalizer(), Normalizer(**SETTINGS)
    assert ours._token_pattern is not None  # the fast tokenizer path is the one tested
    texts = SPACING_CASES + [a + " " + b for a in SPACING_CASES for b in SPACING_CASES[:8]]
    assert [ours.normalize(t) for t in texts] == [hazms.normalize(t) for t in texts]


def test_lexicons_are_hazms() -> None:
    """The words and verb forms read into the compact tables are the ones hazm loads."""
    from hazm import Lemmatizer, WordTokenizer

    from monitor.text.persian import lexicon_words, verb_forms

    hazm_words = {word: count for word, (count, _) in WordTokenizer().words.items()}
    assert dict(lexicon_words()) == hazm_words
    assert set(verb_forms()) == set(Lemmatizer(joined_verb_parts=False).verbs)


def test_hash_set() -> None:
    from monitor.text.persian import HashSet

    words = [f"واژه{i}" for i in range(5000)]
    found = HashSet(words[::2])
    assert len(found) == 2500
    assert all(w in found for w in words[::2])
    assert not any(w in found for w in words[1::2])
    assert "" not in HashSet([]) and len(HashSet([])) == 0


@pytest.mark.parametrize(("text", "language"), [
    ("دیدار دبیرکل سازمان همکاری اسلامی با وزیر خارجه", "fa"),
    ("ديدار دبيركل سازمان همكاري اسلامي با وزير خارجه در تهران", "fa"),  # cp1256 letters
    ("الأمين العام لمنظمة التعاون الإسلامي يزور طهران", "ar"),
    ("منظمة التعاون الإسلامي تدين الهجوم على المسجد", "ar"),
    ("OIC chief calls for ceasefire in Gaza", "en"),
    ("L'OCI appelle à un cessez-le-feu", "fr"),
    ("12345", None),
])
def test_detect_language(text: str, language: str | None) -> None:
    assert detect_language(text) == language


# --- shared normalization cases ---------------------------------------------------------------

# hazm's methods whose input/expected pairs concern letters, digits, diacritics, kashida and
# ZWNJ/spacing; the others (quotes, repeated letters, special symbols) change wording and
# are not the match key's business.
_HAZM_METHODS = {"correct_spacing", "remove_diacritics", "persian_number",
                 "unicodes_replacement", "seperate_mi", "token_spacing"}
_VIRASTAR_TOPICS = ("Arabic kaf", "Arabic Yeh", "kashida", "zwnj between word",
                    "wrong connections", "soft hyphens", "Diacritics", "diacritic",
                    "Arabic numbers", "English numbers", "more than one space")


def _text(value: object) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def test_hazm_normalizer_cases_keep_the_match_key() -> None:
    cases = json.loads((shared_testdata("normalization") / "hazm" / "normalizer_cases.json")
                       .read_text(encoding="utf-8"))
    used = [c for c in cases if c["method"] in _HAZM_METHODS and not c["xfail"]]
    assert len(used) >= 30
    for case in used:
        assert _same(_text(case["input"]), _text(case["expected"])), case


def test_hazm_character_table_folds_like_hazm() -> None:
    table = json.loads((shared_testdata("normalization") / "hazm" /
                        "char_translation_table.json").read_text(encoding="utf-8"))
    letters = [m for m in table["char_map"] if m["to"].strip() and m["from"].strip()]
    assert len(letters) > 300
    differ = [m for m in letters if not _same(m["from"], m["to"])]
    # hazm maps a few symbols onto letters or punctuation (e.g. ﷽ is handled elsewhere);
    # every letter mapping must agree.
    assert [m for m in differ if m["to"].isalpha()] == []


def test_persian_tools_cases() -> None:
    cases = json.loads((shared_testdata("normalization") / "persian-tools" / "cases.json")
                       .read_text(encoding="utf-8"))
    used = [c for c in cases if c["function"] in ("halfSpace", "toPersianChars")
            or c["function"].startswith("digits")]
    assert len(used) >= 50
    for case in used:
        if isinstance(case["expected"], str):
            assert _same(case["input"], case["expected"]), case


def test_virastar_cases_on_letters_digits_diacritics_kashida_zwnj() -> None:
    cases = json.loads((shared_testdata("normalization") / "virastar" / "cleanup_cases.json")
                       .read_text(encoding="utf-8"))
    # A kashida turned into a dash between numbers is punctuation, not a letter matter.
    used = [c for c in cases if any(t in c["it"] for t in _VIRASTAR_TOPICS)
            and "ndash" not in c["it"]]
    assert len(used) >= 10
    failing = [c for c in used if not _same(c["input"], c["expected"])]
    assert failing == []


@pytest.mark.parametrize("title,body", [
    ("سازمان همکاری اسلامی", "نشست وزیران خارجه در جده برگزار شد"),
    ("منظمة التعاون الإسلامي", "عقد الاجتماع في جدة"),
    ("The OIC meets", "Foreign ministers met in Jeddah on Monday."),
    ("L'OCI se réunit", "Les ministres des affaires étrangères"),
    ("", ""), ("تیتر", "متن " * 1000),  # beyond the 3,000 characters the detector reads
    ("a <b", "c> في من"), ("&amp; في", "من"), ("123", "؟!"),
])
def test_item_language_from_keys_is_language_of_text(title: str, body: str) -> None:
    from monitor.text.normalize import detect_language, item_language

    assert item_language(FieldKey.of(title), FieldKey.of(body)) == detect_language(
        f"{title}\n{body}")
