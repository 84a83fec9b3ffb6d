"""Stories in the store, on both backends: copies join, one alert per story and watch,
updates, the window, the baseline, sources at send time, sketches that survive restarts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, func, insert, select, text

from monitor import stories
from monitor.alerts.outbox import claim_messages, pace_channel
from monitor.articles import prepare
from monitor.config import FeedConfig, LogChannelConfig, WatchConfig
from monitor.parse import Entry
from monitor.store.database import Database
from monitor.store.models import Alert, Article, ArticleBand, Feed, FeedEntry, Story
from monitor.store.queries import StoreResult, store_candidates, story_sources, sync_feeds
from monitor.stories import StoryRules
from monitor.text.match import Matcher
from tests.conftest import alembic

MATCHER = Matcher([
    WatchConfig(name="oic", any=["سازمان همکاری اسلامی"], channels=["c"]),
    WatchConfig(name="gaza", any=["غزه", "قدس"], channels=["c"], alert_on_update=True),
])
RULES = StoryRules(window=timedelta(days=3), update_watches=frozenset({"gaza"}))
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

TITLE = "سخنرانی وزیر خارجه ایران در نشست سازمان همکاری اسلامی در استانبول"
SUMMARY = ("وزیر امور خارجه کشورمان در نشست وزیران خارجه سازمان همکاری اسلامی در استانبول "
           "خواستار اقدام فوری کشورهای اسلامی برای توقف حملات به غزه شد.")
COPY_TITLE = "عراقچی در استانبول: کشورهای اسلامی باید فورا اقدام کنند"
COPY_SUMMARY = SUMMARY.replace("ی", "ي").replace("ک", "ك")
CLOSING_TITLE = "پایان نشست وزیران خارجه سازمان همکاری اسلامی در استانبول با صدور بیانیه"
CLOSING_SUMMARY = ("نشست دو روزه وزیران امور خارجه کشورهای عضو سازمان همکاری اسلامی عصر امروز "
                   "با صدور بیانیه پایانی در استانبول به کار خود پایان داد.")


def _entry(key: str, title: str, summary: str, link: str | None = None) -> Entry:
    return Entry(key=key, link=link, title=title, summary=summary, content="", published=None)


class Store:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.db.migrate()
        with self.db.session() as s:
            sync_feeds(s, [FeedConfig(name=n, url=f"http://127.0.0.1/{n}")
                           for n in ("irna", "isna", "mehr")], T0)
        with self.db.session() as s:
            self.feeds = {f.name: f.id for f in s.scalars(select(Feed))}

    def add(self, feed: str | None, entries: Sequence[Entry], now: datetime = T0,
            rules: StoryRules = RULES) -> StoreResult:
        origin = feed or "seed:test.txt"
        with self.db.session() as s:
            return store_candidates(
                s, feed_id=self.feeds[feed] if feed else None, origin=origin,
                candidates=[prepare(e, origin, MATCHER) for e in entries],
                channels_for=lambda _: ["c"], now=now, baseline=feed is None, rules=rules)

    def stories(self) -> dict[str, int]:
        with self.db.session() as s:
            return {a.origin: a.story_id for a in s.scalars(select(Article))}

    def alerts(self) -> list[tuple[str, str, str]]:
        with self.db.session() as s:
            return [(a.watch, a.kind, a.article.origin)
                    for a in s.scalars(select(Alert).order_by(Alert.id))]


def test_copies_from_three_feeds_are_one_story_with_one_alert_per_watch(db_url: str) -> None:
    store = Store(db_url)
    first = store.add("irna", [_entry("1", TITLE, SUMMARY, "https://irna.ir/n/1")])
    assert (first.new_articles, first.alerts) == (1, 2)  # oic and gaza
    store.add("isna", [_entry("a", COPY_TITLE, COPY_SUMMARY, "https://isna.ir/a?utm_source=x")],
              T0 + timedelta(minutes=3))
    # Mehr carries ISNA's very link (tracking parameters aside): the same article.
    mehr = store.add("mehr", [_entry("m", COPY_TITLE, COPY_SUMMARY, "https://www.isna.ir/a")],
                     T0 + timedelta(minutes=5))
    assert (mehr.new_articles, mehr.duplicates, mehr.alerts) == (0, 1, 0)
    stories = store.stories()
    assert set(stories) == {"irna", "isna"} and len(set(stories.values())) == 1
    assert store.alerts() == [("oic", "new", "irna"), ("gaza", "new", "irna")]
    with store.db.session() as s:
        assert story_sources(s, stories["irna"]) == ["irna", "isna", "mehr"]
    store.db.dispose()


def test_distinct_story_about_the_same_meeting_alerts_on_its_own(db_url: str) -> None:
    store = Store(db_url)
    store.add("irna", [_entry("1", TITLE, SUMMARY)])
    store.add("isna", [_entry("2", CLOSING_TITLE, CLOSING_SUMMARY)], T0 + timedelta(hours=5))
    stories = store.stories()
    assert stories["irna"] != stories["isna"]
    assert [a[::2] for a in store.alerts()] == [("oic", "irna"), ("gaza", "irna"),
                                                ("oic", "isna")]
    store.db.dispose()


def test_first_matching_article_of_a_story_alerts_and_updates_need_a_new_term(
        db_url: str) -> None:
    store = Store(db_url)
    no_gaza = SUMMARY.replace("حملات به غزه", "حملات")
    store.add("irna", [_entry("1", TITLE, no_gaza)])
    assert store.alerts() == [("oic", "new", "irna")]
    # A copy that adds «غزه»: the story's first match of "gaza" alerts as new.
    store.add("isna", [_entry("2", COPY_TITLE, SUMMARY)], T0 + timedelta(minutes=1))
    # A copy that adds «قدس», a gaza term the story did not have: an update (gaza has
    # alert_on_update); oic gains nothing new and stays quiet.
    with_quds = SUMMARY.replace("به غزه", "به غزه و قدس")
    store.add("mehr", [_entry("3", TITLE + " و قدس", with_quds)], T0 + timedelta(minutes=2))
    # A copy with no new term: silent.
    store.add("mehr", [_entry("4", COPY_TITLE + " امروز", SUMMARY)], T0 + timedelta(minutes=3))
    assert len(set(store.stories().values())) == 1
    assert store.alerts() == [("oic", "new", "irna"), ("gaza", "new", "isna"),
                              ("gaza", "update", "mehr")]
    store.db.dispose()


def test_without_alert_on_update_a_new_term_stays_quiet(db_url: str) -> None:
    store = Store(db_url)
    store.add("irna", [_entry("1", TITLE, SUMMARY)], rules=StoryRules())
    store.add("isna", [_entry("2", TITLE + " و قدس", SUMMARY.replace("به غزه", "به غزه و قدس"))],
              T0 + timedelta(minutes=1), rules=StoryRules())
    assert len(set(store.stories().values())) == 1
    assert [a[:2] for a in store.alerts()] == [("oic", "new"), ("gaza", "new")]
    store.db.dispose()


def test_window_limits_joining_but_not_the_baseline(db_url: str) -> None:
    store = Store(db_url)
    store.add(None, [_entry("seed#0", CLOSING_TITLE, CLOSING_SUMMARY)], T0)
    store.add("irna", [_entry("1", TITLE, SUMMARY)], T0)
    late = T0 + timedelta(days=4)
    store.add("isna", [_entry("2", COPY_TITLE, COPY_SUMMARY)], late)
    store.add("mehr", [_entry("3", "بیانیه پایانی نشست استانبول صادر شد",
                              "خبرگزاری فارس: " + CLOSING_SUMMARY)], late)
    stories = store.stories()
    assert stories["isna"] != stories["irna"]  # too late to join: a story of its own
    assert stories["mehr"] == stories["seed:test.txt"]  # the baseline never ages out
    assert [a[2] for a in store.alerts()] == ["irna", "irna", "isna", "isna"]
    with store.db.session() as s:
        mehr = s.scalar(select(Article).where(Article.origin == "mehr"))
        assert mehr.baseline and mehr.story.baseline
    store.db.dispose()


def test_sources_are_read_when_the_alert_is_sent(db_url: str) -> None:
    store = Store(db_url)
    immediate = LogChannelConfig(name="c", type="log")
    store.add("irna", [_entry("1", TITLE, SUMMARY)])
    with store.db.session() as s:
        pace_channel(s, immediate, T0)
        first = claim_messages(s, "me", ["c"], T0, timedelta(hours=1), limit=1)
    assert first[0].other_sources == ()
    store.add("isna", [_entry("2", COPY_TITLE, COPY_SUMMARY)], T0 + timedelta(minutes=1))
    store.add("mehr", [_entry("3", COPY_TITLE, SUMMARY)], T0 + timedelta(minutes=2))
    with store.db.session() as s:  # the next alert (the same story's second watch)
        [later] = claim_messages(s, "me", ["c"], T0 + timedelta(minutes=3),
                                 timedelta(minutes=1))
    assert later.article.feed == "irna"
    assert later.other_sources == ("isna", "mehr")
    store.db.dispose()


def test_a_digest_names_the_copies_that_arrived_while_it_waited(db_url: str) -> None:
    store = Store(db_url)
    digest = LogChannelConfig(name="c", type="log", mode="digest", digest={"every": "1h"})
    store.add("irna", [_entry("1", TITLE, SUMMARY)])
    with store.db.session() as s:
        pace_channel(s, digest, T0)  # held for the digest
    store.add("isna", [_entry("2", COPY_TITLE, COPY_SUMMARY)], T0 + timedelta(minutes=1))
    with store.db.session() as s:
        pace_channel(s, digest, T0 + timedelta(hours=2))
        [sent] = claim_messages(s, "me", ["c"], T0 + timedelta(hours=2), timedelta(minutes=1))
    assert [a.other_sources for a in sent.alerts] == [("isna",), ("isna",)]
    store.db.dispose()


def test_sketches_survive_a_restart_and_seeding_twice_adds_nothing(db_url: str) -> None:
    store = Store(db_url)
    seed = [_entry("seed#0", CLOSING_TITLE, CLOSING_SUMMARY)]
    assert store.add(None, seed).new_articles == 1
    store.db.dispose()
    again = Store(db_url)  # a new process: nothing is rebuilt, the band rows are read
    assert again.add(None, seed).new_articles == 0
    with again.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ArticleBand)) > 0
    again.add("irna", [_entry("1", "بیانیه پایانی نشست استانبول صادر شد", CLOSING_SUMMARY)],
              T0 + timedelta(days=30))
    assert again.stories()["irna"] == again.stories()["seed:test.txt"]
    assert again.alerts() == []
    again.db.dispose()


def test_a_stored_article_is_compared_without_shingling_its_text_again(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Articles are sketched in a parse worker and stored by the daemon: a later copy
    compared with a stored article takes its shingles from the sketch the daemon stored,
    not from its text read back, folded and shingled again."""
    store = Store(db_url)
    first, copy = (prepare(_entry(k, title, summary, f"https://{f}.ir/{k}"), f, MATCHER)
                   for k, f, title, summary in (("1", "irna", TITLE, SUMMARY),
                                                ("2", "isna", COPY_TITLE, COPY_SUMMARY)))
    # As in the daemon's process, which did not sketch them: nothing remembered yet.
    monkeypatch.setattr(stories, "_memo", stories._LeadMemo(stories.LEAD_MEMO_SIZE))
    computed: list[str] = []
    real = stories.shingles
    monkeypatch.setattr(stories, "shingles", lambda text: computed.append(text) or real(text))
    for feed, candidate in (("irna", first), ("isna", copy)):
        with store.db.session() as s:
            store_candidates(s, feed_id=store.feeds[feed], origin=feed, candidates=[candidate],
                             channels_for=lambda _: ["c"], now=T0, rules=RULES)
    assert store.stories()["isna"] == store.stories()["irna"]
    assert computed == []
    store.db.dispose()


