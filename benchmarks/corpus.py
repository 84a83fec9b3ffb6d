"""Synthetic Persian feed items built from real Persian news text.

The text comes from the project's `seed_data/` and from `../shared/testdata/fars-news/`
(read in place, never copied). A benchmark needs tens of thousands of *distinct* articles
(distinct links and distinct text, or the pipeline rightly folds them into one story),
while the corpus holds about 900; item `n` therefore takes its title from one article, its
lede from a second and a paragraph from a third, chosen so that no two items share more
than one of the three: real Persian news prose of realistic length, and no accidental
near-duplicates for the story stage to group.

Items made with `about_oic=True` lead with one of the seed headlines about the OIC, so they
match the shipped `oic` watch and produce an alert.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = ROOT / "seed_data"
FARS_DIR = ROOT.parent / "shared" / "testdata" / "fars-news"

MAX_PARAGRAPH = 700  # characters: a feed's description is a lede, not the whole story


@dataclass(frozen=True)
class Article:
    title: str
    abstract: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    number: int
    title: str
    description: str


def _seed_articles() -> tuple[list[Article], list[str]]:
    """Seed articles, and the seed headlines that name the OIC."""
    articles, headlines = [], []
    manifest = json.loads((SEED_DIR / "manifest.json").read_text(encoding="utf-8"))
    for item in manifest["files"]:
        text = (SEED_DIR / item["file"]).read_text(encoding="utf-8")
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        if item["layout"] == "overview-then-items":
            for block in blocks[1:]:
                lines = block.splitlines()
                if "سازمان همکاری اسلامی" in lines[0]:
                    headlines.append(lines[0].strip())
                articles.append(Article(lines[0].strip(), " ".join(lines[1:]).strip(), ()))
        else:
            paragraphs = [p.strip() for p in text.splitlines() if p.strip()]
            articles.append(Article(paragraphs[0][:200], paragraphs[0], tuple(paragraphs[1:])))
    return articles, headlines


def _fars_articles() -> list[Article]:
    if not FARS_DIR.is_dir():
        raise FileNotFoundError(
            f"{FARS_DIR} is absent: the benchmarks build their feeds from the shared "
            "fars-news test data")
    articles = []
    for path in sorted(FARS_DIR.glob("fars-news-*.json")):
        for raw in json.loads(path.read_text(encoding="utf-8")):
            title = (raw.get("title") or "").strip()
            abstract = (raw.get("abstract") or "").strip()
            paragraphs = tuple(p.strip() for p in raw.get("paragraphs") or () if p.strip())
            if title and (abstract or paragraphs):
                articles.append(Article(title, abstract, paragraphs))
    return articles


class Corpus:
    """Deterministic item `n` for any n >= 0; distinct for n < len(articles) ** 2."""

    def __init__(self) -> None:
        seeds, self.oic_headlines = _seed_articles()
        self.articles = _fars_articles() + seeds
        self.paragraphs = [p[:MAX_PARAGRAPH] for a in self.articles for p in a.paragraphs]

    def item(self, n: int, about_oic: bool = False) -> Item:
        size = len(self.articles)
        title_from, rounds = n % size, n // size
        # Items with the same title (same n % size) take their lede from different
        # articles, one per round; the paragraph index moves with n as well.
        lede_from = self.articles[(title_from + rounds + 1) % size]
        paragraph = self.paragraphs[(n * 7919 + rounds) % len(self.paragraphs)]
        title = self.articles[title_from].title
        if about_oic:
            title = f"{self.oic_headlines[n % len(self.oic_headlines)]}؛ {title}"
        lede = lede_from.abstract or lede_from.paragraphs[0][:MAX_PARAGRAPH]
        return Item(n, title, f"{lede}\n{paragraph}".strip())
