"""Story lookup scale: per-article candidate lookup at 10,000 and at 1,000,000 stored articles.

What is timed is `monitor.store.queries.find_similar_story` — the band-key index lookup for
the recent window and the baseline, then the exact comparison with the candidates it
returns — for real Fars News articles, half of which have a near-copy stored among the
recent articles (so the lookup finds, fetches and compares it) and half of which have none.

The stored articles are bulk-inserted into a SQLite file built once and cached in
`benchmarks/.cache/` (gitignored): the band rows of the filler articles are distinct random
64-bit keys, 32 to an article, inserted in key order so that 32 million rows load in a few
minutes. Random
keys model unrelated articles (their band keys almost never coincide); hot buckets of
boilerplate text would add candidates at any size. Articles arrive at a constant rate
(`RATE_PER_DAY`), so the larger store is a longer history, not a busier window.

`python -m benchmarks.story_scale [--quick]` prints the result as JSON.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.story_quality import FARS, Item, _copy, fars_items
from monitor import stories
from monitor.store.database import Database
from monitor.store.queries import find_similar_story
from monitor.stories import StoryRules

CACHE = Path(__file__).resolve().parent / ".cache"
RATE_PER_DAY = 5_000  # a large desk: 200 feeds x 25 new items a day
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
QUERIES = 200
RUNS = 5
_SCHEMA_VERSION = "v4"  # bump when the filler or the schema changes: rebuilds the cache


def _queries() -> tuple[list[Item], list[Item]]:
    """(articles looked up, near-copies planted for half of them)."""
    rng = random.Random(11)
    originals = [i for i in fars_items(FARS) if i.story.startswith("http")]
    unique = list({i.story: i for i in originals}.values())
    chosen = rng.sample(unique, QUERIES)
    planted = [_copy(item, [], rng) for item in chosen[: QUERIES // 2]]
    return chosen, planted


def _build(path: Path, size: int, planted: list[Item]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    schema = Database(f"sqlite:///{tmp}")
    schema.migrate()
    schema.dispose()
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    rng = np.random.default_rng(size)
    filler = size - len(planted)
    step = 86400.0 / RATE_PER_DAY

    def when(n: int) -> str:  # article n of `size`, the last one arriving at NOW
        return (NOW - timedelta(seconds=(size - n) * step)).strftime("%Y-%m-%d %H:%M:%S.%f")

    with conn:
        conn.executemany("INSERT INTO stories (id, title, baseline, created_at, updated_at) "
                         "VALUES (?, '', 0, ?, ?)",
                         ((n, when(n), when(n)) for n in range(1, size + 1)))
        conn.executemany(
            "INSERT INTO articles (id, origin, story_id, fingerprint, title, summary, content,"
            " match_key, matches, baseline, fetched) VALUES (?, 'bench', ?, ?, ?, '', '', '',"
            " '[]', 0, ?)",
            ((n, n, f"{n:040x}", f"filler article {n}", when(n)) for n in range(1, filler + 1)))
        # Distinct keys in ascending order: cumulative sums of random gaps across the int64
        # range. Each filler article owns `BANDS` of them, as a real article does; that they
        # are neighbours does not matter to a lookup, which seeks each key of its own (the
        # fillers' keys do not meet the queries'), and it lets the index by article id load in
        # order too, instead of a random page per row (the build took 6 minutes so).
        rows = filler * stories.BANDS
        gap = (2**64 - 2**20) // rows
        start = -(2**63) + 1
        for first in range(0, rows, 1_000_000):
            count = min(1_000_000, rows - first)
            keys = start + np.cumsum(rng.integers(1, gap, size=count, dtype=np.int64))
            start = int(keys[-1])
            owners = (first + np.arange(count)) // stories.BANDS + 1
            conn.executemany("INSERT INTO article_bands (band, article_id, baseline) "
                             "VALUES (?, ?, 0)", zip(keys.tolist(), owners.tolist(), strict=True))
        for n, item in enumerate(planted, start=filler + 1):
            conn.execute(
                "INSERT INTO articles (id, origin, story_id, fingerprint, title, summary,"
                " content, match_key, matches, baseline, fetched) VALUES (?, 'copy', ?, ?, ?,"
                " ?, ?, '', '[]', 0, ?)",
                (n, n, f"{n:040x}", item.title, item.summary, item.content, when(n)))
            conn.executemany("INSERT OR IGNORE INTO article_bands VALUES (?, ?, 0)",
                             [(key, n) for key in stories.sketch(
                                 item.title, item.summary, item.content).bands])
    conn.execute("ANALYZE")
    conn.close()
    tmp.rename(path)


def _database(size: int, planted: list[Item]) -> Path:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"story_scale_{_SCHEMA_VERSION}_{size}.db"
    if not path.exists():
        started = time.perf_counter()
        _build(path, size, planted)
        print(f"built {path.name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return path


def _lookups(session, sketches: list[stories.Sketch]) -> tuple[float, int]:
    """The median lookup time (ms) over the sketches, and how many found a story."""
    rules = StoryRules()
    times, found = [], 0
    for sketch in sketches:
        started = time.perf_counter()
        found += find_similar_story(session, sketch, NOW, rules) is not None
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), found


def run(quick: bool = False) -> dict:
    sizes = (10_000, 100_000 if quick else 1_000_000)
    runs = 2 if quick else RUNS
    queries, planted = _queries()
    sketches = [stories.sketch(i.title, i.summary, i.content) for i in queries]
    databases = [Database(f"sqlite:///{_database(size, planted)}") for size in sizes]
    medians: list[list[float]] = [[] for _ in sizes]
    found = [0 for _ in sizes]
    with databases[0].session() as small, databases[1].session() as large:
        sessions = (small, large)
        for session in sessions:  # warm-up: the first touch of pages is not the steady state
            _lookups(session, sketches)
        # The sizes take turns, so a busy moment on the machine hits both alike.
        for _ in range(runs):
            for n, session in enumerate(sessions):
                median, found[n] = _lookups(session, sketches)
                medians[n].append(median)
    for db in databases:
        db.dispose()
    figures = [{"name": f"lookup at {size:,} stored articles", "unit": "ms",
                "median": round(statistics.median(m), 3),
                "spread": round(max(m) - min(m), 3), "runs": len(m)}
               for size, m in zip(sizes, medians, strict=True)]
    ratio = figures[1]["median"] / figures[0]["median"]
    return {
        "name": "story lookup scale",
        "figures": figures,
        "ratio": round(ratio, 3),
        "target": "<= 2.0",
        "met": ratio <= 2.0,
        "notes": (f"SQLite, {len(queries)} lookups per run, the two sizes in turn (median per "
                  f"lookup; spread = max - min of the run medians); {len(planted)} have a "
                  f"planted near-copy, found: {found[0]} and {found[1]}; {stories.BANDS} band "
                  f"keys per article, threshold {stories.DEFAULT_THRESHOLD}, window 3 days at "
                  f"{RATE_PER_DAY:,} articles a day"
                  + ("; quick: 100,000 instead of 1,000,000" if quick else "")),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