def test_migration_sketches_articles_stored_before_it(db_url: str) -> None:
    """A database from before story sketches: its baseline and recent articles get band
    keys when 0104 runs, so a copy of them is still recognised."""
    db = Database(db_url)
    alembic(db, "upgrade", "0001")
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        story_id = connection.scalar(text(
            "INSERT INTO stories (title, baseline, created_at, updated_at) "
            "VALUES ('', true, :t, :t) RETURNING id"), {"t": now})
        connection.execute(text(
            "INSERT INTO articles (origin, story_id, fingerprint, title, summary, content,"
            " match_key, matches, baseline, fetched) VALUES ('seed:old.txt', :story, 'f',"
            " :title, :summary, '', '', '[]', true, :t)"),
            {"story": story_id, "title": CLOSING_TITLE, "summary": CLOSING_SUMMARY,
             "t": now - timedelta(days=400)})
    db.migrate()
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ArticleBand)) > 0
    db.dispose()
    store = Store(db_url)
    store.add("irna", [_entry("1", "بیانیه پایانی نشست استانبول صادر شد", CLOSING_SUMMARY)])
    assert store.stories()["irna"] == story_id and store.alerts() == []
    store.db.dispose()


def test_band_keys_stored_before_0108_are_kept_and_still_found(db_url: str) -> None:
    """0108 copies article_bands into a table keyed by (baseline, band, article_id): every
    row stored before it is kept, and copies of a baseline and of a recent article still
    find theirs. Its downgrade gives the old keys back, rows and all."""
    from sqlalchemy import inspect

    db = Database(db_url)
    for head in ("0105", "0106", "0107"):  # the schema before 0108
        alembic(db, "upgrade", head)
    with db.session() as s:
        sync_feeds(s, [FeedConfig(name=n, url=f"http://127.0.0.1/{n}")
                       for n in ("irna", "isna", "mehr")], T0)
        feeds = {f.name: f.id for f in s.scalars(select(Feed))}
    for origin, entry in (("seed:old.txt", _entry("s", CLOSING_TITLE, CLOSING_SUMMARY)),
                          ("irna", _entry("1", TITLE, SUMMARY, "https://irna.ir/n/1"))):
        with db.session() as s:
            store_candidates(s, feed_id=feeds.get(origin), origin=origin,
                             candidates=[prepare(entry, origin, MATCHER)],
                             channels_for=lambda _: ["c"], now=T0,
                             baseline=origin.startswith("seed:"), rules=RULES)

    def band_rows() -> set[tuple[int, int, bool]]:
        with db.engine.connect() as connection:
            return {(band, article, bool(baseline)) for band, article, baseline in
                    connection.execute(text("SELECT band, article_id, baseline "
                                            "FROM article_bands"))}

    def keys() -> tuple[list[str], set[str]]:
        with db.engine.connect() as connection:
            table = inspect(connection)
            return (table.get_pk_constraint("article_bands")["constrained_columns"],
                    {ix["name"] for ix in table.get_indexes("article_bands")})

    before = band_rows()
    assert len(before) == 64 and sum(baseline for *_, baseline in before) == 32
    assert keys() == (["band", "article_id"],
                      {"ix_article_bands_baseline", "ix_article_bands_article_id"})
    db.migrate()
    assert band_rows() == before
    assert keys() == (["baseline", "band", "article_id"], {"ix_article_bands_article_id"})
    db.dispose()
    store = Store(db_url)
    store.add("isna", [_entry("a", COPY_TITLE, COPY_SUMMARY, "https://isna.ir/a")],
              T0 + timedelta(minutes=3))
    store.add("mehr", [_entry("m", "بیانیه پایانی نشست استانبول صادر شد", CLOSING_SUMMARY)],
              T0 + timedelta(minutes=5))
    found = store.stories()
    assert found["isna"] == found["irna"] and found["mehr"] == found["seed:old.txt"]
    store.db.dispose()
    db = Database(db_url)
    after = band_rows()
    alembic(db, "downgrade", "0107")  # undoes what depends on 0107: 0108
    assert band_rows() == after
    assert keys() == (["band", "article_id"],
                      {"ix_article_bands_baseline", "ix_article_bands_article_id"})
    with db.engine.connect() as connection:
        assert {v for (v,) in connection.execute(text(
            "SELECT version_num FROM alembic_version"))} == {"0105", "0106", "0107"}
    db.dispose()


