"""Hostile XML and lying encodings: entities stay small, external entities stay inert, and
every charset ends up as correct text without NUL or lone surrogates."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.parse import Entry, guard_entities, parse_feed
from tests.conftest import shared_testdata
from tests.servers import CanaryServer

RSS_HEADERS = {"content-type": "application/rss+xml"}
OIC_ARABIC = "سازمان همكاري اسلامي"  # cp1256 has no Persian yeh or keheh


def persian_letters(text: str) -> str:
    return text.translate(str.maketrans("يك", "یک"))


def feed(title: str, doctype: str = "", declaration: str = '<?xml version="1.0"?>') -> str:
    return (f'{declaration}{doctype}<rss version="2.0"><channel><title>c</title>'
            f"<item><title>{title}</title><link>http://127.0.0.1/1</link></item>"
            "</channel></rss>")


@pytest.fixture
def canary() -> Iterator[CanaryServer]:
    server = CanaryServer().start()
    yield server
    server.stop()


def test_quadratic_entity_is_defused_quickly_with_bounded_memory() -> None:
    body = feed("&big;" * 2000, f'<!DOCTYPE rss [<!ENTITY big "{"x" * 100_000}">]>').encode()
    assert 100_000 < len(body) < 120_000
    tracemalloc.start()
    started = time.monotonic()
    try:
        parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
    assert len(parsed.entries) == 1 and "x" * 1000 not in parsed.entries[0].title
    assert parsed.problem is not None and "removed 1 of 1 entity declarations" in parsed.problem


def test_billion_laughs_stays_small() -> None:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    body = feed("&lol9;", f"<!DOCTYPE rss [{''.join(levels)}]>").encode()
    started = time.monotonic()
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    assert time.monotonic() - started < 2.0
    assert len(parsed.entries[0].title) < 100


def test_small_entities_still_work() -> None:
    body = feed("&org; news", '<!DOCTYPE rss [<!ENTITY org "OIC">]>').encode()
    body2, note = guard_entities(body)
    assert body2 == body and note is None
    assert parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f").entries[0].title == "OIC news"


def test_external_entities_reach_neither_the_network_nor_files(
        canary: CanaryServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    doctypes = [
        f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{canary.url("/xxe")}">]>',
        f'<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>',
        f'<!DOCTYPE rss [<!ENTITY % p SYSTEM "{canary.url("/p.dtd")}"> %p;]>',
        f'<!DOCTYPE rss SYSTEM "{canary.url("/external.dtd")}">',
        f'<!DOCTYPE rss PUBLIC "-//x//y" "file://{secret}">',
    ]
    for doctype in doctypes:
        parsed = parse_feed(feed("before &xxe; after", doctype).encode(), RSS_HEADERS,
                            "http://127.0.0.1/f")
        assert all("TOP-SECRET" not in e.title + e.summary for e in parsed.entries)
    assert canary.connections == 0


def test_windows_1256_with_the_http_charset() -> None:
    body = feed(OIC_ARABIC).encode("cp1256")
    parsed = parse_feed(body, {"content-type": "application/rss+xml; charset=windows-1256"},
                        "http://127.0.0.1/f")
    # Display text may fold Arabic yeh/kaf to Persian; the letters must be right either way.
    assert persian_letters(parsed.entries[0].title) == persian_letters(OIC_ARABIC)


def test_utf16_with_bom() -> None:
    body = feed("سازمان همکاری اسلامی",
                declaration='<?xml version="1.0" encoding="utf-16"?>').encode("utf-16")
    assert body.startswith(b"\xff\xfe")
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    assert parsed.entries[0].title == "سازمان همکاری اسلامی"


def test_utf16_entities_are_guarded_too() -> None:
    body = feed("&big;" * 50, f'<!DOCTYPE rss [<!ENTITY big "{"x" * 5000}">]>',
                '<?xml version="1.0" encoding="utf-16"?>').encode("utf-16")
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    assert "x" * 5000 not in parsed.entries[0].title


def test_utf8_declared_as_a_legacy_charset_is_read_as_utf8() -> None:
    body = feed("سازمان همکاری اسلامی",
                declaration='<?xml version="1.0" encoding="windows-1252"?>').encode()
    parsed = parse_feed(body, {"content-type": "application/rss+xml; charset=iso-8859-1"},
                        "http://127.0.0.1/f")
    assert parsed.entries[0].title == "سازمان همکاری اسلامی"


@pytest.mark.parametrize("title", ["Café crème – l’OCI", "Größere Ölförderung für Äthiopien"])
def test_cp1252_declared_as_utf8_is_read_as_cp1252(title: str) -> None:
    # Not taken for windows-1256: read that way, its accented letters are only partly
    # Arabic script.
    body = feed(title, declaration='<?xml version="1.0" encoding="utf-8"?>').encode("cp1252")
    parsed = parse_feed(body, {"content-type": "application/rss+xml; charset=utf-8"},
                        "http://127.0.0.1/f")
    assert parsed.entries[0].title == title
    assert parsed.problem is not None and "CharacterEncoding" in parsed.problem


@pytest.mark.parametrize(("headers", "declaration"), [
    ({"content-type": "application/rss+xml; charset=utf-8"},
     '<?xml version="1.0" encoding="utf-8"?>'),
    ({"content-type": "text/xml"}, '<?xml version="1.0"?>'),  # UTF-8 by default
])
def test_windows_1256_declared_as_utf8_is_read_as_windows_1256(
        headers: dict[str, str], declaration: str) -> None:
    body = feed(OIC_ARABIC, declaration=declaration).encode("cp1256")
    parsed = parse_feed(body, headers, "http://127.0.0.1/f")
    assert persian_letters(parsed.entries[0].title) == persian_letters(OIC_ARABIC)
    assert parsed.problem is not None and "windows-1256" in parsed.problem


@pytest.mark.parametrize(("text", "codec"), [
    ("Организация исламского сотрудничества в Москве", "koi8-r"),
    ("Организация исламского сотрудничества в Москве", "cp1251"),
    ("İslam İşbirliği Teşkilatı'nın toplantısı", "cp1254"),
    ("ארגון שיתוף הפעולה האסלאמי", "cp1255"),
])
def test_other_single_byte_text_is_not_taken_for_windows_1256(text: str, codec: str) -> None:
    # Read as windows-1256 these are mostly Arabic letters too, but with the Latin-1
    # letters and signs windows-1256 keeps among them.
    body = feed(text, declaration='<?xml version="1.0"?>').encode(codec)
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    assert "windows-1256" not in (parsed.problem or "")


def test_a_persian_letter_cut_in_half_does_not_garble_the_feed() -> None:
    # A CMS cut one summary at a byte count, in the middle of a two-byte letter: the rest of
    # the feed is UTF-8 all the same, and must not become windows-1252 mojibake.
    cut = "نشست وزیران امور خارجه".encode()[:-1]
    body = (b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>c'
            b"</title><item><title>" + "سازمان همکاری اسلامی".encode()
            + b"</title><link>http://127.0.0.1/1</link><description>" + cut
            + b"</description></item></channel></rss>")
    parsed = parse_feed(body, {"content-type": "application/rss+xml; charset=utf-8"},
                        "http://127.0.0.1/f")
    assert parsed.entries[0].title == "سازمان همکاری اسلامی"
    assert parsed.entries[0].summary == "نشست وزیران امور خارج"
    assert parsed.problem is not None and "1 invalid byte sequence" in parsed.problem


def test_real_persian_feed_in_windows_1256_labelled_utf8() -> None:
    """The shared real Persian feed, re-encoded as a cp1256 CMS would send it (Arabic yeh
    and kaf, which cp1256 has, for the Persian ones, which it lacks) and labelled UTF-8,
    parses to the same entries as the UTF-8 original."""
    folder = shared_testdata("persian-feeds")
    original = (folder / "pear-XML_Feed_Parser_hoder.xml").read_bytes().decode("utf-8")
    legacy = original.translate(str.maketrans("یک", "يك")).encode("cp1256", "replace")
    headers = {"content-type": "application/xml; charset=utf-8"}
    expected = parse_feed(original.encode(), headers, "http://127.0.0.1/f").entries
    parsed = parse_feed(legacy, headers, "http://127.0.0.1/f")
    assert parsed.problem is not None and "windows-1256" in parsed.problem
    assert len(parsed.entries) == len(expected) > 5
    for got, want in zip(parsed.entries, expected, strict=True):
        assert isinstance(got, Entry) and isinstance(want, Entry)
        assert persian_letters(got.title) == persian_letters(want.title)
        assert persian_letters(got.summary) == persian_letters(want.summary)


def test_nul_and_lone_surrogates_are_stripped() -> None:
    body = feed("a&#0;b&#xD800;c\x00d").encode()
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    title = parsed.entries[0].title
    assert "\x00" not in title and "\ud800" not in title
    assert title.replace(" ", "").startswith("ab")
    title.encode("utf-8")  # encodable: no surrogate left
