"""Watch rules: term syntax, word boundaries, boolean rules, filters, spans, the shipped
watch list on headlines in four languages, and the Fars News corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monitor.config import ConfigError, WatchConfig, load_config, parse_config
from monitor.text.match import Matcher, MatchInput, TermError, compile_term
from tests.conftest import ROOT, shared_testdata


def _watches(*watches: dict) -> Matcher:
    return Matcher([WatchConfig.model_validate(w) for w in watches])


def _names(matcher: Matcher, title: str, **fields: str) -> list[str]:
    return [m.watch for m in matcher.match(MatchInput(title=title, **fields))]


# --- term syntax and word boundaries ----------------------------------------------------


@pytest.mark.parametrize(("term", "text", "found"), [
    # Whole words: a phrase never matches inside a longer word, in any script.
    ("OIC", "OICA reports car sales", False),
    ("OIC", "the OIC's summit", True),
    ("OIC", "OIC-led talks", True),
    ("اکو", "سفر به باکو", False),
    ("اکو", "اکوسیستم منطقه", False),
    ("اکو", "نشست اکو در تهران", True),
    # Without '+' a word must end there, however the text spaces its suffix.
    ("سازمان همکاری اسلامی", "سازمان همکاریهای اسلامی", False),
    ("سازمان همکاری اسلامی", "سازمان همکاری‌های اسلامی", False),
    ("سازمان همکاری اسلامی", "سازمان همکاری های اسلامی", False),
    ("همکاری", "همکاری های دو کشور", False),
    # With '+' every spacing of the suffix is the same word.
    ("سازمان همکاری+ اسلامی", "سازمان همکاریهای اسلامی", True),
    ("سازمان همکاری+ اسلامی", "سازمان همکاری‌های اسلامی", True),
    ("سازمان همکاری+ اسلامی", "سازمان همکاری های اسلامی", True),
    ("سازمان همکاری+ اسلامی", "سازمان همکاری اسلامی", True),
    ("سازمان همکاری+ اسلامی", "سازمان همکاریی اسلامی", True),
    ("سازمان همکاری+ اسلامی", "سازمان همکاریخوب اسلامی", False),
    ("همکاری+", "همکاری‌هایی که", True),
    ("همکاری+", "همکاریات", True),
    ("همکاری+", "همکاریهاش", False),
    ("کتاب+", "کتاب‌ها", True),
    ("کتاب+", "کتابخانه", False),
    # The compact form: ZWNJ, space or nothing between the words of a phrase.
    ("بین المللی", "همایش بین‌المللی", True),
    ("بین المللی", "همایش بینالمللی", True),
    ("بین‌المللی", "همایش بین المللی", True),
    # Arabic prefixes only where the term says so.
    ("منظمة التعاون", "لمنظمة التعاون", False),
    ("+منظمة التعاون", "لمنظمة التعاون", True),
    ("+منظمة التعاون", "والمنظمة التعاون", True),
    ("+منظمة التعاون", "وبمنظمة التعاون", True),
    ("+منظمة التعاون", "ومنظمة التعاون", True),
    ("+منظمة التعاون", "كمنظمة التعاون", True),
    ("+منظمة التعاون", "جمنظمة التعاون", False),
    ("+التعاون", "للتعاون الاقتصادي", True),
    ("+التعاون", "والتعاون", True),
    ("+التعاون", "بالتعاون", True),
    ("+التعاون", "تعاون", True),
    ("+التعاون", "لتعاون", False),
    # Latin: case, accents and punctuation fold away.
    ("Organisation de la coopération islamique", "ORGANISATION DE LA COOPERATION ISLAMIQUE",
     True),
    ("Al-Quds Committee", "the Al Quds committee met", True),
    ("Islamic Cooperation", "Islamic cooperationists", False),
])
def test_phrase_boundaries(term: str, text: str, found: bool) -> None:
    matcher = _watches({"name": "w", "any": [term]})
    assert (_names(matcher, text) == ["w"]) is found


def test_case_sensitive_terms_match_letter_case_only_there() -> None:
    matcher = _watches({"name": "w", "any": ["OIC", "islamic summit"],
                        "case_sensitive": ["OIC"]})
    assert _names(matcher, "OIC summit") == ["w"]
    assert _names(matcher, "oic summit") == []
    assert _names(matcher, "Oic summit") == []
    assert _names(matcher, "ISLAMIC SUMMIT") == ["w"]


def test_regex_terms_search_the_match_key() -> None:
    matcher = _watches({"name": "w", "any": [r"/organi[sz]ation (of|for) (the )?islamic/"]})
    assert _names(matcher, "The Organization for Islamic Cooperation") == ["w"]
    assert _names(matcher, "organisation of the ISLAMIC conference") == ["w"]
    assert _names(matcher, "Organization of American States") == []
    cased = _watches({"name": "w", "any": ["/OI[CA]/"], "case_sensitive": ["/OI[CA]/"]})
    assert _names(cased, "OIC") == ["w"] and _names(cased, "oic") == []
    spans = matcher.match(MatchInput(title="Big: Organization for Islamic"))[0].spans
    assert [(s.start, s.end, s.text) for s in spans] == [(5, 29, "Organization for Islamic")]


@pytest.mark.parametrize(("term", "message"), [
    ("/(unclosed/", "invalid regular expression"),
    ("/a*/", "matches empty text"),
    ("+OIC", "not a Persian or Arabic word"),
    ("سازمان +همکاری", "first word only"),
    ("...", "no letters or digits"),
    ("سازمان + همکاری", "a lone '+'"),
    ("الف+ ب+ پ+ ت+ ث", "at most 3 words"),
])
def test_bad_terms_say_why(term: str, message: str) -> None:
    with pytest.raises(TermError, match=re.escape(message)):
        compile_term(term)


def test_config_errors_name_the_yaml_path() -> None:
    data = {"watches": [
        {"name": "ok", "any": ["OIC"]},
        {"name": "bad", "any": ["OIC", "x", "y", "/[/"], "case_sensitive": ["OCI"],
         "languages": ["de"], "colour": "red"},
    ]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    problems = "\n".join(info.value.problems)
    assert "watches[1].colour: unknown key" in problems
    assert "watches[1].languages[0]" in problems
    data["watches"][1] = {"name": "bad", "any": ["OIC", "x", "y", "/[/"],
                          "case_sensitive": ["OCI"]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    problems = "\n".join(info.value.problems)
    assert "watches[1].any[3]: invalid regular expression '/[/'" in problems
    assert "watches[1].case_sensitive[0]: 'OCI' is not one of this watch's terms" in problems


# --- rules --------------------------------------------------------------------------------


def test_any_all_not() -> None:
    matcher = _watches({"name": "w", "any": ["OIC", "سازمان همکاری اسلامی"],
                        "all": ["غزه"], "not": ["ورزش"]})
    assert _names(matcher, "نشست OIC درباره غزه") == ["w"]
    assert _names(matcher, "نشست OIC درباره لبنان") == []  # 'all' missing
    assert _names(matcher, "نشست OIC درباره ورزش غزه") == []  # 'not' present
    only_all = _watches({"name": "w", "all": ["غزه", "قدس"]})
    assert _names(only_all, "غزه و قدس") == ["w"]
    assert _names(only_all, "غزه") == []


def test_fields_feeds_and_languages_limit_a_watch() -> None:
    matcher = _watches(
        {"name": "titles", "any": ["OIC"], "fields": ["title"]},
        {"name": "irna", "any": ["OIC"], "feeds": ["irna*"]},
        {"name": "arabic", "any": ["OIC"], "languages": ["ar"]},
    )
    item = MatchInput(title="news", summary="OIC meets", feed="irna-en", language="en")
    assert [m.watch for m in matcher.match(item)] == ["irna"]
    item = MatchInput(title="OIC", feed="mehr", language="ar")
    assert [m.watch for m in matcher.match(item)] == ["titles", "arabic"]


def test_spans_point_into_each_field_and_cover_the_whole_words() -> None:
    matcher = _watches({"name": "oic", "any": ["+منظمة التعاون الإسلامي", "OIC"],
                        "case_sensitive": ["OIC"]})
    title = "الأمين العام لمنظمة  التعاون الاسلامي"
    summary = "قال (OIC) إن ..."
    [match] = matcher.match(MatchInput(title=title, summary=summary))
    assert match.terms == ("+منظمة التعاون الإسلامي", "OIC")
    spans = {(s.field, s.text) for s in match.spans}
    assert spans == {("title", "لمنظمة  التعاون الاسلامي"), ("summary", "OIC")}
    for span in match.spans:
        text = title if span.field == "title" else summary
        assert text[span.start:span.end] == span.text


def test_one_term_in_many_watches_is_compiled_once() -> None:
    matcher = _watches(*({"name": f"w{i}", "any": ["OIC", f"term{i}"]} for i in range(50)))
    assert matcher.term_count == 51
    assert len(_names(matcher, "OIC")) == 50
    assert _names(matcher, "term7") == ["w7"]


def test_explain_says_why_not() -> None:
    matcher = _watches({"name": "oic", "any": ["منظمة التعاون", "سازمان همکاری"]},
                       {"name": "other", "any": ["x"], "not": ["OIC"]})
    explained = {e.watch: e for e in matcher.explain(
        MatchInput(title="لمنظمة التعاون و سازمان همکاریها OIC"))}
    assert not explained["oic"].matched
    reasons = "\n".join(explained["oic"].reasons)
    assert "«لمنظمة التعاون» but starts inside a longer word" in reasons
    assert "«سازمان همکاریها» but the word carries a suffix the term does not allow" in reasons
    oic = matcher.explain(MatchInput(title="سازمان همکاریخوب"))[0]
    assert "«سازمان همکاریخوب» but the word goes on" in "\n".join(oic.reasons)
    assert explained["other"].reasons[0] == "none of the 'any' terms is in title, summary, content"


# --- the shipped watch list ----------------------------------------------------------------

# Every spelling the OIC arrives in: Persian (Arabic yeh/kaf, ZWNJ kept, dropped or a space,
# kashida, diacritics, markup, digits), Arabic (hamza or not, attached prefixes), English
# (Organisation/Organization, former name, acronym), French (accents or not, OCI).
OIC_MENTIONS = [
    "دیدار دبیرکل سازمان همکاری اسلامی با وزیر امور خارجه",
    "بیانیه سازمان همكاري اسلامي درباره حمله به غزه",
    "نشست فوق‌العاده سازمان همکاری‌های اسلامی در جده",
    "سازمان همکاریهای اسلامی خواستار توقف حملات شد",
    "سازمان همکاری های اسلامی حمله به مسجد الاقصی را محکوم کرد",
    "سازمـان همکـاری اسلامـی نشست اضطراری برگزار می‌کند",
    "سازمانِ همکاریِ اسلامی: تجاوز به قدس محکوم است",
    "<b>سازمان</b> همکاری اسلامی نشست اضطراری برگزار کرد",
    "سازمان  همکاری‌  اسلامی  از  ایران حمایت کرد",
    "سازمان‌همکاری‌اسلامی از ایران حمایت کرد",
    "سخنگوی وزارت خارجه: سازمان کنفرانس اسلامی باید واکنش نشان دهد",
    "سازمان كنفرانس اسلامي در سال ۱۳۴۸ تأسیس شد",
    "نشست وزیران خارجه کشورهای عضو (OIC) در استانبول",
    "ایران خواستار نشست فوری او آی سی شد",
    "۵۷ کشور عضو سازمان همکاری اسلامی",
    "منظمة التعاون الإسلامي تدين الاعتداء على المسجد الأقصى",
    "منظمة التعاون الاسلامي تعقد اجتماعا طارئا في جدة",
    "الأمين العام لمنظمة التعاون الإسلامي يستقبل وزير الخارجية",
    "الجامعة العربية ومنظمة التعاون الإسلامي تدعوان إلى وقف إطلاق النار",
    "اجتماع بين الأمم المتحدة والمنظمة التعاون الإسلامي",
    "منظمة المؤتمر الإسلامي تدعو إلى الحوار",
    "منظّمة التّعاون الإسلاميّ ترحب بالاتفاق",
    "إشادة بمنظمة التعاون الإسلامى",
    "وفد لمنظمة المؤتمر الاسلامي يزور كابول",
    "Organisation of Islamic Cooperation condemns attack on mosque",
    "Organization of Islamic Cooperation holds emergency meeting in Jeddah",
    "OIC chief calls for ceasefire in Gaza",
    "The OIC's secretary-general meets Iranian foreign minister",
    "Leaders gather for Organization of the Islamic Conference summit",
    "ORGANISATION OF ISLAMIC COOPERATION STATEMENT ON KASHMIR",
    "L'Organisation de la coopération islamique condamne l'attaque",
    "L'OCI appelle à un cessez-le-feu immédiat",
    "Réunion extraordinaire de l'Organisation de la Coopération Islamique à Djeddah",
    "Organisation de la Conférence islamique : sommet à Dakar",
    "Le secrétaire général de l'OCI en visite à Téhéran",
]
# Lexically close items that are not the OIC (the traps first).
NOT_OIC = [
    "نشست سران سازمان همکاری شانگهای در آستانه",
    "اجلاس وزیران سازمان همکاری اقتصادی (اکو) در تهران",
    "گزارش سازمان همکاری و توسعه اقتصادی درباره تورم جهانی",
    "تصویب طرح جدید در مجلس شورای اسلامی",
    "سازمان تبلیغات اسلامی برنامه دهه فجر را اعلام کرد",
    "کنفرانس وحدت اسلامی در تهران آغاز شد",
    "سالگرد پیروزی انقلاب اسلامی و تأسیس جمهوری اسلامی ایران",
    "سازمان همکاری‌های اقتصادی دریای سیاه نشست برگزار کرد",
    "همکاری اسلامی و عربی در حوزه آموزش",
    "بانک توسعه اسلامی وام جدید به ایران داد",
    "منظمة شنغهاي للتعاون تعقد قمتها السنوية",
    "منظمة التعاون الاقتصادي (إيكو) تجتمع في طهران",
    "منظمة التعاون والتنمية في الميدان الاقتصادي ترفع توقعاتها",
    "مجلس الشورى الإسلامي الإيراني يصادق على الميزانية",
    "المؤتمر الإسلامي الدولي للوحدة يختتم أعماله في طهران",
    "مجلس التعاون الخليجي يعقد اجتماعه الوزاري",
    "البنك الإسلامي للتنمية يمول مشروعا في السنغال",
    "Shanghai Cooperation Organisation summit opens in Astana",
    "Economic Cooperation Organization ministers meet in Tehran",
    "Organisation for Economic Co-operation and Development raises growth forecast",
    "OICA reports global car sales rise",
    "ICO token sale halted by regulators",
    "Islamic Republic rejects claims of enrichment",
    "Organization of American States holds general assembly",
    "Oracle expands OCI cloud regions",
    "Overseas Citizen of India (OCI) card rules changed",
    "oic: lower-case letters are not the acronym",
    "Islamic Development Bank approves loan to Pakistan",
    "L'Organisation de coopération de Shanghai se réunit",
    "L'OCDE revoit ses prévisions de croissance",
    "Organisation de coopération économique : réunion à Bakou",
    "La République islamique d'Iran dément",
    "Conférence islamique sur l'éducation à Rabat",
]
ORGAN_MENTIONS = [
    "Islamic Development Bank approves $500 million for Pakistan",
    "البنك الإسلامي للتنمية يوقع اتفاقية مع مصر",
    "بانک توسعه اسلامی ۲۰۰ میلیون دلار به ایران وام داد",
    "وام بانک توسعه‌ی اسلامی به پاکستان",
    "نشست کمیته‌ی قدس در رباط",
    "IsDB annual meetings open in Riyadh",
    "Banque islamique de développement : nouveau financement au Sénégal",
    "ICESCO director-general visits Rabat",
    "ISESCO launches heritage programme",
    "الإيسيسكو تطلق برنامجا جديدا للتعليم",
    "آیسسکو همایش بین‌المللی برگزار کرد",
    "آيسسكو از دانشگاه تهران قدردانی کرد",
    "COMCEC ministerial session opens in Istanbul",
    "COMSTECH fellowships for young scientists",
    "لجنة القدس تعقد دورتها العشرين في الرباط",
    "Al-Quds Committee meets in Rabat",
    "Le Comité Al-Qods se réunit à Marrakech",
    "IPHRC condemns rise of Islamophobia",
    "SESRIC publishes annual economic outlook",
    "Islamic Solidarity Fund grants aid to Sudan",
    "صندوق التضامن الإسلامي يقدم منحة",
    "UNA-OIC workshop for journalists in Jeddah",
    "International Islamic Fiqh Academy issues resolution",
    "مجمع الفقه الإسلامي الدولي يصدر قرارا",
]
NOT_ORGANS = [
    "ISF forces deployed in southern Lebanon",
    "IDB approves loan for Colombia",
    "Inter-American Development Bank raises capital",
    "Asian Development Bank cuts forecast",
    "UNA universidad abre convocatoria",
    "Islamic State claims attack",
    "بانک توسعه صادرات ایران",
    "کمیته امداد امام خمینی",
]


@pytest.fixture(scope="module")
def shipped() -> Matcher:
    return Matcher(load_config(ROOT / "config" / "monitor.yaml", env={}).watches)


def _misses(shipped: Matcher, headlines: list[str], watch: str, want: bool) -> list[str]:
    return [h for h in headlines if (watch in _names(shipped, h)) is not want]


def test_shipped_oic_watch_finds_every_spelling(shipped: Matcher) -> None:
    assert _misses(shipped, OIC_MENTIONS, "oic", want=True) == []


def test_shipped_oic_watch_avoids_the_traps(shipped: Matcher) -> None:
    assert _misses(shipped, NOT_OIC, "oic", want=False) == []


def test_shipped_organs_watch(shipped: Matcher) -> None:
    assert _misses(shipped, ORGAN_MENTIONS, "oic-organs", want=True) == []
    assert _misses(shipped, NOT_ORGANS, "oic-organs", want=False) == []
    # An organ is not the OIC itself, unless the text names the OIC too.
    assert _names(shipped, "COMCEC session opens") == ["oic-organs"]


# --- Fars News: 900 real articles with Arabic yeh/kaf --------------------------------------

# Articles outside oic_mentions_index.json that the shipped watches match, each reviewed.
# Empty today: none of the other 896 mentions the OIC or its organs, and no trap matches.
# A new entry needs a reason, e.g. {("fars-news-1.json", 12): "names the IsDB"}.
REVIEWED_OTHER_MATCHES: dict[tuple[str, int], str] = {}


def _fars_items(folder: Path):
    for path in sorted(folder.glob("fars-news-*.json")):
        for index, article in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            yield (path.name, index), MatchInput(
                title=article.get("title") or "", summary=article.get("abstract") or "",
                content="\n".join(article.get("paragraphs") or []))


def test_fars_news_mentions_are_all_found_and_nothing_else(shipped: Matcher) -> None:
    folder = shared_testdata("fars-news")
    index = json.loads((folder / "oic_mentions_index.json").read_text(encoding="utf-8"))
    expected = {(m["file"], m["index"]): m["surface_forms"] for m in index}
    matched: dict[tuple[str, int], list] = {}
    total = 0
    for where, item in _fars_items(folder):
        total += 1
        found = shipped.match(item)
        if found:
            matched[where] = found
    assert total == 900
    for where, forms in expected.items():
        assert where in matched, f"missed {where}: {forms}"
        texts = {s.text for m in matched[where] for s in m.spans}
        assert set(forms) <= texts, (where, texts)
    # The surface forms with Arabic kaf/yeh name the former name and ICESCO.
    assert {m.watch for m in matched[("fars-news-1.json", 105)]} == {"oic"}
    assert {m.watch for m in matched[("fars-news-1.json", 6)]} == {"oic-organs"}
    others = {w: [m.watch for m in ms] for w, ms in matched.items() if w not in expected}
    print(f"\nfars-news: {len(expected)} listed mentions found; "
          f"{len(others)} of the other {total - len(expected)} matched: {others}")
    assert set(others) == set(REVIEWED_OTHER_MATCHES), others
