"""Misbehaving receivers for delivery tests, all on 127.0.0.1: a webhook receiver that
follows a script (statuses, headers, a hang, a trickle) and an aiosmtpd server whose
answers to RCPT, DATA and AUTH can be set per test."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import LoopbackHTTPServer, free_port


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to wait before answering at all
    trickle: float = 0.0  # seconds between body bytes (a 200 with a slow 1 KB body)
    delay: float = 0.0  # seconds to wait before a normal answer (a slow receiver)


class ScriptedWebhook(LoopbackHTTPServer):
    """Answers each POST with the next scripted Reply, then with `default`."""

    def __init__(self, script: list[Reply | int] | None = None,
                 default: Reply | None = None) -> None:
        super().__init__()
        self.script = [r if isinstance(r, Reply) else Reply(r) for r in script or []]
        self.default = default or Reply()
        self._stopping = threading.Event()

    @property
    def posts(self):
        return [r for r in self.requests if r.method == "POST"]

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.posts]

    def respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            reply = self.script.pop(0) if self.script else self.default
        if reply.hang and self._stopping.wait(reply.hang):
            return
        if reply.delay:
            time.sleep(reply.delay)
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if reply.trickle:
            handler.send_header("content-length", "1024")
            handler.end_headers()
            for _ in range(1024):
                if self._stopping.wait(reply.trickle):
                    return
                try:
                    handler.wfile.write(b".")
                    handler.wfile.flush()
                except OSError:
                    return  # the client gave up, as it should
            return
        handler.send_header("content-length", "0")
        handler.end_headers()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class ScriptedSmtp:
    """aiosmtpd with programmable answers.

    `rcpt` maps a recipient to a list of answers for its successive RCPTs ("250" accepts);
    `data` is a list of answers for successive DATA commands, where "drop" stores the message
    and then cuts the connection before answering; `auth_ok` decides AUTH (None: no AUTH).
    """

    def __init__(self, auth_ok: bool | None = None, tls: ssl.SSLContext | None = None,
                 implicit_tls: bool = False) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.received: list[Received] = []
        self.rcpt: dict[str, list[str]] = {}
        self.data: list[str] = []
        self.commands: list[str] = []
        outer = self

        class Handler:
            async def handle_MAIL(self, server: Any, session: Any, envelope: Any,
                                  address: str, options: list[str]) -> str:
                outer.commands.append("MAIL")
                envelope.mail_from = address
                return "250 OK"

            async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                                  address: str, options: list[str]) -> str:
                answers = outer.rcpt.get(address)
                answer = answers.pop(0) if answers else "250 OK"
                if answer.startswith("250"):
                    envelope.rcpt_tos.append(address)
                return answer

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                answer = outer.data.pop(0) if outer.data else "250 Message accepted"
                if answer.startswith("250") or answer == "drop":
                    parsed = email.message_from_bytes(envelope.content,
                                                      policy=email.policy.default)
                    outer.received.append(Received(envelope.mail_from,
                                                   list(envelope.rcpt_tos), parsed))
                if answer == "drop":
                    server.transport.abort()
                    return "250 never seen"
                return answer

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            # handled=False: aiosmtpd answers 535 itself on failure.
            if outer.password is not None:
                return AuthResult(success=auth_data.password == outer.password.encode(),
                                  handled=False)
            return AuthResult(success=bool(outer.auth_ok), handled=False)

        self.auth_ok = auth_ok
        self.password: str | None = None  # when set, AUTH succeeds only with this password
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if auth_ok is not None:
            # With STARTTLS, AUTH is offered only once the connection is encrypted.
            # (aiosmtpd does not count implicit TLS for this, but there every byte is.)
            kwargs = {"authenticator": authenticate,
                      "auth_require_tls": tls is not None and not implicit_tls}
        if tls is not None:
            kwargs["ssl_context" if implicit_tls else "tls_context"] = tls
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      **kwargs)

    def start(self) -> ScriptedSmtp:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


class FakeClock:
    """A clock a test moves by hand; `Monitor(clock=...)` reads it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)
