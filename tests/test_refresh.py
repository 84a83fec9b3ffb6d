"""Feed health and schedule on both backends: backoff, failing, gone, permanent redirects,
feed hints, unchanged bodies, and hostile encodings stored as clean UTF-8."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.exc import OperationalError

import monitor.articles
import monitor.parse
import monitor.refresh
from monitor.articles import Candidate, prepare
from monitor.config import load_config, load_secrets
from monitor.parse import Entry, parse_feed
from monitor.refresh import RefreshOutcome, ReleaseBatcher
from monitor.service import Monitor
from monitor.store.database import Database
from monitor.store.models import Article, Feed, FeedEntry
from monitor.store.queries import Release
from monitor.text.match import Matcher
from monitor.text.normalize import display_text
from tests.conftest import write_config
from tests.servers import FeedServer, Route, rss


def make_monitor(tmp_path: Path, db_url: str, feeds: dict[str, str], **sections: object
                 ) -> Monitor:
    sections = {"schedule": {"jitter": 0}, "fetch": {"per_host_spacing": 0}, **sections}
    path = write_config(tmp_path / "monitor.yaml", db_url,
                        feeds=[{"name": n, "url": u, "interval": 60} for n, u in feeds.items()],
                        **sections)
    config = load_config(path, env={})
    monitor = Monitor(config, load_secrets(config, env={}))
    monitor.prepare()
    return monitor


def poll(monitor: Monitor) -> dict[str, RefreshOutcome]:
    """One `monitor poll`: a fresh process-like Monitor on the same database."""
    async def run() -> list[RefreshOutcome]:
        once = Monitor(monitor.config, monitor.secrets, db=monitor.db)
        try:
            return await once.refresh_feeds(due_only=False)
        finally:
            await once.close()
    return {o.feed: o for o in asyncio.run(run())}


def feed_row(monitor: Monitor, name: str) -> Feed:
    with monitor.db.session() as session:
        return session.scalars(select(Feed).where(Feed.name == name)).one()


def until_next_check(row: Feed) -> float:
    return (row.next_check_at - datetime.now(UTC)).total_seconds()


def test_backoff_failing_and_recovery(tmp_path: Path, db_url: str,
                                      feed_server: FeedServer) -> None:
    url = feed_server.set_feed("/f", "gone for now", status=404, content_type="text/plain")
    monitor = make_monitor(tmp_path, db_url, {"f": url})
    delays = []
    for _ in range(4):
        assert poll(monitor)["f"].error == "HTTP 404 Not Found"
        row = feed_row(monitor, "f")
        delays.append(until_next_check(row))
    assert row.error_count == 4 and row.state == "failing"
    assert [round(d / 60) for d in delays] == [2, 4, 8, 16]  # interval * 2^n
    assert row.last_error == "HTTP 404 Not Found" and row.last_status == 404

    feed_server.set_feed("/f", rss([{"title": "back", "guid": "1"}]))
    assert poll(monitor)["f"].result == "stored"  # a failing feed is still probed
    row = feed_row(monitor, "f")
    assert (row.state, row.error_count, row.last_error) == ("ok", 0, None)
    assert 55 < until_next_check(row) <= 60


def test_gone_feeds(tmp_path: Path, db_url: str, feed_server: FeedServer) -> None:
    url = feed_server.set_feed("/f", "", status=410)
    monitor = make_monitor(tmp_path, db_url, {"f": url})
    poll(monitor)
    row = feed_row(monitor, "f")
    assert row.state == "gone" and row.last_error == "HTTP 410 Gone"
    assert until_next_check(row) > 23 * 3600  # still probed, once a day


def test_permanent_redirects_update_the_url(tmp_path: Path, db_url: str,
                                            feed_server: FeedServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    new = feed_server.set_feed("/new", rss([{"title": "a", "guid": "1"}]))
    feed_server.routes["/moved"] = Route(status=301, headers={"location": "/new"})
    feed_server.routes["/temporary"] = Route(status=302, headers={"location": "/new"})
    monitor = make_monitor(tmp_path, db_url, {"moved": feed_server.url("/moved"),
                                              "temporary": feed_server.url("/temporary")})
    with caplog.at_level(logging.WARNING):
        outcomes = poll(monitor)
    assert outcomes["moved"].result == "stored"
    assert feed_row(monitor, "moved").url == new
    assert feed_row(monitor, "temporary").url == feed_server.url("/temporary")
    assert f"feed moved: permanently moved from {feed_server.url('/moved')} to {new}" \
        in caplog.text


def test_feed_hints_and_an_unchanged_body(tmp_path: Path, db_url: str,
                                          feed_server: FeedServer) -> None:
    body = rss([{"title": "a", "guid": "1"}]).replace("<channel>", "<channel><ttl>30</ttl>")
    route = Route(body=body.encode(), headers={"cache-control": "max-age=120"})
    feed_server.routes["/ttl"] = route
    # A server that ignores validators: no ETag, so every answer is a full 200.
    feed_server.routes["/same"] = Route(handler=lambda h: _plain(h, route.body))
    monitor = make_monitor(tmp_path, db_url, {"ttl": feed_server.url("/ttl"),
                                              "same": feed_server.url("/same")},
                           schedule={"jitter": 0, "max_hint": "20m"})
    assert poll(monitor)["ttl"].result == "stored"
    assert until_next_check(feed_row(monitor, "ttl")) == pytest.approx(1200, abs=5)
    outcomes = poll(monitor)
    assert outcomes["ttl"].result == "not_modified"
    assert until_next_check(feed_row(monitor, "ttl")) == pytest.approx(1200, abs=5)
    assert outcomes["same"].result == "unchanged"


def _plain(handler: object, body: bytes) -> None:
    handler.send_response(200)  # type: ignore[attr-defined]
    handler.send_header("content-type", "application/rss+xml")  # type: ignore[attr-defined]
    handler.send_header("content-length", str(len(body)))  # type: ignore[attr-defined]
    handler.end_headers()  # type: ignore[attr-defined]
    handler.wfile.write(body)  # type: ignore[attr-defined]


def test_hostile_encodings_are_stored_as_clean_utf8(tmp_path: Path, db_url: str,
                                                    feed_server: FeedServer) -> None:
    arabic = "سازمان همكاري اسلامي"
    persian = "نشست وزیران خارجه در جده"
    feeds = {
        "cp1256": feed_server.set_feed(
            "/cp1256", rss([{"title": arabic, "guid": "1"}], title="x").replace(
                '<?xml version="1.0" encoding="utf-8"?>', "").encode("cp1256"),
            content_type="application/rss+xml; charset=windows-1256"),
        "utf16": feed_server.set_feed(
            "/utf16", rss([{"title": persian, "guid": "2"}]).replace(
                'encoding="utf-8"', 'encoding="utf-16"').encode("utf-16"),
            content_type="application/rss+xml"),
        "nul": feed_server.set_feed(
            "/nul", rss([{"title": "x", "guid": "3"}]).replace(
                "<title>x</title>", "<title>bad&#0;\x00 char&#xDC00;s</title>").encode()),
        # Labelled UTF-8 but written in windows-1256, as older Iranian CMSes send it.
        "cp1256-as-utf8": feed_server.set_feed(
            "/cp1256-as-utf8", rss([{"title": arabic, "guid": "4"}], title="x").encode(
                "cp1256"), content_type="application/rss+xml; charset=utf-8"),
        # UTF-8 with one letter cut in half: the rest of the feed must stay Persian.
        "cut": feed_server.set_feed(
            "/cut", rss([{"title": persian, "guid": "5"}]).encode().replace(
                "جده".encode(), "جده".encode()[:-1])),
    }
    monitor = make_monitor(tmp_path, db_url, feeds)
    outcomes = poll(monitor)
    assert {n: o.result for n, o in outcomes.items()} == dict.fromkeys(feeds, "stored")
    with monitor.db.session() as session:
        titles = {a.origin: a.title for a in session.scalars(select(Article).where(
            Article.feed_id.is_not(None)))}
    # Display text may fold Arabic yeh/kaf to Persian; the letters must be right either way.
    persian_letters = str.maketrans("يك", "یک")
    assert titles["cp1256"].translate(persian_letters) == arabic.translate(persian_letters)
    assert titles["utf16"] == persian
    assert titles["nul"].replace(" ", "") == "badchars"
    assert titles["cp1256-as-utf8"].translate(persian_letters) == \
        arabic.translate(persian_letters)
    assert titles["cut"] == persian[:-1]
    # The repairs are noted on the feed, for whoever runs it to tell the publisher.
    assert "windows-1256" in feed_row(monitor, "cp1256-as-utf8").last_error
    assert "invalid byte" in feed_row(monitor, "cut").last_error


def test_retry_after_defers_feeds_already_claimed(tmp_path: Path, db_url: str,
                                                  feed_server: FeedServer) -> None:
    """Two feeds of one host in one cycle: the 429 pauses the host, so the second feed is
    given back untouched rather than fetched against the server's wish."""
    limited = feed_server.set_feed("/a", "", status=429, headers={"retry-after": "300"})
    other = feed_server.set_feed("/b", rss([]))
    monitor = make_monitor(tmp_path, db_url, {"a": limited, "b": other},
                           fetch={"per_host_concurrency": 1, "per_host_spacing": 0.3})
    outcomes = poll(monitor)
    results = sorted(o.result for o in outcomes.values())
    if results == ["deferred", "error"]:  # /a went first
        assert feed_server.hits("/b") == 0
        assert until_next_check(feed_row(monitor, "b")) > timedelta(minutes=4).seconds
    else:  # /b was fetched before /a answered 429; it is pushed all the same
        assert results == ["error", "stored"]
        assert until_next_check(feed_row(monitor, "b")) > 290
    assert until_next_check(feed_row(monitor, "a")) > 290


