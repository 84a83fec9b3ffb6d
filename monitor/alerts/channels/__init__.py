"""Delivery channels. Every channel has one interface: `await channel.send(message)` (one
alert or a digest) returns a `DeliveryResult` instead of raising for transport failures."""

from __future__ import annotations

import logging
from typing import Protocol

from monitor.alerts.message import DeliveryResult, Outgoing
from monitor.config import (
    ChannelConfig,
    Config,
    EmailChannelConfig,
    LogChannelConfig,
    NetworkConfig,
    Secrets,
    WebhookChannelConfig,
    channel_missing_secrets,
)

_log = logging.getLogger(__name__)


class Channel(Protocol):
    name: str

    async def send(self, message: Outgoing) -> DeliveryResult: ...

    async def close(self) -> None: ...


def build_channel(config: ChannelConfig, secrets: Secrets,
                  network: NetworkConfig | None = None) -> Channel:
    # Imported here so that a log-only setup never loads SMTP or HTTP code.
    if isinstance(config, LogChannelConfig):
        from monitor.alerts.channels.log import LogChannel

        return LogChannel(config)
    if isinstance(config, WebhookChannelConfig):
        from monitor.alerts.channels.webhook import WebhookChannel
        from monitor.net import network_policy

        return WebhookChannel(config, secrets.get(config.secret_env),
                              url=secrets.get(config.url_env),
                              policy=network_policy(network or NetworkConfig()))
    if isinstance(config, EmailChannelConfig):
        from monitor.alerts.channels.email import EmailChannel

        return EmailChannel(config, secrets.get(config.username_env),
                            secrets.get(config.password_env))
    raise TypeError(f"unknown channel type {type(config).__name__}")


def build_active_channels(config: Config, secrets: Secrets) -> dict[str, Channel]:
    """Channels that are enabled and have their secrets; the others are said why, once."""
    active: dict[str, Channel] = {}
    for channel in config.channels:
        if not channel.enabled:
            _log.info("channel %s is disabled in the config", channel.name)
            continue
        missing = channel_missing_secrets(channel, secrets)
        if missing:
            _log.warning("channel %s is inactive: environment variable(s) %s not set",
                        channel.name, ", ".join(missing))
            continue
        active[channel.name] = build_channel(channel, secrets, config.network)
    return active
