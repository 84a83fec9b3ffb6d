"""Outgoing TLS: one verifying context per process for HTTP clients and one for SMTP.

Each `ssl.SSLContext` parses a whole CA store when built (about 75 ms of CPU, 0.5–0.8 MB of
memory that stays for the context's life), so clients share one instead of building their own.
"""

from __future__ import annotations

import asyncio
import ssl

from monitor.alerts.channels import build_active_channels
from monitor.alerts.channels import email as email_channel
from monitor.config import FetchConfig, Secrets, parse_config
from monitor.fetch import Fetcher
from monitor.net import NetworkPolicy, tls_context


def _context_of(client: object) -> ssl.SSLContext:
    return client._client._transport.ssl_context  # type: ignore[attr-defined]


def _webhook_channels(count: int) -> list[object]:
    config = parse_config({
        "network": {"allow_private_networks": True},
        "channels": [{"name": f"hook-{i}", "type": "webhook",
                      "url": f"http://127.0.0.1:9/hook-{i}"} for i in range(count)]}, env={})
    return list(build_active_channels(config, Secrets({})).values())


def _verifies(context: ssl.SSLContext) -> bool:
    return (context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
            and context.cert_store_stats()["x509_ca"] > 0)


def test_feeds_and_webhooks_share_one_verifying_context() -> None:
    async def build() -> list[ssl.SSLContext]:
        fetchers = [Fetcher(FetchConfig()),
                    Fetcher(FetchConfig(concurrency=4), NetworkPolicy(allow_private=True))]
        channels = _webhook_channels(2)
        contexts = [_context_of(c) for c in (*fetchers, *channels)]
        for client in (*fetchers, *channels):
            await client.close()  # type: ignore[attr-defined]
        return contexts

    contexts = asyncio.run(build())
    assert all(context is tls_context() for context in contexts)
    assert _verifies(tls_context())


def test_smtp_builds_its_context_once_and_it_verifies() -> None:
    first = email_channel.tls_context()
    assert email_channel.tls_context() is first
    assert _verifies(first)