def test_feed_rows_of_a_batch_are_written_in_one_transaction_within_their_leases(
        tmp_path: Path, db_url: str) -> None:
    """The 304s of a cycle are recorded together (`ReleaseBatcher`), and only on rows this
    process still leases: a feed another daemon took over keeps that daemon's state."""
    names = [f"f{i}" for i in range(6)]
    monitor = make_monitor(tmp_path, db_url, {n: f"http://127.0.0.1:9/{n}" for n in names})
    claimed = asyncio.run(monitor.claim_feeds(10, due_only=False))
    assert sorted(f.name for f in claimed) == names
    with monitor.db.session() as session:
        session.execute(update(Feed).where(Feed.name == "f3").values(lease_owner="other:1"))
    checked = datetime.now(UTC).replace(microsecond=0)
    transactions = []
    event.listen(monitor.db.engine, "begin", transactions.append)
    batcher = ReleaseBatcher(monitor.db, monitor.owner)

    async def release_all() -> None:
        await asyncio.gather(*(batcher.release(Release(f.id, {
            "next_check_at": checked + timedelta(seconds=60 + f.id), "last_status": 304,
            "state": "ok", "last_checked_at": checked, "etag": f'"{f.name}"'}))
            for f in claimed))

    asyncio.run(release_all())
    assert len(transactions) == 1
    for name in names:
        row = feed_row(monitor, name)
        if name == "f3":
            assert (row.lease_owner, row.last_status, row.etag) == ("other:1", None, None)
            continue
        assert (row.lease_owner, row.lease_until, row.last_status, row.etag) == (
            None, None, 304, f'"{name}"')
        assert row.last_checked_at.replace(tzinfo=UTC) == checked
        assert row.next_check_at.replace(tzinfo=UTC) == checked + timedelta(
            seconds=60 + row.id)


