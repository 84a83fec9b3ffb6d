"""`monitor alerts`, `monitor alerts retry|resume` and `monitor test-alert`, and the channel
keys of the configuration."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.config import ConfigError, parse_config
from tests.alert_servers import Reply, ScriptedSmtp, ScriptedWebhook
from tests.conftest import write_config
from tests.delivery_harness import Harness


@pytest.fixture
def receiver() -> Iterator[ScriptedWebhook]:
    server = ScriptedWebhook().start()
    yield server
    server.stop()


def _run(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--config", str(config), *args], out=out)
    return code, out.getvalue()


def _channels(receiver: ScriptedWebhook) -> list[dict[str, Any]]:
    return [{"name": "hook", "type": "webhook", "url": receiver.url("/hook"),
             "retry": {"delays": [1], "then": 1, "give_up_after": 1}}]


def test_alerts_lists_states_and_retry_dead_requeues(tmp_path: Path, sqlite_url: str,
                                                     receiver: ScriptedWebhook) -> None:
    receiver.default = Reply(500)
    h = Harness(sqlite_url, _channels(receiver))
    h.queue(2)
    for _ in range(3):  # the one-second schedule is spent after an attempt or two
        h.deliver()
        h.clock.advance(seconds=5)
    assert h.states() == ["dead", "dead"]
    config = write_config(tmp_path / "monitor.yaml", sqlite_url, channels=_channels(receiver))

    code, out = _run(config, "alerts", "--json")
    listing = json.loads(out)
    assert code == 0
    assert listing["channels"][0]["deliveries"] == {"dead": 2}
    assert [(d["state"], d["last_error"]) for d in listing["deliveries"]] == \
        [("dead", "HTTP 500")] * 2
    assert all(d["attempts"] >= 1 for d in listing["deliveries"])
    code, out = _run(config, "alerts")
    assert "hook (webhook, immediate): active — 2 dead" in out and "HTTP 500" in out

    code, out = _run(config, "alerts", "retry", "999")
    assert code == 1 and "delivery 999: no such delivery" in out
    code, out = _run(config, "alerts", "retry", "--dead")
    assert code == 0 and "re-queued 2 deliveries" in out
    assert h.states() == ["pending", "pending"]
    receiver.default = Reply(200)
    h.clock.now = max(r.next_attempt_at for r in h.rows())
    h.deliver()
    assert h.states() == ["delivered", "delivered"]
    code, out = _run(config, "alerts", "retry", str(h.rows()[0].id))
    assert code == 1 and "is delivered" in out
    h.close()


def test_test_alert_reports_success_and_failure(tmp_path: Path, sqlite_url: str,
                                                receiver: ScriptedWebhook,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    smtp = ScriptedSmtp(auth_ok=False).start()
    monkeypatch.setenv("SMTP_USER", "monitor")
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password")
    config = write_config(tmp_path / "monitor.yaml", sqlite_url, channels=[
        {"name": "hook", "type": "webhook", "url": receiver.url("/hook")},
        {"name": "mail", "type": "email", "host": "127.0.0.1", "port": smtp.port,
         "from": "monitor@example.org", "to": ["desk@example.org"],
         "username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD",
         "allow_plaintext_auth": True}])
    try:
        code, out = _run(config, "test-alert", "hook")
        assert code == 0 and "test alert delivered" in out
        [post] = receiver.posts
        assert json.loads(post.body)["data"]["watch"] == "test-alert"

        code, out = _run(config, "test-alert", "mail")
        assert code == 1 and "535" in out and "SMTP_PASSWORD" in out
        assert "wrong-password" not in out

        smtp.auth_ok = True
        code, out = _run(config, "test-alert", "mail")
        assert code == 0
        [received] = smtp.received
        assert 'dir="rtl"' in received.message.get_body(("html",)).get_content()
        assert "mail (email, immediate): active" in _run(config, "alerts")[1]
        assert _run(config, "test-alert", "nope")[0] == 2
    finally:
        smtp.stop()


def _channel_problem(channel: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as error:
        parse_config({"channels": [channel]}, env={})
    return str(error.value)


def test_channel_keys_are_validated_with_their_path() -> None:
    mail = {"name": "m", "type": "email", "host": "smtp.example.org", "from": "a@example.org",
            "to": ["b@example.org"]}
    assert "channels[0]: a login over plain SMTP" in _channel_problem(
        {**mail, "username_env": "U", "password_env": "P"})
    parse_config({"channels": [{**mail, "username_env": "U", "password_env": "P",
                                "starttls": True}]}, env={})
    assert "channels[0].quiet_hours.start: expected a time of day" in _channel_problem(
        {**mail, "quiet_hours": {"start": "25:00", "end": "07:00"}})
    assert "channels[0].timezone: unknown time zone" in _channel_problem(
        {**mail, "timezone": "Mars/Olympus"})
    assert "channels[0]: address 'b@example.org\\r\\nBcc: x' contains a line break" in \
        _channel_problem({**mail, "to": ["b@example.org\r\nBcc: x"]})
    hook = {"name": "h", "type": "webhook"}
    assert "exactly one of 'url' and 'url_env'" in _channel_problem(hook)
    assert "needs 'chat_id'" in _channel_problem({**hook, "url_env": "TG",
                                                  "format": "telegram"})
    assert "channels[0].rate_limit" in _channel_problem({**hook, "url": "http://x",
                                                          "rate_limit": 0})
    assert "choose either 'every' or 'at'" in _channel_problem(
        {**hook, "url": "http://x", "digest": {"every": "30m", "at": ["08:00"]}})


def test_check_config_shows_how_each_channel_paces(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "monitor.yaml", sqlite_url, channels=[
        {"name": "log", "type": "log", "mode": "digest", "digest": {"at": ["18:00", "08:00"]},
         "quiet_hours": {"start": "23:00", "end": "07:00"}, "rate_limit": 5},
        {"name": "plain", "type": "log"}])
    code, out = _run(config, "check-config")
    assert code == 0
    assert ("log (log): active; digest 08:00, 18:00, at most 5/hour, quiet 23:00-07:00 "
            "(Asia/Tehran)") in out
    assert "plain (log): active\n" in out