def test_the_same_text_at_another_link_is_a_copy_in_the_same_story(db_url: str) -> None:
    store = Store(db_url)
    result = store.add("irna", [_entry("1", TITLE, SUMMARY, "https://irna.ir/n/1"),
                                _entry("2", TITLE, SUMMARY, "https://irna.ir/n/2")])
    assert (result.new_articles, result.alerts) == (2, 2)
    # Without a link, the same text from the same feed can only be the same article.
    again = store.add("irna", [_entry("3", TITLE, SUMMARY)])
    assert (again.new_articles, again.duplicates) == (0, 1)
    with store.db.session() as s:
        assert len(set(s.scalars(select(Article.story_id)))) == 1
    store.db.dispose()


def test_the_same_text_days_later_is_a_new_story(db_url: str) -> None:
    """A headline that recurs (a daily digest) is not glued to last week's story."""
    store = Store(db_url)
    digest = "مهم‌ترین عناوین روزنامه‌های صبح امروز درباره سازمان همکاری اسلامی"
    store.add("irna", [_entry("1", digest, "", "https://irna.ir/d/1")])
    store.add("irna", [_entry("2", digest, "", "https://irna.ir/d/2")], T0 + timedelta(hours=2))
    store.add("irna", [_entry("3", digest, "", "https://irna.ir/d/3")], T0 + timedelta(days=7))
    with store.db.session() as s:
        stories = [a.story_id for a in s.scalars(select(Article).order_by(Article.id))]
    assert stories[0] == stories[1] != stories[2]
    assert [a[2] for a in store.alerts()] == ["irna", "irna"]
    store.db.dispose()


