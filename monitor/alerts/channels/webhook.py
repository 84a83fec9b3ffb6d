"""Webhook delivery: JSON POST signed per the Standard Webhooks spec."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

import httpx

from monitor.alerts.message import AlertMessage, DeliveryResult
from monitor.alerts.render import webhook_payload
from monitor.config import WebhookChannelConfig
from monitor.net import PUBLIC_ONLY, GuardedTransport, NetworkPolicy


def decode_secret(secret: str) -> bytes:
    """A Standard Webhooks secret is ``whsec_`` + base64; a bare base64 string also works.

    Anything else is used as raw bytes so that a hand-made secret still signs (receivers
    using the standardwebhooks library will need the base64 form).
    """
    body = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return secret.encode("utf-8")


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class WebhookChannel:
    def __init__(self, config: WebhookChannelConfig, secret: str | None,
                 policy: NetworkPolicy = PUBLIC_ONLY) -> None:
        self.name = config.name
        self._config = config
        self._secret = decode_secret(secret) if secret else None
        # The same private-network guard as feeds: a webhook URL must not reach the LAN
        # unless network.* in the config allows it.
        self._client = httpx.AsyncClient(timeout=config.timeout, follow_redirects=False,
                                         transport=GuardedTransport(policy))

    def request(self, alert: AlertMessage, now: float | None = None) -> tuple[bytes, dict]:
        """The exact bytes and headers to send; the signature covers those bytes."""
        body = json.dumps(webhook_payload(alert), ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        timestamp = int(time.time() if now is None else now)
        headers = {**self._config.headers, "content-type": "application/json",
                   "webhook-id": alert.message_id, "webhook-timestamp": str(timestamp)}
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, alert.message_id, timestamp, body)
        return body, headers

    async def send(self, alert: AlertMessage) -> DeliveryResult:
        body, headers = self.request(alert)
        try:
            response = await self._client.post(self._config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return DeliveryResult.failure(f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= response.status_code < 300:
            return DeliveryResult.success()
        # Only 2xx is success; redirects are not followed. Everything else is retried.
        return DeliveryResult.failure(
            f"HTTP {response.status_code}",
            retry_after=_retry_after(response.headers.get("retry-after")))

    async def close(self) -> None:
        await self._client.aclose()
