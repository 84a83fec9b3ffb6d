"""Email delivery against aiosmtpd answering 421/451, 550, 535, refusing a recipient,
dropping the connection after DATA, or not offering STARTTLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from monitor.config import ConfigError, parse_config
from tests.alert_servers import ScriptedSmtp
from tests.delivery_harness import Harness

DESK, EDITOR = "desk@example.org", "editor@example.org"


@pytest.fixture
def smtp() -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp().start()
    yield server
    server.stop()


def _mail(port: int, **extra: Any) -> dict[str, Any]:
    return {"name": "mail", "type": "email", "host": "127.0.0.1", "port": port,
            "from": "monitor@example.org", "to": [DESK, EDITOR], "timeout": 5, **extra}


@pytest.fixture
def harness(sqlite_url: str, smtp: ScriptedSmtp) -> Iterator[Harness]:
    h = Harness(sqlite_url, [_mail(smtp.port)])
    yield h
    h.close()


@pytest.mark.parametrize("answer", ["421 4.3.2 Service shutting down",
                                    "451 4.3.0 Try again later"])
def test_temporary_answer_is_retried(harness: Harness, smtp: ScriptedSmtp,
                                     answer: str) -> None:
    smtp.data = [answer]
    harness.queue()
    harness.deliver()
    [row] = harness.rows()
    assert row.state == "failed" and answer[:3] in row.last_error
    assert row.next_attempt_at <= harness.clock() + timedelta(minutes=1)  # the SMTP schedule
    harness.until_next_attempt()
    harness.deliver()
    assert harness.states() == ["delivered"]
    [received] = smtp.received
    assert sorted(received.rcpt_tos) == [DESK, EDITOR]


def test_permanent_answer_is_dead_at_once_and_counted(harness: Harness,
                                                      smtp: ScriptedSmtp) -> None:
    before = REGISTRY.get_sample_value("monitor_alert_dead_letters_total",
                                       {"channel": "mail"}) or 0
    smtp.data = ["550 5.7.1 Rejected by policy"]
    harness.queue()
    summary = harness.deliver()
    assert summary.dead == 1
    [row] = harness.rows()
    assert (row.state, row.attempts) == ("dead", 1) and "550" in row.last_error
    assert REGISTRY.get_sample_value("monitor_alert_dead_letters_total",
                                     {"channel": "mail"}) == before + 1
    harness.clock.advance(days=2)
    harness.deliver()
    assert smtp.received == []


def test_refused_second_recipient_is_retried_alone(harness: Harness,
                                                   smtp: ScriptedSmtp) -> None:
    smtp.rcpt = {EDITOR: ["450 4.2.1 Mailbox busy"]}
    harness.queue()
    harness.deliver()
    [row] = harness.rows()
    assert row.state == "failed" and row.delivered_to == [DESK]
    assert EDITOR in row.last_error
    harness.until_next_attempt()
    harness.deliver()
    assert harness.states() == ["delivered"]
    # Each recipient got exactly one copy, with the same Message-ID.
    assert [r.rcpt_tos for r in smtp.received] == [[DESK], [EDITOR]]
    assert len({r.message["Message-ID"] for r in smtp.received}) == 1


def test_permanently_refused_recipient_is_dead_but_the_other_is_served(
        harness: Harness, smtp: ScriptedSmtp) -> None:
    smtp.rcpt = {EDITOR: ["550 5.1.1 No such user"]}
    harness.queue()
    harness.deliver()
    [row] = harness.rows()
    assert row.state == "dead" and row.delivered_to == [DESK]
    assert [r.rcpt_tos for r in smtp.received] == [[DESK]]


def test_dropped_connection_after_data_repeats_with_same_message_id(
        harness: Harness, smtp: ScriptedSmtp) -> None:
    smtp.data = ["drop"]
    harness.queue()
    harness.deliver()
    [row] = harness.rows()
    assert row.state == "failed" and "dropped" in row.last_error
    harness.until_next_attempt()
    harness.deliver()
    assert harness.states() == ["delivered"]
    # The server had taken the first copy: the repeat carries the same id, so it can be
    # dropped as a duplicate.
    assert len(smtp.received) == 2
    assert smtp.received[0].message["Message-ID"] == smtp.received[1].message["Message-ID"]


def _authenticated(sqlite_url: str, server: ScriptedSmtp, password: str) -> Harness:
    """A harness whose mail channel logs in as `monitor` with `password`."""
    env = {"SMTP_USER": "monitor", "SMTP_PASSWORD": password}
    config = _mail(server.port, username_env="SMTP_USER", password_env="SMTP_PASSWORD",
                   allow_plaintext_auth=True)
    return Harness(sqlite_url, [config], env=env)


def test_auth_failure_pauses_the_channel(sqlite_url: str) -> None:
    server = ScriptedSmtp(auth_ok=False).start()
    h = _authenticated(sqlite_url, server, "wrong")
    try:
        h.queue()
        h.deliver()
        assert h.channel_state("mail") == "paused"
        [row] = h.rows()
        assert row.state == "failed" and row.attempts == 0
        assert "535" in row.last_error and "SMTP_PASSWORD" in row.last_error
        assert "wrong" not in row.last_error
        h.clock.advance(hours=3)
        h.deliver()
        assert server.received == [] and server.commands == []

        # The operator fixes the password; a successful test alert resumes the channel.
        server.auth_ok = True
        assert h.test_alert("mail").ok
        assert h.channel_state("mail") == "active"
        h.deliver()
        assert h.states() == ["delivered"]
        assert len(server.received) == 2  # the test alert and the held alert
    finally:
        h.close()
        server.stop()


def test_non_ascii_password_is_sent_as_utf8(sqlite_url: str) -> None:
    server = ScriptedSmtp(auth_ok=True).start()
    server.password = "رمز-عبور۱۴۰۵"
    h = _authenticated(sqlite_url, server, server.password)
    try:
        h.queue()
        h.deliver()
        assert h.states() == ["delivered"]
        assert len(server.received) == 1
    finally:
        h.close()
        server.stop()


def test_starttls_required_but_not_offered_sends_nothing(sqlite_url: str,
                                                         smtp: ScriptedSmtp) -> None:
    h = Harness(sqlite_url, [_mail(smtp.port, starttls=True)])
    try:
        h.queue()
        h.deliver()
        [row] = h.rows()
        assert row.state == "failed" and "STARTTLS" in row.last_error
        assert smtp.commands == [] and smtp.received == []
    finally:
        h.close()


def test_feed_text_cannot_inject_headers_or_recipients(harness: Harness,
                                                       smtp: ScriptedSmtp) -> None:
    title = ("سازمان همکاری اسلامی\r\nBcc: victim@example.org\r\n"
             "=?UTF-8?Q?=0A?=Bcc: x@y " + "ب" * 2000)
    harness.queue(title=title, summary='<script>alert(1)</script><img src=x onerror=alert(2)>')
    harness.deliver()
    [received] = smtp.received
    assert sorted(received.rcpt_tos) == [DESK, EDITOR]
    message = received.message
    assert len(message.get_all("Subject")) == 1
    assert message.get_all("Bcc") is None
    assert "x@y" not in str(message["To"]) and len(str(message["Subject"])) <= 200
    html = message.get_body(("html",)).get_content()
    assert html_tags(html) <= SAFE_TAGS  # the feed's <script> and <img> stayed text
    assert "onerror" in html  # shown as text


SAFE_TAGS = {"html", "head", "meta", "title", "body", "div", "h2", "h3", "hr", "a", "p",
             "table", "tr", "td", "mark", "bdi", "span", "br"}


def html_tags(markup: str) -> set[str]:
    from html.parser import HTMLParser

    tags: set[str] = set()

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            tags.add(tag)
            assert not any(name.startswith("on") for name, _ in attrs)

    Collector().feed(markup)
    return tags


# --- TLS: a relay whose certificate an internal authority signed -------------------------

@pytest.fixture(scope="module")
def relay_ca() -> Any:
    trustme = pytest.importorskip("trustme", reason="trustme is in the test extras")
    return trustme.CA()


def _tls_server(ca: Any, implicit_tls: bool, password: str) -> ScriptedSmtp:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = ScriptedSmtp(auth_ok=True, tls=context, implicit_tls=implicit_tls)
    server.password = password
    return server.start()


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_login_and_delivery_over_tls_with_the_relays_authority(
        sqlite_url: str, tmp_path: Path, relay_ca: Any, mode: str) -> None:
    server = _tls_server(relay_ca, implicit_tls=mode == "ssl", password="s3cret-pass")
    ca_file = tmp_path / "relay-ca.pem"
    relay_ca.cert_pem.write_to_path(str(ca_file))
    config = _mail(server.port, username_env="SMTP_USER", password_env="SMTP_PASSWORD",
                   ca_file=str(ca_file), **{mode: True})
    h = Harness(sqlite_url, [config], env={"SMTP_USER": "monitor",
                                           "SMTP_PASSWORD": "s3cret-pass"})
    try:
        h.queue()
        h.deliver()
        # Over STARTTLS the server offers AUTH only once encrypted; implicit TLS is
        # encrypted from the first byte. Delivered means encrypted and logged in.
        assert h.states() == ["delivered"]
        [received] = server.received
        assert received.rcpt_tos == [DESK, EDITOR]
    finally:
        h.close()
        server.stop()


def test_a_certificate_from_an_unknown_authority_is_refused(
        sqlite_url: str, relay_ca: Any) -> None:
    server = _tls_server(relay_ca, implicit_tls=False, password="s3cret-pass")
    config = _mail(server.port, username_env="SMTP_USER", password_env="SMTP_PASSWORD",
                   starttls=True)  # no ca_file: the system's authorities do not know it
    h = Harness(sqlite_url, [config], env={"SMTP_USER": "monitor",
                                           "SMTP_PASSWORD": "s3cret-pass"})
    try:
        h.queue()
        h.deliver()
        [row] = h.rows()
        assert row.state == "failed" and "certificate verify failed" in row.last_error
        assert server.received == [] and "MAIL" not in server.commands
    finally:
        h.close()
        server.stop()


def test_ca_file_is_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello", encoding="utf-8")
    for ca_file, expected in ((tmp_path / "missing.pem", "No such file"),
                              (not_pem, "cannot load certificates")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"channels": [_mail(25, starttls=True, ca_file=str(ca_file))]},
                         "monitor.yaml")
        message = str(caught.value)
        assert "channels[0]" in message and "ca_file" in message and expected in message
