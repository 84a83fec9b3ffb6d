"""Crash safety: two deliverers on one database, and a daemon killed with SIGKILL between
claiming and sending, and between the receiver's 200 and recording it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.alert_servers import Reply, ScriptedWebhook
from tests.conftest import ROOT, write_config
from tests.delivery_harness import Harness, distinct_text
from tests.servers import FeedServer, rss, wait_until


@pytest.fixture
def receiver() -> Iterator[ScriptedWebhook]:
    server = ScriptedWebhook().start()
    yield server
    server.stop()


def test_two_deliverers_never_send_the_same_alert(db_url: str,
                                                  receiver: ScriptedWebhook) -> None:
    receiver.default = Reply(delay=0.05)
    hook = {"name": "hook", "type": "webhook", "url": receiver.url("/hook")}
    one = Harness(db_url, [hook], owner="host:1")
    two = Harness(db_url, [hook], owner="host:2", clock=one.clock)
    one.queue(12)
    try:
        for _ in range(10):
            threads = [threading.Thread(target=h.deliver, args=(3,)) for h in (one, two)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if set(one.states()) == {"delivered"}:
                break
        assert one.states() == ["delivered"] * 12
        ids = receiver.ids()
        assert len(ids) == 12 and len(set(ids)) == 12
        assert set(ids) == {r.message_id for r in one.rows()}
    finally:
        one.close()
        two.close()


def _daemon(config: Path, log: Path, pause: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MONITOR_FAULT_PAUSE"}
    if pause:
        env["MONITOR_FAULT_PAUSE"] = pause
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config),
                                 "run"], cwd=ROOT, env=env, stdout=out, stderr=out)


def _delivery_states(db_url: str) -> dict[str, str]:
    """message_id -> state; empty until a daemon has created the schema."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT message_id, state FROM deliveries")).all())
    except DBAPIError:
        return {}
    finally:
        engine.dispose()


def _daemon_config(tmp_path: Path, db_url: str, feeds: FeedServer,
                   receiver: ScriptedWebhook, items: int) -> Path:
    entries = [{"title": f"نشست سازمان همکاری اسلامی شماره {n}", "guid": f"g{n}",
                "link": f"https://news.example.ir/{n}", "description": distinct_text(n)}
               for n in range(items)]
    return write_config(
        tmp_path / "monitor.yaml", db_url,
        database={"url": db_url, "lease_seconds": 2},
        scheduler={"tick": 0.2, "delivery_interval": 0.2, "shutdown_grace": 3},
        feeds=[{"name": "agency", "url": feeds.set_feed("/f.xml", rss(entries)),
                "interval": 60}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["hook"]}],
        channels=[{"name": "hook", "type": "webhook", "url": receiver.url("/hook"),
                   "timeout": 2}])


@pytest.mark.slow
def test_two_daemons_on_one_database_send_each_alert_once(
        tmp_path: Path, db_url: str, receiver: ScriptedWebhook) -> None:
    receiver.default = Reply(delay=0.2)  # slow enough that both daemons are mid-cycle
    feeds = FeedServer().start()
    config = _daemon_config(tmp_path, db_url, feeds, receiver, items=8)
    daemons = [_daemon(config, tmp_path / f"daemon{n}.log") for n in range(2)]
    try:
        assert wait_until(lambda: set(_delivery_states(db_url).values()) == {"delivered"}
                          and len(_delivery_states(db_url)) == 8, timeout=30)
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.wait(timeout=15)
        feeds.stop()
    ids = receiver.ids()
    assert sorted(ids) == sorted(_delivery_states(db_url))  # each exactly once


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_claim", "after_send"])
def test_sigkill_mid_delivery_loses_nothing_and_repeats_at_most_once(
        tmp_path: Path, db_url: str, receiver: ScriptedWebhook, point: str) -> None:
    feeds = FeedServer().start()
    config = _daemon_config(tmp_path, db_url, feeds, receiver, items=3)
    log = tmp_path / "daemon.log"
    daemon = _daemon(config, log, pause=f"{point}=60")
    try:
        assert wait_until(lambda: f"fault pause {point}" in log.read_text(), timeout=30), \
            log.read_text()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        sent_before = len(receiver.posts)
        assert sent_before == (0 if point == "after_claim" else 3)
        assert set(_delivery_states(db_url).values()) == {"delivering"}

        daemon = _daemon(config, log)
        assert wait_until(lambda: set(_delivery_states(db_url).values()) == {"delivered"},
                          timeout=30), log.read_text()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        feeds.stop()
    states = _delivery_states(db_url)
    assert len(states) == 3
    per_id = Counter(receiver.ids())
    # Every alert arrived; a repeat only where the kill fell after the receiver's 200, and
    # then with the same webhook-id.
    assert set(per_id) == set(states)
    assert set(per_id.values()) == ({1} if point == "after_claim" else {2})
