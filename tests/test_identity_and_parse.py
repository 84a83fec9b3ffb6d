from __future__ import annotations

from array import array

import pytest

from monitor.identity import canonical_link, fingerprint
from monitor.parse import Entry, KnownItems, NotAFeed, UnreadEntry, parse_feed
from tests.conftest import shared_testdata
from tests.servers import rss


@pytest.mark.parametrize(("a", "b"), [
    ("https://www.irna.ir/news/1?utm_source=tg&utm_medium=x#top", "https://irna.ir/news/1"),
    ("http://IRNA.ir:80/news/1/", "https://irna.ir/news/1"),
    ("https://irna.ir/news?id=5&fbclid=abc", "https://irna.ir/news?id=5"),
])
def test_canonical_link_drops_tracking(a: str, b: str) -> None:
    assert canonical_link(a) == canonical_link(b)


def test_canonical_link_keeps_meaningful_query() -> None:
    assert canonical_link("https://x.ir/n?id=5") != canonical_link("https://x.ir/n?id=6")
    assert canonical_link("javascript:alert(1)") is None


def test_fingerprint_ignores_zwnj_spacing_and_letter_forms() -> None:
    a = fingerprint("همکاری‌های اسلامی", "بین‌المللی")
    assert a == fingerprint("همکاريهاي اسلامي", "بینالمللی")
    assert a == fingerprint("همکاری های اسلامی", "بین المللی")
    assert a != fingerprint("همکاری های اقتصادی", "بین المللی")


def test_parse_entries_keys_and_dates() -> None:
    body = rss([
        {"title": "<b>سازمان</b> همکاری", "link": "https://x.ir/1", "guid": "g1",
         "description": "<p>متن &amp; خبر</p>", "pubDate": "Sun, 22 Nov 2026 10:00:00 +0330"},
        {"title": "بدون شناسه", "link": "https://x.ir/2"},
        {"title": "فقط متن", "description": "بدون لینک"},
    ]).encode()
    parsed = parse_feed(body, {"content-type": "application/rss+xml"}, "http://127.0.0.1/f")
    first, second, third = parsed.entries
    assert first.title == "سازمان همکاری" and first.summary == "متن & خبر"
    assert first.key.startswith("guid:") and first.key.endswith("g1")
    assert first.published is not None and first.published.utcoffset().total_seconds() == 0
    assert first.published.hour == 6 and first.published.minute == 30
    assert second.key == "link:https://x.ir/2"
    assert third.key.startswith("hash:")



def test_markup_in_an_item_is_read_as_text_without_scripts_or_styles() -> None:
    """feedparser's own HTML sanitizer is off (monitor keeps no markup: every field becomes
    plain text, and is escaped wherever it lands), so the plain text must not carry what a
    sanitizer would have dropped: a script's or a style's text, an event handler."""
    description = ('<p onclick="steal()">نشست <a href="/news/1">سازمان همکاری اسلامی</a>'
                   '</p><script>document.write("OIC")</script><style>p{color:red}</style>'
                   '<iframe src="https://evil.example/"></iframe><img src="x.png" '
                   'onerror="alert(1)">در جده')
    body = rss([{"title": "<b>OIC</b> <script>x()</script>نشست", "link": "https://x.ir/1",
                 "guid": "g1", "description": description}]).encode()
    [entry] = parse_feed(body, {"content-type": "application/rss+xml"},
                         "http://127.0.0.1/f").entries
    assert entry.title == "OIC نشست"
    assert entry.summary == "نشست سازمان همکاری اسلامی\nدر جده"
    for dropped in ("OIC", "document", "color", "steal", "alert", "evil", "<", ">"):
        assert dropped not in entry.summary