def test_copies_within_one_feed_document_are_decided_in_order(db_url: str) -> None:
    """A feed's entries are stored as one batch: an item later in the document joins the
    story of an earlier one exactly as if that one had been stored by an earlier refresh."""
    store = Store(db_url)
    no_gaza = SUMMARY.replace("حملات به غزه", "حملات")
    with_quds = SUMMARY.replace("به غزه", "به غزه و قدس")
    result = store.add("irna", [
        _entry("1", TITLE, no_gaza, "https://irna.ir/n/1"),
        _entry("2", COPY_TITLE, SUMMARY, "https://irna.ir/n/2"),  # a retelling: adds gaza
        _entry("3", TITLE + " و قدس", with_quds, "https://irna.ir/n/3"),  # adds a gaza term
        _entry("4", CLOSING_TITLE, CLOSING_SUMMARY, "https://irna.ir/n/4"),  # another story
        _entry("5", TITLE, no_gaza, "https://irna.ir/n/1?utm_source=rss"),  # 1's link again
    ])
    assert (result.new_articles, result.duplicates, result.alerts) == (4, 1, 4)
    with store.db.session() as s:
        stories = [a.story_id for a in s.scalars(select(Article).order_by(Article.id))]
        entries = dict(s.execute(select(FeedEntry.entry_key, FeedEntry.article_id)).all())
        assert s.scalar(select(func.count()).select_from(Story)) == 2
    assert stories[0] == stories[1] == stories[2] != stories[3]
    assert entries["5"] == entries["1"]
    assert [a[:2] for a in store.alerts()] == [("oic", "new"), ("gaza", "new"),
                                               ("gaza", "update"), ("oic", "new")]
    store.db.dispose()


