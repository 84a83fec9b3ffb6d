"""The private-network guard with its default on: feeds and webhooks aimed at loopback, by
any spelling or through a redirect, never reach the canary."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.resolver import ThreadedResolver

from monitor.alerts.channels import build_active_channels
from monitor.alerts.message import AlertMessage, ArticleView
from monitor.cli import main
from monitor.config import ConfigError, FetchConfig, NetworkConfig, Secrets, parse_config
from monitor.fetch import Fetcher
from monitor.net import PUBLIC_ONLY, NetworkPolicy, is_public, network_policy
from tests.conftest import write_config
from tests.servers import CanaryServer, FeedServer, Route, rss


@pytest.fixture
def canary() -> Iterator[CanaryServer]:
    server = CanaryServer().start()
    yield server
    server.stop()


def fetch(url: str, policy: NetworkPolicy = PUBLIC_ONLY) -> str | None:
    async def run() -> str | None:
        fetcher = Fetcher(FetchConfig(connect_timeout=2, total_timeout=5), policy)
        try:
            return (await fetcher.fetch(url)).error
        finally:
            await fetcher.close()
    return asyncio.run(run())


@pytest.mark.parametrize(("template", "refusal"), [
    ("http://127.0.0.1:{port}/feed", "blocked: "),
    ("http://localhost:{port}/feed", "blocked: "),  # a name that resolves to loopback
    ("http://127.0.0.1:1\\@localhost:{port}/feed", "blocked: "),  # parser confusion
    ("http://[::ffff:127.0.0.1]:{port}/feed", "blocked: "),  # IPv4-mapped IPv6
    ("http://0.0.0.0:{port}/feed", "blocked: "),  # unspecified: Linux means localhost
    # 127.0.0.1 as one number: aiohttp refuses it before any lookup...
    ("http://2130706433:{port}/feed", "invalid URL: 2130706433 - is not a canonical"),
    # ... in hex, shortened: resolved by the system, then refused by the guard.
    ("http://0x7f.1:{port}/feed", "blocked: 0x7f.1 resolves to non-public address"),
])
def test_loopback_in_any_spelling_is_refused(canary: CanaryServer, template: str,
                                             refusal: str) -> None:
    error = fetch(template.format(port=canary.port))
    assert error is not None and error.startswith(refusal), error
    assert canary.connections == 0


def test_every_redirect_hop_is_checked(canary: CanaryServer) -> None:
    # The feed host itself is allowed (it sits on 127.0.0.2); the hop to 127.0.0.1 is not.
    server = FeedServer("127.0.0.2").start()
    try:
        server.routes["/feed"] = Route(status=302, headers={"location": canary.url("/x")})
        policy = NetworkPolicy.build(False, ["127.0.0.2/32"])
        error = fetch(server.url("/feed"), policy)
        assert len(server.requests) == 1  # the allowed host was reached...
    finally:
        server.stop()
    assert error is not None and error.startswith("blocked: 127.0.0.1 resolves")
    assert canary.connections == 0  # ...the private hop was not


def test_a_name_with_one_private_answer_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                   canary: CanaryServer) -> None:
    """DNS rebinding hedges with a public and a private answer; the guard refuses both,
    and since it connects to the address it checked, a second lookup never happens."""
    lookups: list[str] = []

    async def resolve(self: object, host: str, port: int = 0, family: int = 0) -> list:
        lookups.append(host)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0} for address in ("8.8.8.8", "127.0.0.1")]

    monkeypatch.setattr(ThreadedResolver, "resolve", resolve)
    error = fetch(f"http://rebind.example:{canary.port}/")
    assert error is not None and "non-public address 127.0.0.1" in error
    assert lookups == ["rebind.example"] and canary.connections == 0


def test_opting_in_reaches_private_addresses(feed_server: FeedServer) -> None:
    url = feed_server.set_feed("/f", rss([]))
    assert fetch(url, NetworkPolicy(allow_private=True)) is None
    assert fetch(url, NetworkPolicy.build(False, ["127.0.0.0/8"])) is None
    assert fetch(url.replace("127.0.0.1", "localhost"),
                 NetworkPolicy.build(False, ["localhost"])) is None
    assert fetch(url, NetworkPolicy.build(False, ["10.0.0.0/8", "feeds.lan"])).startswith(
        "blocked")


def test_address_classes() -> None:
    blocked = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
               "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::"]
    assert [a for a in blocked if is_public(ipaddress.ip_address(a))] == []
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert is_public(ipaddress.ip_address("2001:4860:4860::8888"))


def test_allowed_hosts_are_validated() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"network": {"allowed_hosts": ["10.0.0.0/8", "not a host!"]}}, env={})
    assert "network.allowed_hosts" in str(err.value) and "'not a host!'" in str(err.value)
    config = parse_config({"network": {"allowed_hosts": ["10.0.0.0/8", "feeds.lan"]}}, env={})
    policy = network_policy(config.network)
    assert policy.hosts == {"feeds.lan"} and len(policy.networks) == 1


def test_webhooks_use_the_same_guard(canary: CanaryServer) -> None:
    config = parse_config({"channels": [{"name": "hook", "type": "webhook",
                                         "url": canary.url("/hook")}]}, env={})
    assert config.network == NetworkConfig()  # the default: guarded
    channel = build_active_channels(config, Secrets({}))["hook"]
    alert = AlertMessage(
        delivery_id=1, message_id="msg_1", channel="hook", watch="oic", kind="new",
        matched=("OIC",), article=ArticleView(id=1, title="t", link=None, summary="",
                                              published=None, feed="f", language="en"),
        created_at=datetime.now(UTC), story_id=1, attempt=1)

    async def send() -> object:
        try:
            return await channel.send(alert)
        finally:
            await channel.close()

    result = asyncio.run(send())
    assert not result.ok and "blocked" in result.error  # type: ignore[attr-defined]
    assert canary.connections == 0


def test_poll_records_a_blocked_feed_and_the_canary_stays_untouched(
        tmp_path: Path, sqlite_url: str, canary: CanaryServer) -> None:
    config = write_config(tmp_path / "monitor.yaml", sqlite_url, network={},
                          feeds=[{"name": "inside", "url": canary.url("/feed")}])
    out = io.StringIO()
    assert main(["--config", str(config), "poll"], out=out) == 0
    assert "inside: error: blocked: 127.0.0.1 resolves to non-public address" in out.getvalue()
    assert canary.connections == 0
