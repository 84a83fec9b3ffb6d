"""How well `monitor.stories` groups copies of one story and keeps distinct stories apart.

The labelled set: 900 real Fars News articles (../shared/testdata/fars-news/), each a story of
its own (many share a topic and its vocabulary); for a third of them, one to three copies
edited the way other agencies republish (another headline, Arabic/Persian yeh and kaf, ZWNJ
or space or nothing, another agency's opening formula, a sentence added or dropped, a
truncated summary, the full text sent along); the hand-written OIC meeting stories of
`benchmarks/story_cases.py`; and the seed baseline items with an edited copy of each.

Items are clustered in publication order exactly as the store does it (band-key lookup,
then the most similar candidate above the threshold), and pairwise precision, recall and
F1 are computed over all pairs of items. `python -m benchmarks.story_quality` prints them
for a range of thresholds.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from benchmarks.story_cases import STORIES
from monitor import stories
from monitor.seed import read_seeds

ROOT = Path(__file__).resolve().parents[1]
FARS = ROOT.parent / "shared" / "testdata" / "fars-news"
THRESHOLDS = [round(0.40 + 0.05 * i, 2) for i in range(11)]


@dataclass(frozen=True)
class Item:
    story: str  # the gold label
    title: str
    summary: str
    content: str = ""


# --- edits an agency makes when it republishes -------------------------------------------

_ARABIC = str.maketrans({"ی": "ي", "ک": "ك"})
_PERSIAN = str.maketrans({"ي": "ی", "ك": "ک"})
_AGENCIES = ("به گزارش ایرنا،", "به گزارش ایسنا،", "به گزارش مهر،", "خبرگزاری تسنیم:",
             "به گزارش باشگاه خبرنگاران جوان،")
_PREFIX = re.compile(r"^\s*(?:خبرگزار[يی] فارس\s*[:،]|به گزارش [^،]{0,40}،)\s*")
_SENTENCE = re.compile(r"(?<=[.!؟?])\s+")


def _orthography(text: str, rng: random.Random) -> str:
    text = text.translate(_PERSIAN if "ي" in text or "ك" in text else _ARABIC)
    choice = rng.random()
    if choice < 0.35:
        text = text.replace("\u200c", " ")
    elif choice < 0.6:
        text = text.replace("\u200c", "")
    else:
        text = re.sub(r"\b(م[يی]) ", "\\1\u200c", text)
        text = re.sub(r" (ها|های|هاي)\b", "\u200c\\1", text)
    return text.replace("فوق العاده", "فوق‌العاده")


def _new_headline(title: str, summary: str, rng: random.Random) -> str:
    body = _PREFIX.sub("", summary)
    if "گفت:" in body and rng.random() < 0.5:
        quote = body.split("گفت:", 1)[1].split()
        return " ".join(quote[:rng.randint(6, 10)])
    words = body.split()
    if len(words) >= 8:
        return " ".join(words[:rng.randint(7, 12)])
    return " ".join(title.split()[::-1])


def _copy(original: Item, paragraphs: list[str], rng: random.Random) -> Item:
    title, summary, content = original.title, original.summary, original.content
    edits = rng.sample(["headline", "agency", "add", "drop", "truncate", "content"],
                       k=rng.randint(1, 3))
    if "headline" in edits:
        title = _new_headline(title, summary, rng)
    if "agency" in edits:
        summary = f"{rng.choice(_AGENCIES)} {_PREFIX.sub('', summary)}"
    if "add" in edits and paragraphs:
        extra = _SENTENCE.split(paragraphs[rng.randrange(min(2, len(paragraphs)))])[0]
        summary = f"{summary} {extra}"
    if "drop" in edits:
        sentences = _SENTENCE.split(summary)
        words = summary.split()
        if len(sentences) > 1 and len(sentences[-1].split()) < 0.5 * len(words):
            summary = " ".join(sentences[:-1])
        else:  # the last clause
            summary = " ".join(words[:int(len(words) * rng.uniform(0.75, 0.9))]) + "."
    if "truncate" in edits:
        words = summary.split()
        summary = " ".join(words[:max(12, int(len(words) * rng.uniform(0.6, 0.8)))]) + " …"
    if "content" in edits and paragraphs:
        content = "\n".join(paragraphs)
    return Item(original.story, _orthography(title, rng), _orthography(summary, rng),
                _orthography(content, rng))


# --- the labelled set ----------------------------------------------------------------------

def fars_items(folder: Path = FARS, seed: int = 4) -> list[Item]:
    rng = random.Random(seed)
    items: list[Item] = []
    for path in sorted(folder.glob("fars-news-*.json")):
        for article in json.loads(path.read_text(encoding="utf-8")):
            # Labelled by link: a few articles appear in two of the files.
            original = Item(article["link"], article["title"], article["abstract"])
            items.append(original)
            if rng.random() < 1 / 3:
                items.extend(_copy(original, article["paragraphs"], rng)
                             for _ in range(rng.randint(1, 3)))
    return _interleave(items, rng)


def _interleave(items: list[Item], rng: random.Random) -> list[Item]:
    """Copies arrive minutes after their original, mixed with other stories' items."""
    timed = []
    first_seen: dict[str, float] = {}
    for i, item in enumerate(items):
        start = first_seen.setdefault(item.story, float(i))
        timed.append((start + rng.uniform(0, 12) if start != i else float(i), i, item))
    return [item for _, _, item in sorted(timed)]


