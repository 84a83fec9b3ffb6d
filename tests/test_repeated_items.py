"""Repeated items are not parsed again (`parse_feed`'s `known`, `_Items`): what comes back for
a changed document is what parsing it whole gives, entry for entry, on real documents
(feedparser's corpus, the Persian feed, Fars News articles as RSS and Atom) and on the ways a
document can resist being cut into items."""

from __future__ import annotations

import json
from array import array
from xml.sax.saxutils import escape

import pytest

from monitor.parse import Entry, KnownItems, NotAFeed, ParsedFeed, UnreadEntry, parse_feed
from tests.conftest import shared_testdata
from tests.servers import rss

URL = "http://127.0.0.1/feed"
RSS = {"content-type": "application/rss+xml; charset=utf-8"}


def without(known: KnownItems, position: int) -> KnownItems:
    """`known` as if the entry at `position` were new: neither its item nor its key."""
    keep = [n for n in range(len(known.keys)) if n != position]
    return KnownItems(tuple(known.keys[n] for n in keep),
                      array("q", (known.digests[n] for n in keep)),
                      array("d", (known.published[n] for n in keep)))


def assert_same(whole: ParsedFeed, cut: ParsedFeed, label: str) -> None:
    assert (cut.title, cut.problem, cut.ttl_seconds, cut.update_period_seconds) == \
        (whole.title, whole.problem, whole.ttl_seconds, whole.update_period_seconds), label
    assert cut.item_digests == whole.item_digests, label
    assert len(cut.entries) == len(whole.entries), label
    for mine, theirs in zip(cut.entries, whole.entries, strict=True):
        assert isinstance(theirs, Entry)
        if isinstance(mine, UnreadEntry):
            assert (mine.key, mine.published) == (theirs.key, theirs.published), label
            if mine.raw is not None:
                assert mine.read() == theirs, label
        else:
            assert mine == theirs, label


def skipped_when_repeated(body: bytes, headers: dict[str, str], label: str) -> int:
    """Parse `body` whole, then as the next document of a feed that stored it: with each of
    its first, middle and last entries new in turn, and with none new. Every way gives what
    the whole parse gives. Returns how many items were not parsed."""
    try:
        whole = parse_feed(body, headers, URL)
    except NotAFeed:
        return 0
    known = KnownItems.of(whole)
    skipped = 0
    count = len(whole.entries)
    positions = sorted({0, count // 2, count - 1}) if count else []
    for new, known_then in [(None, known), *((n, without(known, n)) for n in positions)]:
        cut = parse_feed(body, headers, URL, known_then)
        assert_same(whole, cut, f"{label}, entry {new} new")
        skipped += sum(isinstance(e, UnreadEntry) and e.raw is None for e in cut.entries)
        if new is not None and whole.entries[new].key not in known_then.keys:
            assert isinstance(cut.entries[new], Entry), label  # read, as new
    return skipped


def test_feedparsers_corpus_reads_the_same_with_its_items_repeated() -> None:
    corpus = shared_testdata("feedparser")
    skipped = documents = 0
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.parent != corpus):
        body = path.read_bytes()
        found = skipped_when_repeated(body, {}, str(path))
        found += skipped_when_repeated(body, {"content-type": "application/xml"}, str(path))
        skipped += found
        documents += bool(found)
    # Of the corpus's 2,100 documents about 560 have entries (most test one element of a
    # feed's head); the cut must work on nearly all of those, or this test proves little.
    assert documents > 500 and skipped > 1000, (documents, skipped)


def test_the_real_persian_feed_reads_the_same_with_its_items_repeated() -> None:
    for path in shared_testdata("persian-feeds").glob("*.xml"):
        assert skipped_when_repeated(path.read_bytes(), {"content-type": "application/xml"},
                                     path.name) > 5


def fars_articles() -> list[dict[str, str]]:
    folder = shared_testdata("fars-news")
    return [a for path in sorted(folder.glob("fars-news-*.json"))
            for a in json.loads(path.read_text())]


def atom(articles: list[dict[str, str]]) -> bytes:
    """An Atom feed with xml:base, relative links, HTML and XHTML content."""
    entries = "".join(
        f"<entry><id>tag:farsnews.ir,2026:{n}</id><title type=\"html\">{escape(a['title'])}"
        f"</title><link href=\"news/{n}\"/><updated>2026-11-2{n % 9}T0{n % 10}:00:00Z"
        "</updated>"
        + (f"<content type=\"xhtml\"><div xmlns=\"http://www.w3.org/1999/xhtml\"><p>"
           f"{escape(a['abstract'])}</p><a href=\"/more/{n}\">بیشتر</a></div></content>"
           if n % 2 else f"<summary type=\"html\">{escape('<p>' + a['abstract'] + '</p>')}"
                         "</summary>")
        + "</entry>\n" for n, a in enumerate(articles))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"'
            ' xml:base="http://www.farsnews.ir/" xml:lang="fa"><title>فارس</title>'
            f"<updated>2026-11-22T10:00:00Z</updated>\n{entries}</feed>").encode()


