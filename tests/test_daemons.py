"""Several daemons: one per SQLite file (a lock), many on one PostgreSQL (leases), and a
daemon that outlives a database outage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.store.database import SCHEMA_HEADS
from tests.conftest import POSTGRES_URL, ROOT, _postgres_schema_url, write_config
from tests.servers import FeedServer, TcpProxy, WebhookReceiver, rss, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_schema_url()


def start_daemon(config: Path, log: Path, command: str = "run") -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config),
                                 command], cwd=ROOT, stdout=out, stderr=out)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def item(feed: int, generation: int, matching: bool) -> dict[str, str]:
    title = f"OIC statement {feed}-{generation}" if matching else f"weather {feed}-{generation}"
    return {"title": title, "link": f"http://127.0.0.1/{feed}/{generation}",
            "guid": f"{feed}-{generation}", "description": title}


def test_a_second_daemon_on_one_sqlite_file_refuses_to_start(
        tmp_path: Path, sqlite_url: str, feed_server: FeedServer) -> None:
    url = feed_server.set_feed("/f", rss([item(0, 0, False)]))
    config = write_config(tmp_path / "monitor.yaml", sqlite_url,
                          feeds=[{"name": "f", "url": url, "interval": 1}])
    first = start_daemon(config, tmp_path / "first.log")
    try:
        assert wait_until(lambda: feed_server.hits("/f") >= 1, timeout=30)
        second = subprocess.run([sys.executable, "-m", "monitor", "--config", str(config),
                                 "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 3
        assert f":{first.pid}) is already running on" in second.stderr
        assert "use PostgreSQL to run several" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        assert stop(first) == 0
    # Once the first has stopped, the lock is free again.
    third = start_daemon(config, tmp_path / "third.log")
    try:
        assert wait_until(lambda: "monitor running" in (tmp_path / "third.log").read_text(),
                          timeout=30)
    finally:
        assert stop(third) == 0


@pytest.mark.postgres
def test_three_daemons_share_feeds_and_alerts_and_survive_a_sigkill(
        tmp_path: Path, pg_url: str, feed_server: FeedServer,
        webhook_receiver: WebhookReceiver) -> None:
    feeds = 300
    interval = 2.0
    for i in range(feeds):
        feed_server.set_feed(f"/f/{i}", rss([item(i, 0, False)]))
    config = write_config(
        tmp_path / "monitor.yaml", pg_url,
        database={"url": pg_url, "lease_seconds": 6},
        feeds=[{"name": f"feed-{i}", "url": feed_server.url(f"/f/{i}"), "interval": interval}
               for i in range(feeds)],
        watches=[{"name": "oic", "any": ["OIC"], "channels": ["hook"]}],
        channels=[{"name": "hook", "type": "webhook", "url": webhook_receiver.url("/hook")}],
        # Every loopback feed is on one host: politeness would serialize them.
        fetch={"per_host_concurrency": 32, "per_host_spacing": 0, "connect_timeout": 2,
               "read_timeout": 2, "total_timeout": 4},
        scheduler={"tick": 0.2, "delivery_interval": 0.5, "shutdown_grace": 5},
        schedule={"jitter": 0.05})
    # All three start at once on an empty schema: migrations serialize on the advisory lock.
    daemons = [start_daemon(config, tmp_path / f"daemon{n}.log") for n in range(3)]
    try:
        assert wait_until(lambda: len({r.path for r in feed_server.requests}) == feeds,
                          timeout=40), "not every feed was fetched"
        started = time.time()

        def publish(generation: int, which: range) -> None:
            for i in which:
                feed_server.set_feed(f"/f/{i}", rss([item(i, generation, True),
                                                     item(i, 0, False)]))

        publish(1, range(0, 60))
        assert wait_until(lambda: len(webhook_receiver.posts) >= 60, timeout=20)
        # Killed mid-cycle, holding feed leases that must expire. Not mid-send: a process
        # killed between sending and recording a delivery sends it again after restart
        # (same webhook-id, for the receiver to drop); the outbox tests cover that case.
        time.sleep(1)
        daemons[0].send_signal(signal.SIGKILL)
        daemons[0].wait()
        killed = time.time()
        publish(2, range(60, 120))
        time.sleep(5 * interval)
        assert wait_until(lambda: len(webhook_receiver.posts) >= 120, timeout=15)
        time.sleep(1.5)  # any duplicate would arrive now
        ended = time.time()
    finally:
        # All three: a failure before the SIGKILL must not leave the first one running.
        codes = [stop(d) for d in daemons][1:]
    assert codes == [0, 0]

    posts = webhook_receiver.posts
    ids = [p.headers["webhook-id"] for p in posts]
    titles = sorted(json.loads(p.body)["data"]["article"]["title"] for p in posts)
    assert (len(posts), len(set(ids)), len(set(titles))) == (120, 120, 120), \
        "each alert exactly once"
    assert titles == sorted({f"OIC statement {i}-{1 + (i >= 60)}" for i in range(120)})

    # Server-side request log: never twice within one interval, and no feed left behind
    # for longer than an interval plus a lease (the SIGKILLed daemon's feeds).
    times: dict[str, list[float]] = defaultdict(list)
    for request in feed_server.requests:
        if request.path.startswith("/f/") and started <= request.at <= ended:
            times[request.path].append(request.at)
    assert len(times) == feeds
    gaps = [b - a for at in times.values() for a, b in pairwise(sorted(at))]
    assert min(gaps) > interval * 0.9 - 0.3, f"a feed was fetched twice: gap {min(gaps):.2f}"
    # Liveness has slack for a loaded 2-core machine; duplicates (above) have none.
    assert max(gaps) < interval * 1.05 + 6 + 4, f"a feed was stuck: gap {max(gaps):.2f}"
    expected = (ended - started) / interval
    counts = [len(at) for at in times.values()]
    assert min(counts) >= expected * 0.4 and max(counts) <= expected + 1
    after_kill = {path for path, at in times.items() if max(at) > killed + 6 + interval}
    assert len(after_kill) == feeds  # the dead daemon's feeds were taken over
    print(f"\n3 daemons, {feeds} feeds every {interval:g} s, {ended - started:.0f} s "
          f"(one killed after {killed - started:.0f} s): fetches per feed {min(counts)}-"
          f"{max(counts)} (ideal {expected:.1f}), gaps {min(gaps):.2f}-{max(gaps):.2f} s "
          f"({sum(g > 2 * interval for g in gaps)} waited for a dead daemon's lease), "
          f"{len(posts)} alerts delivered once each")


@pytest.mark.postgres
def test_two_migrations_at_once(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path / "monitor.yaml", pg_url)
    runs = [start_daemon(config, tmp_path / f"migrate{n}.log", "migrate") for n in range(2)]
    assert [r.wait(timeout=60) for r in runs] == [0, 0]
    schema = pg_url.rsplit("%3D", 1)[1]
    engine = create_engine(POSTGRES_URL or "")
    with engine.connect() as conn:
        versions = conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))
        assert {v for (v,) in versions} == SCHEMA_HEADS
    engine.dispose()


@pytest.mark.postgres
def test_the_daemon_rides_out_a_database_outage(
        tmp_path: Path, pg_url: str, feed_server: FeedServer,
        webhook_receiver: WebhookReceiver) -> None:
    postgres = make_url(pg_url)
    proxy = TcpProxy((postgres.host or "127.0.0.1", postgres.port or 5432)).start()
    through_proxy = postgres.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    feed_server.set_feed("/f", rss([item(1, 1, True)]))
    config = write_config(
        tmp_path / "monitor.yaml", through_proxy,
        database={"url": through_proxy, "lease_seconds": 3},
        feeds=[{"name": "f", "url": feed_server.url("/f"), "interval": 1}],
        watches=[{"name": "oic", "any": ["OIC"], "channels": ["hook"]}],
        channels=[{"name": "hook", "type": "webhook", "url": webhook_receiver.url("/hook")}])
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    direct = create_engine(pg_url)

    def delivered() -> int:
        with direct.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM deliveries WHERE state = 'delivered'")).scalar_one()

    try:
        assert wait_until(lambda: len(webhook_receiver.posts) == 1, timeout=40)
        # Cut after the result is recorded: a send whose result cannot be recorded is sent
        # again after its lease expires (same webhook-id), which is not what this tests.
        assert wait_until(lambda: delivered() == 1, timeout=10)
        proxy.cut()  # PostgreSQL "restarts": connections drop, new ones are refused
        feed_server.set_feed("/f", rss([item(1, 2, True), item(1, 1, True)]))
        time.sleep(6)
        assert daemon.poll() is None, "the daemon died with its database"
        assert len(webhook_receiver.posts) == 1
        proxy.restore()
        assert wait_until(lambda: len(webhook_receiver.posts) == 2, timeout=40)
        time.sleep(2)
    finally:
        code = stop(daemon)
        proxy.stop()
        direct.dispose()
    output = log.read_text()
    assert code == 0, output[-3000:]
    titles = [json.loads(p.body)["data"]["article"]["title"] for p in webhook_receiver.posts]
    assert titles == ["OIC statement 1-1", "OIC statement 1-2"]
    assert "database unavailable while" in output
    assert "database reachable again" in output
    assert "Traceback" not in output
    warnings = output.count("database unavailable while")
    assert warnings < 15, f"{warnings} warnings in 6 s: not backing off"

