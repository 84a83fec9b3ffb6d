"""Matching scale: per-item match time with 10 terms and with 10,000 terms.

The target (issue 3): all terms of all watches are compiled into one Aho-Corasick automaton,
so the per-item cost at 10,000 terms is at most twice the cost at 10 terms.

Items are the 900 Fars News articles of ../shared/testdata/fars-news (title, abstract and
every paragraph) when that folder is present, else generated Persian
and English text. Terms are phrases of one to three words drawn from the same vocabulary
(so they share letters and prefixes with the text, as real watch lists do), some with
Persian suffixes (`word+`), Arabic prefixes (`+word`) or case-sensitive acronyms, spread
over watches of 10 terms each; the shipped `oic` watch is always among them.

`run(quick=False)` returns the result dict; `python -m benchmarks.match_scale` prints it
and writes benchmarks/results/match_scale.json.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from monitor.config import WatchConfig, load_config
from monitor.text.match import Matcher, MatchInput
from monitor.text.normalize import ItemKey, match_key

ROOT = Path(__file__).resolve().parents[1]
FARS = ROOT.parent / "shared" / "testdata" / "fars-news"
RESULTS = Path(__file__).resolve().parent / "results" / "match_scale.json"
TARGET = 2.0


def _items(count: int) -> tuple[list[MatchInput], str]:
    if FARS.exists():
        items = []
        for path in sorted(FARS.glob("fars-news-*.json")):
            for article in json.loads(path.read_text(encoding="utf-8")):
                items.append(MatchInput(title=article.get("title") or "",
                                        summary=article.get("abstract") or "",
                                        content="\n".join(article.get("paragraphs") or [])))
        return items[:count], f"{min(count, len(items))} Fars News articles"
    rng = random.Random(7)
    sentence = ("سازمان همکاری اسلامی نشست وزیران خارجه کشورهای عضو در تهران برگزار شد "
                "the ministers of member states met in Jeddah on Monday to discuss")
    words = sentence.split(" ")
    items = [MatchInput(title=" ".join(rng.choices(words, k=12)),
                        summary=" ".join(rng.choices(words, k=60)),
                        content=" ".join(rng.choices(words, k=400))) for _ in range(count)]
    return items, f"{count} generated items (../shared/testdata/fars-news is absent)"


def _terms(count: int, vocabulary: list[str], rng: random.Random) -> list[str]:
    terms: set[str] = set()
    while len(terms) < count:
        roll = rng.random()
        if roll < 0.05:
            terms.add("".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=rng.randint(3, 6))))
            continue
        # Names and phrases of two or three words: a watch list names things; a bare common
        # word would match most items and measure alerting, not matching.
        words = rng.sample(vocabulary, rng.randint(2, 3))
        if not words[0].isascii() and roll < 0.25:
            words[0] = "+" + words[0]
        elif not words[-1].isascii() and roll < 0.45:
            words[-1] += "+"
        terms.add(" ".join(words))
    return sorted(terms)


def _watches(term_count: int, vocabulary: list[str], oic: WatchConfig) -> list[WatchConfig]:
    rng = random.Random(term_count)
    if term_count <= len(oic.any):
        return [WatchConfig(name="oic", any=oic.any[:term_count], case_sensitive=[
            t for t in oic.case_sensitive if t in oic.any[:term_count]])]
    terms = _terms(term_count - len(oic.any) - len(oic.not_), vocabulary, rng)
    watches = [oic]
    for i in range(0, len(terms), 10):
        group = terms[i:i + 10]
        acronyms = [t for t in group if t.isupper()]
        watches.append(WatchConfig(name=f"w{i}", any=group, case_sensitive=acronyms))
    return watches


def _per_item_seconds(matcher: Matcher, items: list[MatchInput]) -> float:
    started = time.perf_counter()
    for item in items:
        # What ingest does: the key once, then the match.
        matcher.match(item, ItemKey.of(item.title, item.summary, item.content))
    return (time.perf_counter() - started) / len(items)


def run(quick: bool = False) -> dict[str, Any]:
    items, source = _items(200 if quick else 900)
    runs = 3 if quick else 7
    vocabulary = sorted({w for item in items[:300] for w in match_key(item.title).split()
                         if len(w) > 2})
    vocabulary += [f"name{i}" for i in range(500)]
    oic = next(w for w in load_config(ROOT / "config" / "monitor.yaml", env={}).watches
               if w.name == "oic")
    matchers, compile_seconds = {}, {}
    for term_count in (10, 10_000):
        started = time.perf_counter()
        matchers[term_count] = Matcher(_watches(term_count, vocabulary, oic))
        compile_seconds[term_count] = time.perf_counter() - started
        _per_item_seconds(matchers[term_count], items[:50])  # warm the fold tables
    # Interleaved, so that both sizes see the same machine load.
    samples: dict[int, list[float]] = {10: [], 10_000: []}
    for _ in range(runs):
        for term_count, matcher in matchers.items():
            samples[term_count].append(_per_item_seconds(matcher, items) * 1e6)
    figures = []
    medians = {}
    for term_count, matcher in matchers.items():
        medians[term_count] = statistics.median(samples[term_count])
        figures.append({"name": f"per-item match time, {matcher.term_count:,} terms",
                        "unit": "µs/item", "median": round(medians[term_count], 1),
                        "spread": round(max(samples[term_count]) - min(samples[term_count]), 1),
                        "runs": runs})
        figures.append({"name": f"compile {matcher.term_count:,} terms", "unit": "s",
                        "median": round(compile_seconds[term_count], 3), "spread": 0.0,
                        "runs": 1})
    ratio = medians[10_000] / medians[10]
    return {
        "name": "matching scale",
        "figures": figures,
        "ratio_10k_vs_10": round(ratio, 2),
        "target": f"<= {TARGET:g}",
        "met": ratio <= TARGET,
        "notes": (f"{source}; per item: match key of title, summary and content, then one "
                  f"automaton pass; median of {runs} runs, the two sizes interleaved; "
                  "spread = max - min."),
    }


if __name__ == "__main__":
    result = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n",
                       encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False, indent=2))
