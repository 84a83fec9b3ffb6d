"""Email delivery over SMTP: plain, STARTTLS or SSL, optional auth. smtplib in a thread."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import UTC, datetime

from monitor.alerts.message import AlertMessage, DeliveryResult
from monitor.alerts.render import email_message
from monitor.config import EmailChannelConfig


class EmailChannel:
    def __init__(self, config: EmailChannelConfig, username: str | None,
                 password: str | None) -> None:
        self.name = config.name
        self._config = config
        self._username = username
        self._password = password

    async def send(self, alert: AlertMessage) -> DeliveryResult:
        return await asyncio.to_thread(self._send_sync, alert)

    def _send_sync(self, alert: AlertMessage) -> DeliveryResult:
        c = self._config
        message = email_message(alert, c.from_, c.to, datetime.now(UTC))
        context = ssl.create_default_context()
        try:
            smtp_class = smtplib.SMTP_SSL if c.ssl else smtplib.SMTP
            kwargs = {"context": context} if c.ssl else {}
            with smtp_class(c.host, c.port, timeout=c.timeout, **kwargs) as smtp:
                smtp.ehlo()
                if c.starttls:
                    # starttls() raises if the server does not offer it: no plaintext fallback.
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if self._username and self._password:
                    smtp.login(self._username, self._password)
                refused = smtp.send_message(message, from_addr=c.from_, to_addrs=c.to)
        except smtplib.SMTPRecipientsRefused as exc:
            return DeliveryResult.failure(f"all recipients refused: {sorted(exc.recipients)}",
                                          permanent=True)
        except smtplib.SMTPResponseException as exc:
            return DeliveryResult.failure(f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}",
                                          permanent=500 <= exc.smtp_code < 600)
        except smtplib.SMTPNotSupportedError as exc:
            return DeliveryResult.failure(f"SMTP: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return DeliveryResult.failure(f"{type(exc).__name__}: {exc}"[:300])
        if refused:
            return DeliveryResult.failure(f"some recipients refused: {sorted(refused)}",
                                          permanent=True)
        return DeliveryResult.success()

    async def close(self) -> None:
        return None


def _text(value: bytes | str) -> str:
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)[:200]
