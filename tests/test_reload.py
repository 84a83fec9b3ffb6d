"""Config reload in a running daemon process: SIGHUP and `monitor reload`."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.cli import main
from tests.conftest import write_config
from tests.running import daemon_process, stop
from tests.servers import FeedServer, WebhookReceiver, free_port, rss, wait_until

OIC = {"title": "دیدار دبیرکل سازمان همکاری اسلامی", "link": "https://news.example.ir/1",
       "description": "دیدار در جده", "guid": "1"}
GENEVA = {"title": "نشست ژنو درباره آب", "link": "https://news.example.ir/2",
          "description": "نشست در ژنو", "guid": "2"}


def _sections(tmp_path: Path, port: int, feeds: list[dict[str, Any]],
              hooks: dict[str, str], watches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scheduler": {"tick": 0.2, "delivery_interval": 0.5, "shutdown_grace": 5,
                      "pid_file": str(tmp_path / "monitor.pid")},
        "http": {"listen": f"127.0.0.1:{port}"},
        "feeds": feeds, "watches": watches,
        "channels": [{"name": n, "type": "webhook", "url": u} for n, u in hooks.items()],
    }


def _reload(config: Path) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--config", str(config), "reload"], out=out), out.getvalue()


@pytest.mark.slow
def test_reload_applies_a_valid_config_and_keeps_the_old_one_on_errors(
    tmp_path: Path, db_url: str, feed_server: FeedServer, capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = WebhookReceiver([500]).start(), WebhookReceiver().start()
    one = feed_server.set_feed("/one.xml", rss([OIC]))
    two = feed_server.set_feed("/two.xml", rss([GENEVA]))
    port = free_port()
    feeds = [{"name": "one", "url": one, "interval": 1}]
    watches = [{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["first"]}]
    hooks = {"first": first.url("/hook")}
    config = write_config(tmp_path / "monitor.yaml", db_url,
                          **_sections(tmp_path, port, feeds, hooks, watches))
    log_path = tmp_path / "daemon.log"
    try:
        with daemon_process(config, log_path) as daemon:
            # The alert for feed one fails once: it stays queued for its retry in 2.5-5 s.
            assert wait_until(lambda: len(first.posts) == 1, timeout=30)

            feeds.append({"name": "two", "url": two, "interval": 1})
            watches.append({"name": "geneva", "any": ["ژنو"], "channels": ["second"]})
            hooks["second"] = second.url("/hook")
            write_config(config, db_url, **_sections(tmp_path, port, feeds, hooks, watches))
            code, said = _reload(config)
            assert code == 0, said
            assert f"pid {daemon.pid}" in said
            assert wait_until(lambda: "reload: applied: 2 feeds, 2 watches" in log_path.read_text(),
                              timeout=10)
            # New feed, watch and channel work without a restart ...
            assert wait_until(lambda: len(second.posts) == 1, timeout=10)
            assert "ژنو" in second.posts[0].body.decode()
            # ... and the delivery queued before the reload was not lost: retried, same id.
            assert wait_until(lambda: len(first.posts) == 2, timeout=10)
            assert first.posts[0].headers["webhook-id"] == first.posts[1].headers["webhook-id"]

            # An invalid file: `monitor reload` refuses to signal; SIGHUP is logged and ignored.
            broken = config.read_text(encoding="utf-8").replace(
                f"url: {two}", "url: file:///etc/passwd")
            config.write_text(broken, encoding="utf-8")
            code, _ = _reload(config)
            assert code == 2
            assert "feeds[1].url" in capsys.readouterr().err
            os.kill(daemon.pid, signal.SIGHUP)
            assert wait_until(lambda: "keeping the running configuration" in log_path.read_text(),
                              timeout=10)
            log = log_path.read_text()
            assert "feeds[1].url: only http and https feeds are allowed" in log
            hits = feed_server.hits("/two.xml")
            assert wait_until(lambda: feed_server.hits("/two.xml") > hits, timeout=10)
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert health.status_code == 200

            assert stop(daemon) == 0
    finally:
        first.stop()
        second.stop()
    assert not (tmp_path / "monitor.pid").exists()
    assert len(second.posts) == 1 and len(first.posts) == 2  # nothing sent twice


def test_reload_without_a_running_daemon_says_so(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "monitor.yaml", sqlite_url,
                          scheduler={"pid_file": str(tmp_path / "none.pid")})
    code, said = _reload(config)
    assert code == 1
    assert "no running daemon found" in said and "none.pid" in said
    (tmp_path / "none.pid").write_text("999999999\n")  # a stale file from a dead process
    code, said = _reload(config)
    assert code == 1 and "no such process" in said


def test_pid_file_defaults_next_to_the_sqlite_database(tmp_path: Path) -> None:
    from monitor.config import parse_config, pid_file_path

    db = tmp_path / "state" / "monitor.db"
    assert pid_file_path(parse_config({"database": {"url": f"sqlite:///{db}"}}, env={})) == (
        db.parent / "monitor.pid")
    assert pid_file_path(parse_config({"scheduler": {"pid_file": "/run/m.pid"}}, env={})) == (
        Path("/run/m.pid"))


def test_a_removed_channel_keeps_its_queue_until_it_returns(
    tmp_path: Path, sqlite_url: str, feed_server: FeedServer, caplog: pytest.LogCaptureFixture,
) -> None:
    from monitor.status import collect
    from tests.running import daemon_in_loop, eventually

    hook = WebhookReceiver([500]).start()
    feed = feed_server.set_feed("/one.xml", rss([OIC]))
    path = tmp_path / "monitor.yaml"

    def write(with_hook: bool, tick: float = 0.2) -> None:
        write_config(path, sqlite_url, http={"listen": None},
                     scheduler={"tick": tick, "delivery_interval": 0.5, "shutdown_grace": 5},
                     feeds=[{"name": "one", "url": feed, "interval": 1}],
                     watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"],
                               "channels": ["hook"] if with_hook else []}],
                     channels=[{"name": "hook", "type": "webhook", "url": hook.url("/")}]
                     if with_hook else [])

    async def scenario() -> None:
        async with daemon_in_loop(path) as daemon:
            assert await eventually(lambda: len(hook.posts) == 1)  # failed, retry queued
            write(with_hook=False, tick=5)
            assert await daemon.reload()
            assert "hook" not in daemon.monitor.channels
            assert daemon.monitor.config.scheduler.tick == 0.2  # needs a restart
            assert "changes to scheduler need a restart" in caplog.text
            with daemon.monitor.db.session() as session:
                status = collect(session, daemon.monitor.config, daemon.monitor.secrets,
                                 datetime.now(UTC))
            assert [(c.name, c.status, c.failed) for c in status.channels] == [
                ("hook", "not configured", 1)]
            write(with_hook=True)
            assert await daemon.reload()
            assert await eventually(lambda: len(hook.posts) == 2, timeout=10)
            assert hook.posts[0].headers["webhook-id"] == hook.posts[1].headers["webhook-id"]

    write(with_hook=True)
    try:
        with caplog.at_level("INFO"):
            asyncio.run(scenario())
    finally:
        hook.stop()