def test_304s_arriving_one_by_one_share_a_transaction_while_more_are_claimed(
        tmp_path: Path, db_url: str, feed_server: FeedServer) -> None:
    """Feeds start at their own due times, so their 304s arrive one by one. While other
    claimed feeds are still to come, an outcome waits (up to `RELEASE_LINGER`) to share
    their transaction; the last one is written at once instead of waiting out the timer."""
    names = [f"f{i}" for i in range(5)]
    urls = {n: feed_server.set_feed(f"/{n}.xml", rss([{"title": n, "guid": n}]))
            for n in names}
    monitor = make_monitor(tmp_path, db_url, urls)

    async def cycle(spread: float) -> tuple[list[RefreshOutcome], int, float]:
        feeds = await monitor.claim_feeds(10, due_only=False)
        transactions: list[object] = []
        count = transactions.append  # one object, for `event.remove`
        event.listen(monitor.db.engine, "begin", count)
        started = time.monotonic()

        async def at_its_time(i: int, feed: object) -> RefreshOutcome:
            await asyncio.sleep(i * spread)
            return await monitor.refresh(feed)  # type: ignore[arg-type]

        try:
            outcomes = await asyncio.gather(*(at_its_time(i, f) for i, f in enumerate(feeds)))
        finally:
            event.remove(monitor.db.engine, "begin", count)
        return outcomes, len(transactions), time.monotonic() - started

    async def scenario() -> None:
        try:
            await cycle(0)  # stores the documents and their validators
            outcomes, transactions, took = await cycle(0.05)
            assert [o.result for o in outcomes] == ["not_modified"] * 5
            assert transactions == 1
            assert took < 1.0
        finally:
            await monitor.close()

    asyncio.run(scenario())
    for name in names:
        row = feed_row(monitor, name)
        assert (row.lease_owner, row.last_status) == (None, 304)