def test_relative_links_resolve_against_each_documents_own_base() -> None:
    """Links resolve against the feed's URL or its xml:base, and a base of an unsafe scheme
    is not adopted. feedparser's answers about base URIs are kept between parses (they
    were a twentieth of parsing), so documents with different bases are parsed in turns
    and each must still get its own."""
    def atom(base: str) -> bytes:
        attribute = f' xml:base="{base}"' if base else ""
        return (f'<feed xmlns="http://www.w3.org/2005/Atom"{attribute}><title>t</title>'
                '<entry><id>e1</id><title>خبر</title><link href="news/1"/></entry>'
                "</feed>").encode()

    headers = {"content-type": "application/atom+xml"}
    expected = [
        ("http://127.0.0.1/a/feed.xml", "", "http://127.0.0.1/a/news/1"),
        ("http://127.0.0.1/a/feed.xml", "http://b.ir/fa/", "http://b.ir/fa/news/1"),
        ("http://127.0.0.1/c/feed.xml", "", "http://127.0.0.1/c/news/1"),
        ("http://127.0.0.1/a/feed.xml", "javascript:alert(1)//", "http://127.0.0.1/a/news/1"),
        ("http://127.0.0.1/a/feed.xml", "/d/", "http://127.0.0.1/d/news/1"),
        ("http://127.0.0.2/c/feed.xml", "/d/", "http://127.0.0.2/d/news/1"),
    ]
    for _round in range(2):
        for url, base, link in expected:
            [entry] = parse_feed(atom(base), headers, url).entries
            assert entry.link == link, (url, base)


def test_entries_with_known_keys_are_left_unread_where_their_key_says_so() -> None:
    """With `known` keys (and items not known by their bytes), an entry with a link whose key
    (its GUID, else its link) is known is left unread, and `read` makes the very entry
    parsing makes without `known`, even one whose text is empty once markup is removed.
    Without a link parsing cannot tell (a key from the text, or an entry dropped for lack of
    text), so those are made as ever."""
    body = rss([
        {"title": "<b>سازمان</b> همکاری", "link": "https://x.ir/1", "guid": "g1",
         "description": "<p>متن &amp; خبر</p>", "pubDate": "Sun, 22 Nov 2026 10:00:00 +0330",
         "author": "نویسنده"},
        {"title": "بدون شناسه", "link": "https://x.ir/2"},
        {"title": "<br/>", "link": "https://x.ir/3", "guid": "g3"},
        {"title": "فقط شناسه", "guid": "g4"},
        {"title": "فقط متن", "description": "بدون لینک"},
        {"title": "خبر تازه", "link": "https://x.ir/6", "guid": "g6"},
    ]).replace("<guid>g4", '<guid isPermaLink="false">g4').encode()  # else g4 is its link
    headers = {"content-type": "application/rss+xml"}
    made = parse_feed(body, headers, "http://127.0.0.1/f").entries
    everything = KnownItems.of(parse_feed(body, headers, "http://127.0.0.1/f"))
    # Every key but g6's, and no item digests: the items changed (say, a view count).
    known = KnownItems(everything.keys[:5], array("q", [0] * 5), everything.published[:5])
    left = parse_feed(body, headers, "http://127.0.0.1/f", known).entries
    assert [type(e) for e in left] == [UnreadEntry] * 3 + [Entry] * 3
    assert [(e.key, e.published) for e in left] == [(e.key, e.published) for e in made]
    assert [e.read() if isinstance(e, UnreadEntry) else e for e in left] == made
    assert made[2].title == ""


def test_not_a_feed() -> None:
    with pytest.raises(NotAFeed):
        parse_feed(b"<html><body>Service unavailable</body></html>",
                   {"content-type": "text/html"}, "http://127.0.0.1/f")


def test_parse_does_not_open_local_files() -> None:
    with pytest.raises(NotAFeed):
        parse_feed(b"/etc/hostname", {}, "http://127.0.0.1/f")


def test_real_persian_feed_keeps_publisher_wording() -> None:
    folder = shared_testdata("persian-feeds")
    body = (folder / "pear-XML_Feed_Parser_hoder.xml").read_bytes()
    parsed = parse_feed(body, {"content-type": "application/xml"}, "http://127.0.0.1/f")
    assert len(parsed.entries) > 5
    # Display text keeps the ZWNJs the publisher typed.
    assert any("\u200c" in e.title or "\u200c" in e.summary for e in parsed.entries)
