"""Logs: text or JSON lines, feed lines name the feed, and secrets never appear."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from monitor.logs import REDACTED, JsonFormatter, RedactingFormatter, Redactor
from tests.conftest import ROOT, WEBHOOK_SECRET, write_config
from tests.running import daemon_process, stop
from tests.servers import FeedServer, WebhookReceiver, free_port, rss, wait_until
from tests.test_end_to_end import MATCHING

SMTP_USER = "desk-mailer-7f3a"
# A quote and a backslash: the JSON-escaped and repr forms differ from the raw value.
SMTP_PASSWORD = 'pa"ss\\w0rd-9Q2x'
UNICODE_SECRET = "کلید-محرمانه-۷۳"


def _logger(fmt: logging.Formatter, secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    redactor = Redactor()
    redactor.add_secrets(secrets)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(fmt, redactor))
    logger = logging.getLogger(f"test.redaction.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


@pytest.mark.parametrize("fmt", [logging.Formatter("%(message)s"), JsonFormatter()],
                         ids=["text", "json"])
def test_secrets_are_scrubbed_from_messages_arguments_and_tracebacks(
        fmt: logging.Formatter) -> None:
    logger, stream = _logger(fmt, [SMTP_PASSWORD, WEBHOOK_SECRET, UNICODE_SECRET])
    logger.info("login with %s", SMTP_PASSWORD)
    logger.info("token %s in a URL: %s", UNICODE_SECRET,
                "https://x.example/?k=" + quote(UNICODE_SECRET))
    logger.info("secret body %r", WEBHOOK_SECRET.removeprefix("whsec_"))
    try:
        raise RuntimeError(f"auth failed for {SMTP_PASSWORD!r} with {WEBHOOK_SECRET}")
    except RuntimeError:
        logger.exception("channel mail: unexpected error")
    output = stream.getvalue()
    assert "Traceback" in output and "RuntimeError" in output
    assert output.count(REDACTED) >= 6
    for secret in (SMTP_PASSWORD, json.dumps(SMTP_PASSWORD)[1:-1], repr(SMTP_PASSWORD)[1:-1],
                   WEBHOOK_SECRET.removeprefix("whsec_"), UNICODE_SECRET,
                   json.dumps(UNICODE_SECRET)[1:-1], quote(UNICODE_SECRET)):
        assert secret not in output


def test_short_values_are_not_treated_as_secrets() -> None:
    logger, stream = _logger(logging.Formatter("%(message)s"), ["abc"])
    logger.info("abc and abcdef stay")
    assert stream.getvalue() == "abc and abcdef stay\n"


def test_uncaught_exceptions_go_through_the_redactor(tmp_path: Path) -> None:
    script = (
        "from monitor.logs import setup_logging, add_secrets\n"
        "setup_logging('json')\n"
        f"add_secrets([{UNICODE_SECRET!r}])\n"
        f"raise SystemError('boom ' + {UNICODE_SECRET!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 1
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "critical" and "SystemError: boom [redacted]" in line["exception"]
    assert "محرمانه" not in result.stderr and "\\u0645" not in result.stderr


class RejectingSmtpServer:
    """aiosmtpd that demands AUTH and refuses every credential, recording the attempts."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.attempts: list[Any] = []

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> AuthResult:
            self.attempts.append(auth_data)
            return AuthResult(success=False, handled=False)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                return "250 accepted"

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      authenticator=authenticator, auth_required=True,
                                      auth_require_tls=False)

    def __enter__(self) -> RejectingSmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_daemon_logs_hold_no_secret_with_failing_smtp_auth_and_signed_webhook(
    tmp_path: Path, sqlite_url: str, feed_server: FeedServer,
) -> None:
    hook = WebhookReceiver([500] * 10).start()
    feed = feed_server.set_feed("/feed.xml", rss([MATCHING]))
    config = write_config(
        tmp_path / "monitor.yaml", sqlite_url, http={"listen": None},
        feeds=[{"name": "agency", "url": feed, "interval": 1},
               {"name": "broken", "url": "http://127.0.0.1:9/rss", "interval": 1}],
        watches=[{"name": "oic", "any": ["سازمان همکاری اسلامی"], "channels": ["hook", "mail"]}],
        channels=[{"name": "hook", "type": "webhook", "url": hook.url("/hook"),
                   "secret_env": "MONITOR_WEBHOOK_SECRET"},
                  {"name": "mail", "type": "email", "host": "127.0.0.1", "port": 0,
                   "from": "monitor@example.org", "to": ["desk@example.org"],
                   "username_env": "MONITOR_SMTP_USER", "password_env": "MONITOR_SMTP_PASSWORD",
                   "allow_plaintext_auth": True}])
    env = {"MONITOR_WEBHOOK_SECRET": WEBHOOK_SECRET, "MONITOR_SMTP_USER": SMTP_USER,
           "MONITOR_SMTP_PASSWORD": SMTP_PASSWORD}
    log_path = tmp_path / "daemon.log"
    with RejectingSmtpServer() as smtp:
        config.write_text(config.read_text(encoding="utf-8").replace(
            "port: 0", f"port: {smtp.port}"), encoding="utf-8")
        try:
            with daemon_process(config, log_path, "--log-format", "json", env=env) as daemon:
                assert wait_until(lambda: smtp.attempts and hook.posts, timeout=30)
                # SMTP 535 pauses the channel: bad credentials will not fix themselves.
                assert wait_until(lambda: "channel mail is paused" in log_path.read_text(),
                                  timeout=10)
                assert stop(daemon) == 0
        finally:
            hook.stop()
    # The secrets did reach the servers: the test would catch them if they were logged.
    assert smtp.attempts[0].password.decode() == SMTP_PASSWORD
    assert "webhook-signature" in hook.posts[0].headers

    raw = log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in raw.splitlines()]
    for secret in (SMTP_USER, SMTP_PASSWORD, json.dumps(SMTP_PASSWORD)[1:-1],
                   json.dumps(SMTP_PASSWORD, ensure_ascii=False)[1:-1], WEBHOOK_SECRET,
                   WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret not in raw
    messages = [line["message"] for line in lines]
    assert any(m.startswith("channel mail is paused") and "535" in m for m in messages)
    assert any(m.startswith("channel hook: delivery") and "HTTP 500" in m for m in messages)
    feed_lines = [line for line in lines if line["logger"] in ("monitor.refresh",
                                                               "monitor.fetch")]
    assert any(line.get("feed") == "broken" for line in feed_lines)
    for line in feed_lines:
        assert line.get("feed") in ("agency", "broken"), line
    assert {line.get("channel") for line in lines if line["level"] != "info"} >= {"mail", "hook"}


def test_the_database_password_counts_as_a_secret() -> None:
    from monitor.config import load_secrets, parse_config, secret_values

    env = {"MONITOR_DATABASE_URL": "postgresql+psycopg://monitor:s3cret-pg-pw@db/monitor",
           "HOOK_SECRET": WEBHOOK_SECRET}
    config = parse_config({"channels": [{"name": "h", "type": "webhook", "url": "http://x/",
                                         "secret_env": "HOOK_SECRET"}]}, env=env)
    assert sorted(secret_values(config, load_secrets(config, env))) == sorted(
        [WEBHOOK_SECRET, "s3cret-pg-pw"])


def test_json_lines_name_the_feed_even_with_spaces_in_it() -> None:
    logger, stream = _logger(JsonFormatter(), [])
    logger.warning("feed %s: HTTP 503 (%s)", "خبرگزاری ایرنا", "http://127.0.0.1/rss")
    logger.warning("channel %s is %s: %s", "desk mail", "paused", "SMTP 535")
    logger.info("monitor running")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["feed"] == "خبرگزاری ایرنا"
    assert second["channel"] == "desk mail"
    assert "feed" not in third and "channel" not in third