def test_a_lingering_release_waits_no_longer_than_its_bound(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'monitor.db'}")
    db.migrate()

    async def release_one(linger: float, expected: int) -> float:
        batcher = ReleaseBatcher(db, "me:1", linger=linger, expected=lambda: expected)
        started = time.monotonic()
        await batcher.release(Release(1, {"next_check_at": datetime.now(UTC)}))
        return time.monotonic() - started

    # Nothing else on its way: written at once, whatever the bound.
    assert asyncio.run(release_one(linger=30, expected=1)) < 1.0
    # Others claimed that never come (stuck on a slow server): the bound, and no more.
    assert 0.3 <= asyncio.run(release_one(linger=0.3, expected=5)) < 1.5


def test_a_failed_batch_write_is_the_error_of_every_refresh_in_it(tmp_path: Path) -> None:
    broken = tmp_path / "a-directory"
    broken.mkdir()
    batcher = ReleaseBatcher(Database(f"sqlite:///{broken}"), "me:1")

    async def release_two() -> list[BaseException | None]:
        return await asyncio.gather(
            *(batcher.release(Release(i, {"next_check_at": datetime.now(UTC)}))
              for i in (1, 2)), return_exceptions=True)

    errors = asyncio.run(release_two())
    assert [type(e) for e in errors] == [OperationalError, OperationalError]


def test_a_feed_whose_lease_was_spent_waiting_is_given_back_unfetched(
        tmp_path: Path, db_url: str, feed_server: FeedServer) -> None:
    """On an overloaded machine a claimed feed can wait for a slot until its lease is
    nearly gone; fetched then, another daemon could take the lease over mid-fetch and fetch
    it again. It is released, due as before, and fetched by the next claim instead."""
    url = feed_server.set_feed("/f", rss([{"title": "one", "guid": "1"}]))
    monitor = make_monitor(tmp_path, db_url, {"f": url}, database={"url": db_url,
                                                                   "lease_seconds": 20})

    async def run() -> tuple[RefreshOutcome, RefreshOutcome]:
        try:
            [claimed] = await monitor.claim_feeds(10, due_only=False)
            assert claimed.lease_deadline < float("inf")
            late = replace(claimed, lease_deadline=time.monotonic() + 5)  # < fetch timeout
            given_back = await monitor.refresh(late)
            [again] = await monitor.claim_feeds(10)  # no lease held, still due
            return given_back, await monitor.refresh(again)
        finally:
            await monitor.close()

    given_back, fetched = asyncio.run(run())
    assert given_back.result == "deferred"
    assert fetched.result == "stored" and fetched.new_articles == 1
    assert feed_server.hits("/f") == 1
    row = feed_row(monitor, "f")
    assert (row.lease_owner, row.lease_until) == (None, None)


