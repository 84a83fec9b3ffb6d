"""Hostile XML and lying encodings: entities stay small, external entities stay inert, and
every charset ends up as correct text without NUL or lone surrogates."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.parse import guard_entities, parse_feed
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


def test_cp1252_declared_as_utf8_is_read_as_cp1252() -> None:
    body = feed("Café crème – l’OCI",
                declaration='<?xml version="1.0" encoding="utf-8"?>').encode("cp1252")
    parsed = parse_feed(body, {"content-type": "application/rss+xml; charset=utf-8"},
                        "http://127.0.0.1/f")
    assert parsed.entries[0].title == "Café crème – l’OCI"
    assert parsed.problem is not None and "CharacterEncoding" in parsed.problem


def test_nul_and_lone_surrogates_are_stripped() -> None:
    body = feed("a&#0;b&#xD800;c\x00d").encode()
    parsed = parse_feed(body, RSS_HEADERS, "http://127.0.0.1/f")
    title = parsed.entries[0].title
    assert "\x00" not in title and "\ud800" not in title
    assert title.replace(" ", "").startswith("ab")
    title.encode("utf-8")  # encodable: no surrogate left
