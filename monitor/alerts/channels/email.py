"""Email delivery over SMTP (plain, STARTTLS or SSL; smtplib in a worker thread).

The conversation is driven step by step so that each recipient's answer is known: the
recipients that accepted are recorded, and a retry goes only to the others. 250 after
DATA is success; 4xx is retried; 5xx is permanent; 535 on AUTH pauses the channel. With
`starttls: true` a server that does not offer STARTTLS gets nothing, not a plaintext copy.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import smtplib
import ssl
from datetime import UTC, datetime

from monitor.alerts.message import DeliveryResult, Outgoing
from monitor.alerts.render import email_message
from monitor.config import EmailChannelConfig


class EmailChannel:
    def __init__(self, config: EmailChannelConfig, username: str | None,
                 password: str | None) -> None:
        self.name = config.name
        self._config = config
        self._username = username
        self._password = password

    async def send(self, message: Outgoing) -> DeliveryResult:
        return await asyncio.to_thread(self._send_sync, message)

    def _connect(self) -> smtplib.SMTP:
        c = self._config
        if c.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout,
                                                  context=tls_context(c.ca_file))
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        try:
            smtp.ehlo()
            if c.starttls:
                if not smtp.has_extn("starttls"):
                    raise _Refused("the server does not offer STARTTLS and the channel "
                                   "requires it; nothing was sent in plaintext")
                smtp.starttls(context=tls_context(c.ca_file))
                smtp.ehlo()
            if self._username and self._password:
                _login(smtp, self._username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _send_sync(self, message: Outgoing) -> DeliveryResult:
        c = self._config
        pending = [r for r in c.to if r not in message.delivered_to]
        if not pending:
            return DeliveryResult.success()
        mail = email_message(message, c.from_, c.to, datetime.now(UTC))
        try:
            smtp = self._connect()
        except _Refused as exc:
            return DeliveryResult.failure(str(exc))
        except smtplib.SMTPAuthenticationError as exc:
            return DeliveryResult.failure(
                f"SMTP {exc.smtp_code} authentication failed: {_text(exc.smtp_error)}; check "
                f"{c.username_env} and {c.password_env}. The channel is paused until "
                f"`monitor alerts resume {self.name}` or a successful "
                f"`monitor test-alert {self.name}`", channel_state="paused")
        except smtplib.SMTPResponseException as exc:
            return _answer_failure("connect", exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            return DeliveryResult.failure(f"{type(exc).__name__}: {exc}"[:300])
        try:
            # SMTP needs CRLF line ends; smtplib does not convert them for bytes.
            data = mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))
            return self._transaction(smtp, data, pending)
        except smtplib.SMTPServerDisconnected as exc:
            # If DATA was under way we cannot know whether it was taken; the retry carries
            # the same Message-ID so the receiving side can drop a repeat.
            return DeliveryResult.failure(f"connection dropped: {exc}"[:300])
        except smtplib.SMTPResponseException as exc:
            return _answer_failure("", exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            return DeliveryResult.failure(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _transaction(self, smtp: smtplib.SMTP, data: bytes,
                     recipients: list[str]) -> DeliveryResult:
        code, answer = smtp.mail(self._config.from_)
        if code != 250:
            smtp.rset()
            return _answer_failure("MAIL FROM", code, answer)
        accepted: list[str] = []
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in recipients:
            code, answer = smtp.rcpt(recipient)
            if code in (250, 251):
                accepted.append(recipient)
            else:
                refused[recipient] = (code, answer)
        if accepted:
            code, answer = smtp.data(data)
            if code != 250:
                return _answer_failure("DATA", code, answer)
        else:
            smtp.rset()
        if not refused:
            return DeliveryResult.success(tuple(accepted))
        detail = "; ".join(f"{r}: {code} {_text(answer)}" for r, (code, answer) in
                           refused.items())
        # Retry only if some refusal was temporary; those that accepted are not sent again.
        permanent = all(code >= 500 for code, _ in refused.values())
        return DeliveryResult.failure(f"recipient(s) refused: {detail}"[:500],
                                      permanent=permanent, accepted=tuple(accepted))

    async def close(self) -> None:
        return None


@functools.cache
def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS for SMTP: the system's CA store (or the channel's `ca_file`), certificates and
    host names verified.

    Built once per CA source and shared by every send of every email channel: building one
    parses the whole CA store, about 75 ms of CPU and 0.8 MB, which a context per message
    paid each time. A context is safe to share between connections and threads. (So a
    `ca_file` replaced at the same path is read again at the next start.)
    """
    return ssl.create_default_context(cafile=ca_file)


class _Refused(Exception):
    """A transport we must not use: the message is not sent."""


def _answer_failure(step: str, code: int, answer: bytes | str) -> DeliveryResult:
    where = f"{step}: " if step else ""
    return DeliveryResult.failure(f"{where}SMTP {code} {_text(answer)}",
                                  permanent=500 <= code < 600)


def _text(value: bytes | str) -> str:
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)[:200]


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """Log in; a non-ASCII password (a Persian one, say) goes as UTF-8 AUTH PLAIN.

    smtplib encodes credentials as ASCII and raises UnicodeEncodeError otherwise, which would
    turn a valid password into days of "internal error" retries; RFC 4616 PLAIN is UTF-8.
    """
    if (username + password).isascii():
        smtp.login(username, password)
        return
    mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" not in mechanisms:
        raise smtplib.SMTPAuthenticationError(
            535, b"the credentials contain non-ASCII characters and the server offers no "
                 b"AUTH PLAIN to carry them")
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
    code, answer = smtp.docmd("AUTH", "PLAIN " + token)
    if code not in (235, 503):  # 503: already authenticated
        raise smtplib.SMTPAuthenticationError(code, answer)
