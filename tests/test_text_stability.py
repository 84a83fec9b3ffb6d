"""Stored text values must not change between releases.

Match keys, fingerprints, canonical links, languages, story band keys and display text are
stored with each article, and new articles are compared with old rows through them (same
fingerprint, same band key, same canonical link). A faster implementation must compute the
same bytes. The digests below were computed over the 900 Fars News articles (as an RSS
document, through `parse_feed` and `prepare`) by the code before the speed-ups of
perf-text; they change only if a stored value changes for one of those articles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from monitor.articles import prepare
from monitor.config import WatchConfig
from monitor.parse import parse_feed
from monitor.stories import band_keys, lead, shingles
from monitor.text.match import Matcher
from monitor.text.normalize import detect_language, display_text, match_key

FARS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "fars-news"
pytestmark = pytest.mark.skipif(not FARS.is_dir(), reason=f"{FARS} (shared testdata) is absent")

EXPECTED = {
    "candidates": "1f83a34529998601787dc3df5db6cf3c9688fd1eae0e4d162a2558bedcd7ee04",
    "texts": "7222a79d4b49449a03ed4476c84720ac0e233617e9ac59af85bf69f48f0a48ca",
}


def _articles() -> list[dict[str, object]]:
    articles: list[dict[str, object]] = []
    for path in sorted(FARS.glob("fars-news-*.json")):
        articles += json.loads(path.read_text(encoding="utf-8"))
    return articles


def _feed(articles: list[dict[str, object]]) -> bytes:
    items = []
    for n, article in enumerate(articles):
        paragraphs = "".join(f"<p>{escape(str(p))}</p>" for p in article.get("paragraphs") or ())
        # Half with a summary, half with content only; links with tracking parameters.
        summary = escape(str(article.get("abstract") or "")) if n % 2 else ""
        items.append(
            f"<item><title>{escape(str(article.get('title') or ''))}</title>"
            f"<link>{escape(str(article.get('link') or ''))}?utm_source=rss&amp;n={n}</link>"
            f"<description>{summary}</description>"
            f"<content:encoded><![CDATA[{paragraphs}]]></content:encoded></item>")
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
            'xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>'
            "<title>فارس</title>" + "".join(items) + "</channel></rss>").encode()


def _digest(values: Iterator[object]) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(json.dumps(value, ensure_ascii=False, default=str).encode() + b"\n")
    return digest.hexdigest()


def _candidate_values(articles: list[dict[str, object]]) -> Iterator[object]:
    matcher = Matcher([WatchConfig(name="oic", any=["سازمان همکاری+ اسلامی",
                                                     "سازمان کنفرانس اسلامی", "OIC"])])
    parsed = parse_feed(_feed(articles), {}, "http://example.org/rss")
    assert len(parsed.entries) == len(articles)
    for entry in parsed.entries:
        candidate = prepare(entry, "fars", matcher)
        yield [entry.key, entry.link, entry.title, entry.summary, entry.content,
               candidate.canonical_link, candidate.fingerprint, candidate.match_key,
               candidate.language, [m.as_dict() for m in candidate.matches],
               sorted(candidate.sketch.shingles), candidate.sketch.bands]


def _text_values(articles: list[dict[str, object]]) -> Iterator[object]:
    for article in articles:
        paragraphs = [str(p) for p in article.get("paragraphs") or ()]
        for text in (str(article.get("title") or ""), str(article.get("abstract") or ""),
                     "\n".join(paragraphs[:3])):
            display = display_text(text)
            lead_text = lead(display, text, "")
            yield [display, match_key(text), detect_language(text), detect_language(display),
                   lead_text, band_keys(shingles(lead_text))]


def test_candidates_are_unchanged() -> None:
    assert _digest(_candidate_values(_articles())) == EXPECTED["candidates"]


def test_texts_are_unchanged() -> None:
    assert _digest(_text_values(_articles())) == EXPECTED["texts"]


if __name__ == "__main__":  # prints the digests of the code at hand
    print({"candidates": _digest(_candidate_values(_articles())),
           "texts": _digest(_text_values(_articles()))})
