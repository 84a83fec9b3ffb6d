"""/healthz and /metrics scraped over real loopback HTTP from a running daemon."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select, text

from monitor.scheduler import Daemon
from monitor.store.models import Feed
from tests.conftest import WEBHOOK_SECRET, write_config
from tests.running import daemon_in_loop, eventually
from tests.servers import FeedServer, WebhookReceiver, rss
from tests.test_end_to_end import MATCHING, NOT_MATCHING

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def healthz_url(daemon: Daemon) -> str:
    assert daemon.endpoint is not None
    return f"http://127.0.0.1:{daemon.endpoint.port}/healthz"


async def answers(client: httpx.AsyncClient, url: str, status: int) -> bool:
    return (await client.get(url)).status_code == status


def test_healthz_and_metrics_follow_the_daemon(
    tmp_path: Path, db_url: str, feed_server: FeedServer, webhook_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONITOR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    good = feed_server.set_feed("/good.xml", rss([NOT_MATCHING]))
    bad = feed_server.set_feed("/bad.xml", "", status=500)
    webhook_receiver.statuses = [500]  # the first attempt fails: the outbox holds it
    config = write_config(
        tmp_path / "monitor.yaml", db_url,
        http={"listen": "127.0.0.1:0"}, retention={"interval": "1s"},
        feeds=[{"name": "good", "url": good, "interval": 1},
               {"name": "bad", "url": bad, "interval": 1}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["hook"]}],
        channels=[{"name": "hook", "type": "webhook", "url": webhook_receiver.url("/hook"),
                   "secret_env": "MONITOR_WEBHOOK_SECRET"}])

    async def scenario() -> None:
        async with daemon_in_loop(config) as daemon, httpx.AsyncClient() as client:
            assert daemon.endpoint is not None
            base = f"http://127.0.0.1:{daemon.endpoint.port}"

            async def scrape() -> Samples:
                response = await client.get(base + "/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                assert "server" not in response.headers
                assert WEBHOOK_SECRET not in response.text
                assert webhook_receiver.url("/hook") not in response.text  # no config dump
                return parse_metrics(response.text)

            async def healthy() -> bool:
                return (await client.get(base + "/healthz")).status_code == 200

            assert await eventually(healthy)
            health = await client.get(base + "/healthz")
            assert health.json()["status"] == "ok"
            assert "server" not in health.headers and "date" not in health.headers
            assert await eventually(lambda: feed_server.hits("/bad.xml") >= 1)

            def good_polled() -> bool:
                with daemon.monitor.db.session() as session:
                    return session.scalar(select(Feed.last_success_at)
                                          .where(Feed.name == "good")) is not None

            assert await eventually(good_polled)
            before = await scrape()
            assert value(before, "monitor_database_up") == 1
            assert value(before, "monitor_feeds", state="ok") + value(
                before, "monitor_feeds", state="new") + value(
                before, "monitor_feeds", state="failing") == 2
            assert value(before, "monitor_articles") >= 1

            feed_server.set_feed("/good.xml", rss([MATCHING, NOT_MATCHING]))
            samples: list[Samples] = []

            async def scraped(name: str, wanted: float, **labels: str) -> bool:
                # The receiver sees a POST a moment before the daemon records its result.
                samples.append(await scrape())
                return value(samples[-1], name, **labels) == wanted

            # The first attempt is answered 500: the outbox holds the delivery for a retry.
            assert await eventually(lambda: scraped(
                "monitor_outbox_depth", 1, channel="hook", state="failed"))
            assert len(webhook_receiver.posts) == 1
            assert await eventually(lambda: len(webhook_receiver.posts) == 2, timeout=15)
            assert await eventually(lambda: scraped(
                "monitor_outbox_depth", 0, channel="hook", state="failed"))
            assert await eventually(lambda: feed_server.hits("/bad.xml") >= 2)

            async def errors_counted() -> bool:
                # The server answers a moment before the daemon records the failed fetch.
                samples.append(await scrape())
                return value(samples[-1], "monitor_fetches_total", result="error") > value(
                    before, "monitor_fetches_total", result="error")

            await eventually(errors_counted)
            after = samples[-1]

            def grew(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert grew("monitor_items_stored_total") == 1
            assert grew("monitor_matches_total", watch="oic") == 1
            assert grew("monitor_fetches_total", result="stored") >= 1
            assert grew("monitor_fetches_total", result="error") >= 1
            assert grew("monitor_fetch_duration_seconds_count") >= 2
            assert grew("monitor_deliveries_total", channel="hook", result="failed") == 1
            assert grew("monitor_deliveries_total", channel="hook", result="delivered") == 1
            assert grew("monitor_last_cycle_timestamp_seconds") > 0
            assert grew("monitor_articles") == 1
            # The retention job ran (every second here) and reported what it removed.
            assert ("monitor_pruned_rows_total", (("table", "articles"),)) in after

            # Only the two routes, only GET and HEAD, nothing else answers.
            assert (await client.get(base + "/")).status_code == 404
            assert (await client.post(base + "/healthz")).status_code == 405
            head = await client.head(base + "/healthz")
            assert head.status_code == 200 and head.content == b""

    asyncio.run(scenario())


def test_healthz_is_503_with_a_reason_when_cycles_stop(
    tmp_path: Path, sqlite_url: str, feed_server: FeedServer,
) -> None:
    feed = feed_server.set_feed("/feed.xml", rss([NOT_MATCHING]))
    config = write_config(tmp_path / "monitor.yaml", sqlite_url,
                          http={"listen": "127.0.0.1:0", "max_cycle_age": 1},
                          feeds=[{"name": "news", "url": feed, "interval": 1}])

    async def scenario() -> None:
        async with daemon_in_loop(config) as daemon, httpx.AsyncClient() as client:
            url = healthz_url(daemon)
            assert await eventually(lambda: answers(client, url, 200))
            # A wedged clock: the scheduler runs, but its tick job does not fire.
            assert daemon._scheduler is not None
            daemon._scheduler.pause_job("tick")
            assert await eventually(lambda: answers(client, url, 503), timeout=5)
            body = (await client.get(url)).json()
            assert body["status"] == "unhealthy"
            assert body["reason"].startswith("no poll cycle has completed for")
            assert str(tmp_path) not in body["reason"]
            daemon._scheduler.resume_job("tick")
            assert await eventually(lambda: answers(client, url, 200), timeout=5)

    asyncio.run(scenario())


def test_healthz_is_503_while_the_database_does_not_answer(
    tmp_path: Path, db_url: str,
) -> None:
    config = write_config(tmp_path / "monitor.yaml", db_url, http={"listen": "127.0.0.1:0"})
    engine = create_engine(db_url)

    def rename(old: str, new: str) -> None:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

    async def scenario() -> None:
        async with daemon_in_loop(config) as daemon, httpx.AsyncClient() as client:
            url = healthz_url(daemon)
            assert await eventually(lambda: answers(client, url, 200))
            await asyncio.to_thread(rename, "feeds", "feeds_away")
            try:
                response = await client.get(url)
                assert response.status_code == 503
                assert response.json()["reason"].startswith("the database does not answer")
                assert db_url not in response.text
            finally:
                await asyncio.to_thread(rename, "feeds_away", "feeds")
            assert await eventually(lambda: answers(client, url, 200))

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_http_listen_null_is_off_and_a_taken_port_is_logged_not_fatal(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    off = write_config(tmp_path / "off.yaml", sqlite_url, http={"listen": None})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = write_config(tmp_path / "busy.yaml", sqlite_url,
                            http={"listen": f"127.0.0.1:{port}"})

        async def scenario() -> None:
            async with daemon_in_loop(off) as daemon:
                assert daemon.endpoint is None
                assert daemon.started.is_set()
            # A second daemon on one host with the same port still alerts; the log says why
            # it has no endpoint.
            async with daemon_in_loop(busy) as daemon:
                assert daemon.endpoint is None
                assert daemon.started.is_set()
            assert f"http.listen: cannot listen on 127.0.0.1:{port}" in caplog.text

        asyncio.run(scenario())