def test_fars_news_as_rss_and_atom_reads_the_same_with_its_items_repeated() -> None:
    articles = fars_articles()
    skipped = 0
    for start in range(0, 300, 30):
        batch = articles[start:start + 30]
        body = rss([{"title": a["title"], "link": f"http://www.farsnews.ir/news/{start + n}",
                     "description": f"<p>{a['abstract']}</p>",
                     "pubDate": f"Sun, 22 Nov 2026 1{n % 10}:00:00 +0330"}
                    for n, a in enumerate(batch)]).encode()
        skipped += skipped_when_repeated(body, RSS, f"rss from {start}")
        skipped += skipped_when_repeated(atom(batch), {}, f"atom from {start}")
    assert skipped > 2000


def item(n: int, extra: str = "") -> str:
    return (f"<item><title>خبر {n}</title><link>news/{n}</link><guid>g{n}</guid>"
            f"<description>متن خبر {n}</description>{extra}</item>")


def document(items: str, channel: str = "", lead: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>{lead}<rss version="2.0"><channel {channel}>'
            f"<title>فید</title><lastBuildDate>Sun, 22 Nov 2026 10:00:00 +0000</lastBuildDate>"
            f"{items}</channel></rss>").encode()


def next_document(first: bytes, second: bytes, headers: dict[str, str] | None = None,
                  url: str = URL) -> tuple[ParsedFeed, ParsedFeed]:
    """`second` parsed as the next document of a feed that stored `first`, and whole."""
    headers = headers or RSS
    known = KnownItems.of(parse_feed(first, headers, URL))
    return parse_feed(second, headers, url, known), parse_feed(second, headers, url)


def unparsed(parsed: ParsedFeed) -> list[bool]:
    return [isinstance(e, UnreadEntry) and e.raw is None for e in parsed.entries]


def test_a_new_item_is_parsed_and_the_repeated_ones_are_not() -> None:
    first = document(item(1) + "\n  " + item(2))
    second = document(item(3) + item(1) + "\n" + item(2)).replace(b"10:00", b"11:00")
    cut, whole = next_document(first, second)
    assert unparsed(cut) == [False, True, True]
    assert_same(whole, cut, "one new")
    assert cut.entries[0] == whole.entries[0]


@pytest.mark.parametrize("change", ["xml:base", "namespace", "entity", "entity >", "url"])
def test_repeated_items_in_changed_surroundings_are_parsed_again(change: str) -> None:
    """What the item's parse depends on beyond its bytes: a base URL (the feed's own, or
    xml:base), namespaces, entities. Any change there reads every item again."""
    items = item(1, "<dc:creator>&who;</dc:creator><dc:subject>&what;</dc:subject>") + item(2)
    lead = '<!DOCTYPE rss [<!ENTITY who "نویسنده"><!ENTITY what "a > b">]>'
    channel = 'xmlns:dc="http://purl.org/dc/elements/1.1/" xml:base="http://a.ir/"'
    first = document(items, channel, lead)
    second, url = document(item(3) + items, channel, lead), URL
    if change == "xml:base":
        second = second.replace(b"http://a.ir/", b"http://b.ir/")
    elif change == "namespace":
        second = second.replace(b"elements/1.1/", b"elements/1.2/")
    elif change == "entity":
        second = second.replace("نویسنده".encode(), "دبیر".encode())
    elif change == "entity >":
        second = second.replace(b"a > b", b"a > c")
    else:
        url = "http://127.0.0.1/moved"
    cut, whole = next_document(first, second, url=url)
    assert unparsed(cut) == [False, False, False]
    assert_same(whole, cut, change)
    # Unchanged surroundings: the two repeated items are not parsed again.
    cut, whole = next_document(first, document(item(3) + items, channel, lead))
    assert unparsed(cut) == [False, True, True]
    assert_same(whole, cut, "unchanged")