def hand_items() -> list[Item]:
    return [Item(story, title, summary) for story, versions in STORIES.items()
            for title, summary in versions]


def seed_items(seed_path: Path = ROOT / "seed_data", seed: int = 7) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for seed_file in read_seeds(seed_path):
        for entry in seed_file.entries:
            original = Item(entry.key, entry.title, entry.summary, entry.content)
            paragraphs = entry.content.splitlines()[1:] if entry.content else []
            items += [original, _copy(original, paragraphs, rng)]
    return items


def labelled_set(folder: Path = FARS) -> list[Item]:
    return seed_items() + hand_items() + fars_items(folder)


# --- clustering and scoring ----------------------------------------------------------------

Candidates = list[list[tuple[int, frozenset[int]]]]


def candidates(items: list[Item]) -> Candidates:
    """For each item, the earlier items sharing a band key with it (what the database lookup
    returns), with their shingles."""
    index: dict[int, list[int]] = defaultdict(list)
    sketches = [stories.sketch(i.title, i.summary, i.content) for i in items]
    found = []
    for n, sketch in enumerate(sketches):
        earlier = sorted({m for key in sketch.bands for m in index.get(key, ())})
        found.append([(m, sketches[m].shingles) for m in earlier])
        for key in sketch.bands:
            index[key].append(n)
    return found


def cluster(items: list[Item], found: Candidates, threshold: float) -> list[int]:
    """The story (index of its first item) of each item, decided as the store decides."""
    assigned: list[int] = []
    for item, earlier in zip(items, found, strict=True):
        new = stories.sketch(item.title, item.summary, item.content).shingles
        best = stories.closest(new, earlier, threshold)
        assigned.append(assigned[best[0]] if best else len(assigned))
    return assigned


def pairwise(gold: list[str], predicted: list[int]) -> dict[str, float]:
    def pairs(labels) -> set[tuple[int, int]]:
        groups: dict[object, list[int]] = defaultdict(list)
        for n, label in enumerate(labels):
            groups[label].append(n)
        return {p for members in groups.values() for p in combinations(members, 2)}

    truth, found = pairs(gold), pairs(predicted)
    hits = len(truth & found)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "true_pairs": len(truth), "found_pairs": len(found)}


def evaluate(items: list[Item], thresholds: list[float] = THRESHOLDS) -> dict[float, dict]:
    found = candidates(items)
    gold = [i.story for i in items]
    return {t: pairwise(gold, cluster(items, found, t)) for t in thresholds}


def main() -> None:
    """A Markdown table: the whole set, and the hand-written meeting stories alone."""
    items = labelled_set()
    print(f"{len(items)} items, {len({i.story for i in items})} stories; "
          f"{len(hand_items())} hand-written items in {len(STORIES)} stories\n")
    print("| threshold | precision | recall | F1 | meeting stories: precision / recall |")
    print("|---|---|---|---|---|")
    hand = evaluate(hand_items())
    for t, r in evaluate(items).items():
        print(f"| {t:.2f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
              f"{hand[t]['precision']:.3f} / {hand[t]['recall']:.3f} |")


if __name__ == "__main__":
    main()