@pytest.mark.parametrize("identity", ["guid", "text"])
def test_entries_the_feed_carried_are_not_prepared_again(
        tmp_path: Path, db_url: str, feed_server: FeedServer,
        monkeypatch: pytest.MonkeyPatch, identity: str) -> None:
    """A changed feed prepares only its new entries; the old ones are still marked as carried
    (last_seen) and skipped. A wrong guess (the feed no longer carries an entry it carried at
    our last refresh) costs a late prepare, never an article.

    The old entries' items are repeated byte for byte, so they are not even parsed, and their
    display text is not made, whether their key is a GUID or a hash of their text; a wrong
    guess's is made when it is prepared, from the whole document read again."""
    prepared: list[str] = []
    displayed: list[str] = []

    def spy(entry: Entry, feed_name: str, matcher: Matcher) -> Candidate:
        prepared.append(entry.key)
        return prepare(entry, feed_name, matcher)

    def display_spy(raw: str | None) -> str:
        displayed.append(raw or "")
        return display_text(raw)

    # In this process's threads (parse.processes: 0), where the spies can see.
    monkeypatch.setattr(monitor.articles, "prepare", spy)  # prepare_document's
    monkeypatch.setattr(monitor.refresh, "prepare", spy)  # a wrong guess's, at store time
    monkeypatch.setattr(monitor.parse, "display_text", display_spy)

    items = {n: {"title": f"خبر شماره {n} درباره موضوعی جدا", "guid": f"tag:example.org,2026:{n}",
                 "description": f"متن خبر {n} " + "واژه " * n} for n in range(1, 5)}
    if identity == "text":
        for item in items.values():
            del item["guid"]

    def key(n: int) -> str:
        [entry] = parse_feed(rss([items[n]]).encode(), {}, "http://127.0.0.1/f").entries
        return entry.key

    def titles_displayed() -> list[int]:
        return sorted(n for n, item in items.items() if item["title"] in displayed)
    url = feed_server.set_feed("/f", rss([items[1], items[2]]))
    app = make_monitor(tmp_path, db_url, {"f": url}, parse={"processes": 0})

    def entries() -> dict[str, tuple[datetime, datetime | None]]:
        with app.db.session() as session:
            return {key: (first, last) for key, first, last in session.execute(
                select(FeedEntry.entry_key, FeedEntry.first_seen, FeedEntry.last_seen))}

    async def run() -> list[tuple[RefreshOutcome, list[str], dict[str, tuple], list[int]]]:
        steps = []
        for document in ([1, 2], [3, 1, 2], [4, 3, 1]):
            feed_server.set_feed("/f", rss([items[n] for n in document]))
            prepared.clear()
            displayed.clear()
            [outcome] = await app.refresh_feeds(due_only=False)
            steps.append((outcome, list(prepared), entries(), titles_displayed()))
            if document == [3, 1, 2]:
                # As if retention or another daemon had dropped what we remember.
                with app.db.session() as session:
                    session.execute(delete(FeedEntry).where(FeedEntry.entry_key == key(1)))
        await app.close()
        return steps

    first, second, third = asyncio.run(run())
    assert first[0].new_articles == 2 and first[1] == [key(1), key(2)]
    assert first[3] == [1, 2]

    outcome, keys, seen, displayed_titles = second
    assert keys == [key(3)]  # 1 and 2 were carried: not prepared again
    assert displayed_titles == [3]
    assert (outcome.result, outcome.entries, outcome.new_articles, outcome.duplicates) == \
        ("stored", 3, 1, 0)
    stored_at = seen[key(3)][0]
    assert seen[key(1)][1] == seen[key(2)][1] == stored_at  # still touched
    assert seen[key(1)][0] == seen[key(2)][0] == first[2][key(1)][0] < stored_at

    outcome, keys, seen, displayed_titles = third
    # 3 is carried; 1 was guessed carried, found not to be and prepared while storing: it
    # is the article stored at the first refresh again (same text), recorded anew.
    assert keys == [key(4), key(1)]
    assert displayed_titles == [1, 3, 4]  # the document read again, for 1
    assert (outcome.entries, outcome.new_articles, outcome.duplicates) == (3, 1, 1)
    assert set(seen) == {key(1), key(2), key(3), key(4)}
    assert seen[key(3)][1] == seen[key(4)][0] == seen[key(1)][0]
    with app.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Article)
                              .where(Article.origin == "f")) == 4