def test_a_copy_of_a_baseline_article_in_the_same_document_is_baseline(db_url: str) -> None:
    store = Store(db_url)
    store.add(None, [_entry("seed#0", CLOSING_TITLE, CLOSING_SUMMARY)])
    result = store.add("irna", [
        _entry("1", "بیانیه پایانی نشست استانبول صادر شد", "خبرگزاری فارس: " + CLOSING_SUMMARY),
        _entry("2", "بیانیه پایانی نشست استانبول صادر شد", CLOSING_SUMMARY + " امروز"),
    ])
    assert (result.new_articles, result.alerts) == (2, 0)
    with store.db.session() as s:
        articles = list(s.scalars(select(Article).order_by(Article.id)))
    assert len({a.story_id for a in articles}) == 1
    assert all(a.baseline for a in articles)
    store.db.dispose()


def _wait_until_blocked_by(db: Database, writer: Connection) -> None:
    """On PostgreSQL, until some session waits for the writer's uncommitted rows. (On SQLite
    the whole transaction waits for the writer's lock: any order gives the same result.)"""
    if db.dialect != "postgresql":
        return
    writer_pid = writer.scalar(text("SELECT pg_backend_pid()"))
    deadline = time.monotonic() + 60
    with db.engine.connect() as watcher:
        while True:
            waiting = watcher.scalar(text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))"),
                {"pid": writer_pid})
            # pg_stat_activity is a snapshot taken once per transaction: take a new one.
            watcher.rollback()
            if waiting:
                return
            assert time.monotonic() < deadline, "the store never waited for the writer"
            time.sleep(0.02)


