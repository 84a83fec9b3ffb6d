"""Webhook delivery: JSON POST signed per the Standard Webhooks spec, or the payload shape of
Slack / Discord incoming webhooks or the Telegram Bot API.

Only a 2xx answer is success. Redirects are not followed (a 3xx is a failure that names
the new location). 410 Gone disables the channel until the operator resumes it. The whole
attempt (connect, send, read the full answer) has one deadline, so a receiver that
trickles bytes cannot hold a delivery for longer than `timeout`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time

import httpx

from monitor.alerts.message import DeliveryResult, Outgoing
from monitor.alerts.render import (
    discord_payload,
    slack_payload,
    telegram_payload,
    webhook_payload,
)
from monitor.config import WebhookChannelConfig
from monitor.net import PUBLIC_ONLY, GuardedTransport, NetworkPolicy, parse_retry_after


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


class WebhookChannel:
    def __init__(self, config: WebhookChannelConfig, secret: str | None,
                 url: str | None = None, policy: NetworkPolicy = PUBLIC_ONLY) -> None:
        self.name = config.name
        self._config = config
        self._url = url or config.url
        self._secret = decode_secret(secret) if secret else None
        # The same private-network guard as feeds: a webhook URL must not reach the LAN
        # unless network.* in the config allows it.
        self._client = httpx.AsyncClient(timeout=config.timeout, follow_redirects=False,
                                         transport=GuardedTransport(policy))

    def body(self, message: Outgoing) -> bytes:
        c = self._config
        if c.format == "slack":
            payload = slack_payload(message)
        elif c.format == "discord":
            payload = discord_payload(message)
        elif c.format == "telegram":
            payload = telegram_payload(message, c.chat_id or "")
        else:
            payload = webhook_payload(message)
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def request(self, message: Outgoing, now: float | None = None) -> tuple[bytes, dict]:
        """The exact bytes and headers to send; the signature covers those bytes."""
        body = self.body(message)
        timestamp = int(time.time() if now is None else now)
        headers = {**self._config.headers, "content-type": "application/json",
                   "webhook-id": message.message_id, "webhook-timestamp": str(timestamp)}
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, message.message_id, timestamp,
                                                body)
        return body, headers

    async def send(self, message: Outgoing) -> DeliveryResult:
        body, headers = self.request(message)
        deadline = self._config.timeout
        try:
            async with asyncio.timeout(deadline):
                response = await self._client.post(self._url or "", content=body,
                                                    headers=headers)
        except TimeoutError:
            return DeliveryResult.failure(f"no complete answer within {deadline:g} s")
        except httpx.HTTPError as exc:
            # The URL may carry a token (Slack, Telegram): name the error, not the request.
            return DeliveryResult.failure(f"{type(exc).__name__}: {exc}"[:300]
                                          .replace(self._url or "\0", "<url>"))
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult.success()
        if status == 410:
            return DeliveryResult.failure(
                "HTTP 410 Gone: the receiver says this webhook no longer exists; the channel "
                f"is disabled until `monitor alerts resume {self.name}`",
                channel_state="disabled")
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            return DeliveryResult.failure(
                f"HTTP {status} redirect to {location[:200]} not followed; update the "
                "channel url if the receiver moved")
        retry_after = (parse_retry_after(response.headers.get("retry-after"))
                       if status in (429, 503) else None)
        return DeliveryResult.failure(f"HTTP {status}", retry_after=retry_after)

    async def close(self) -> None:
        await self._client.aclose()
