"""Real servers on 127.0.0.1 for tests: a feed server, a webhook receiver, an SMTP server.

Each runs in a background thread and binds port 0 (or a port picked from port 0), so tests
never collide and never leave loopback.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Route:
    """What the feed server answers for one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/rss+xml; charset=utf-8"
    # Optional full control: a function that gets the handler and writes the response.
    handler: Callable[[BaseHTTPRequestHandler], None] | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops bursts of connections from daemons


class LoopbackHTTPServer:
    """Base: serve in a thread, record every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.host = host
        # Set at stop(): handlers that stall on purpose wait on it instead of sleeping.
        self.stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer._lock:
                    outer.requests.append(Request(self.command, self.path,
                                                  {k.lower(): v for k, v in self.headers.items()},
                                                  body, time.time()))
                outer.respond(self, body)

            do_GET = do_POST = do_HEAD = _handle

        self._server = _Server((host, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> LoopbackHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


class FeedServer(LoopbackHTTPServer):
    """Serves feeds by path, with ETag/Last-Modified validators and 304s."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.routes: dict[str, Route] = {}

    def set_feed(self, path: str, body: bytes | str, **kwargs: Any) -> str:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.routes[path] = Route(body=data, **kwargs)
        return self.url(path)

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        route = self.routes.get(handler.path.split("?")[0])
        if route is None:
            handler.send_response(404)
            handler.send_header("content-length", "0")
            handler.end_headers()
            return
        if route.handler is not None:
            route.handler(handler)
            return
        etag = '"' + hashlib.sha256(route.body).hexdigest()[:16] + '"'
        if route.status == 200 and handler.headers.get("if-none-match") == etag:
            handler.send_response(304)
            handler.send_header("etag", etag)
            handler.send_header("content-length", "0")
            handler.end_headers()
            return
        handler.send_response(route.status)
        handler.send_header("content-type", route.content_type)
        if route.status == 200:
            handler.send_header("etag", etag)
        for name, value in route.headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(route.body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(route.body)


class WebhookReceiver(LoopbackHTTPServer):
    """Records POSTs; answers each with the next status in `statuses` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])

    @property
    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def respond(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        status = self.statuses.pop(0) if self.statuses else 200
        handler.send_response(status)
        handler.send_header("content-length", "0")
        handler.end_headers()


class SmtpServer:
    """aiosmtpd on 127.0.0.1, recording every message with its envelope."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
                outer.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
                return "250 Message accepted for delivery"

        # aiosmtpd's ready check fails with port=0, so pick a free port first.
        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


class CanaryServer:
    """A TCP listener that only counts connections: the proof that nothing reached it."""

    def __init__(self) -> None:
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> CanaryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every connection and refuses new
    ones until `restore()`: a database restart, as the daemon sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self._up.set()

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        self._thread.join()
        self._listener.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rss(items: list[dict[str, str]], title: str = "خبرگزاری آزمایشی") -> str:
    """A small RSS 2.0 document; each item dict has title, link, description, guid..."""
    from xml.sax.saxutils import escape

    parts = []
    for item in items:
        fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in item.items())
        parts.append(f"<item>{fields}</item>")
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>{escape(title)}</title><link>http://127.0.0.1/</link>"
            f"<description>test</description>{''.join(parts)}</channel></rss>")