def test_a_link_another_writer_stores_meanwhile_is_that_writers_article(db_url: str) -> None:
    """Another process inserts an article at a link that this batch is storing and commits
    only once the batch's insert waits for it: the batch takes that article (a duplicate),
    starts no story of its own, and its copy of the text joins the other article's story."""
    store = Store(db_url)
    link = "https://irna.ir/n/1"
    theirs = prepare(_entry("x", TITLE, SUMMARY, link), "isna", MATCHER)
    with store.db.engine.connect() as writer:
        transaction = writer.begin()
        story_id = writer.scalar(insert(Story).values(
            title=TITLE, baseline=False, created_at=T0, updated_at=T0).returning(Story.id))
        article_id = writer.scalar(insert(Article).values(
            origin="isna", story_id=story_id, link=link, canonical_link=theirs.canonical_link,
            fingerprint=theirs.fingerprint, title=TITLE, summary=SUMMARY, fetched=T0,
        ).returning(Article.id))
        with ThreadPoolExecutor(1) as pool:
            storing = pool.submit(store.add, "irna", [
                _entry("1", TITLE, SUMMARY, link),
                _entry("2", TITLE, SUMMARY, "https://irna.ir/n/2")])
            try:
                _wait_until_blocked_by(store.db, writer)
            finally:
                # Whatever happened, or the store (holding the story lock) waits forever.
                transaction.commit()
            result = storing.result(timeout=60)
    assert (result.new_articles, result.duplicates, result.alerts) == (1, 1, 2)
    with store.db.session() as s:
        entries = dict(s.execute(select(FeedEntry.entry_key, FeedEntry.article_id)).all())
        assert s.scalar(select(func.count()).select_from(Story)) == 1
    assert entries["1"] == article_id
    assert store.stories() == {"isna": story_id, "irna": story_id}
    assert store.alerts() == [("oic", "new", "irna"), ("gaza", "new", "irna")]
    store.db.dispose()


def test_a_seed_another_daemon_loads_meanwhile_is_not_stored_twice(db_url: str) -> None:
    """Two daemons starting together load the same seed file: the second, having looked
    before the first committed, looks again once it holds the story lock."""
    from monitor.store.queries import _STORY_LOCK_KEY

    store = Store(db_url)
    seed = _entry("seed#0", CLOSING_TITLE, CLOSING_SUMMARY)
    theirs = prepare(seed, "seed:test.txt", MATCHER)
    with store.db.engine.connect() as writer:
        transaction = writer.begin()
        if store.db.dialect == "postgresql":
            writer.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _STORY_LOCK_KEY})
        story_id = writer.scalar(insert(Story).values(
            title=CLOSING_TITLE, baseline=True, created_at=T0, updated_at=T0
        ).returning(Story.id))
        writer.execute(insert(Article).values(
            origin="seed:test.txt", story_id=story_id, fingerprint=theirs.fingerprint,
            title=CLOSING_TITLE, summary=CLOSING_SUMMARY, baseline=True, fetched=T0))
        with ThreadPoolExecutor(1) as pool:
            storing = pool.submit(store.add, None, [seed])
            try:
                _wait_until_blocked_by(store.db, writer)
            finally:
                transaction.commit()
            result = storing.result(timeout=60)
    assert (result.new_articles, result.duplicates) == (0, 1)
    assert store.stories() == {"seed:test.txt": story_id}
    store.db.dispose()
