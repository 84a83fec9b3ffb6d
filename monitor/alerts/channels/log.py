"""Alerts printed to the daemon's log: on by default so a new user sees alerts at once."""

from __future__ import annotations

import logging

from monitor.alerts.message import DeliveryResult, Digest, Outgoing
from monitor.config import LogChannelConfig

log = logging.getLogger("monitor.alerts")


class LogChannel:
    def __init__(self, config: LogChannelConfig) -> None:
        self.name = config.name

    async def send(self, message: Outgoing) -> DeliveryResult:
        alerts = message.alerts if isinstance(message, Digest) else (message,)
        if isinstance(message, Digest):
            log.info("DIGEST %s: %d alerts", message.message_id, len(alerts))
        for alert in alerts:
            a = alert.article
            log.info("ALERT [%s] %s — %s (%s) matched: %s", alert.watch, a.title,
                     a.link or "-", a.feed, ", ".join(alert.matched))
        return DeliveryResult.success()

    async def close(self) -> None:
        return None