@pytest.mark.parametrize("items, cut_into", [
    # Markup inside CDATA and comments is text, not an item.
    (item(1, "<description><![CDATA[</item><item>]]></description>") + item(2), 2),
    (item(1, "<!-- </item> -->") + item(2), 2),
    # Anything but white space between items, an empty item, or one inside another: the
    # document is read whole.
    (item(1) + "<!-- between -->" + item(2), 0),
    (item(1) + "<ttl>5</ttl>" + item(2), 0),
    (item(1) + "<item/>" + item(2), 0),
    (item(1, item(2)), 0),
    # <items> and <itemCount> are not items.
    ("<itemCount>2</itemCount>" + item(1) + item(2), 2),
])
def test_a_document_is_cut_into_items_only_where_that_is_plain(items: str,
                                                                cut_into: int) -> None:
    first = document(items)
    whole = parse_feed(first, RSS, URL)
    assert len([d for d in whole.item_digests if d]) == cut_into
    cut, whole = next_document(first, first)
    assert unparsed(cut).count(True) == (len(whole.entries) if cut_into else 0)
    assert_same(whole, cut, items)


def test_a_malformed_new_item_reads_the_whole_document_as_feedparser_would() -> None:
    """The loose parser, which feedparser falls back to, may read one item into the next:
    the document is read whole, and its items' digests are not kept."""
    first = document(item(1) + item(2))
    second = document(item(3, "<description>a <b>broken</description>") + item(1) + item(2))
    cut, whole = next_document(first, second)
    assert cut.problem is not None and cut.problem == whole.problem
    assert not any(unparsed(cut)) and cut.item_digests == ()
    assert [e.key for e in cut.entries] == [e.key for e in whole.entries]


@pytest.mark.parametrize("body, headers", [
    (document(item(1) + item(2)).decode().replace('encoding="utf-8"', 'encoding="utf-16"')
     .encode("utf-16"), {"content-type": "application/xml"}),
    (document(item(1) + item(2)).replace(b'"utf-8"', b'"iso-2022-jp"'),
     {"content-type": "application/xml"}),
])
def test_documents_whose_bytes_cannot_be_searched_for_markup_are_read_whole(
        body: bytes, headers: dict[str, str]) -> None:
    cut, whole = next_document(body, body, headers)
    assert whole.entries and whole.item_digests == ()
    assert not any(unparsed(cut))
    assert [e.key for e in cut.entries] == [e.key for e in whole.entries]


def test_atom_entries_with_a_prefix_are_items_too() -> None:
    def feed(ids: list[int]) -> bytes:
        entries = "".join(f"<a:entry><a:id>e{n}</a:id><a:title>خبر {n}</a:title>"
                          f"<a:link href='/n/{n}'/></a:entry>" for n in ids)
        return (f"<a:feed xmlns:a='http://www.w3.org/2005/Atom'><a:title>t</a:title>{entries}"
                "</a:feed>").encode()

    cut, whole = next_document(feed([1, 2]), feed([3, 1, 2]), {})
    assert unparsed(cut) == [False, True, True]
    assert_same(whole, cut, "prefixed atom")


def test_only_the_last_document_is_known() -> None:
    """An item that left the document and came back is known by its bytes again only if it
    was in the document just before: what is known is the last document, nothing older."""
    first, middle = document(item(1) + item(2)), document(item(2) + item(3))
    known = KnownItems.of(parse_feed(middle, RSS, URL,
                                     KnownItems.of(parse_feed(first, RSS, URL))))
    again = parse_feed(first, RSS, URL, known)
    assert unparsed(again) == [False, True]
    assert again.entries[0] == parse_feed(first, RSS, URL).entries[0]
