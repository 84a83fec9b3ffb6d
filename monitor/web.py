"""The daemon's small HTTP endpoint (/healthz, /metrics) on the daemon's own asyncio loop.

A few dozen lines of HTTP/1.1 rather than a web framework: two read-only routes, GET and
HEAD only, one request per connection, bounded request size and read time, and no Server
header or version banner. Route handlers do their database work in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from monitor.config import split_listen

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[], Awaitable[Response]]


def _text(status: int, message: str, **headers: str) -> Response:
    return Response(status, (message + "\n").encode(), headers=headers)


class Endpoint:
    def __init__(self, listen: str, routes: Mapping[str, Route]) -> None:
        self.host, self.port = split_listen(listen)
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_REQUEST_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]  # the real one when port was 0
        log.info("http: serving /healthz and /metrics on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await self._respond(reader)
            writer.write(self._encode(response, head_only))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            return _text(431, "request header too large"), False
        except TimeoutError:
            return _text(408, "request timeout"), False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _text(400, "bad request"), False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", allow="GET, HEAD"), False
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            return _text(404, "not found"), method == "HEAD"
        try:
            return await route(), method == "HEAD"
        except Exception:
            log.exception("http: %s failed", target.split("?", 1)[0])
            return _text(500, "internal error"), method == "HEAD"

    @staticmethod
    def _encode(response: Response, head_only: bool) -> bytes:
        reason = HTTPStatus(response.status).phrase
        headers = {"content-type": response.content_type,
                   "content-length": str(len(response.body)),
                   "cache-control": "no-store", "x-content-type-options": "nosniff",
                   "connection": "close", **response.headers}
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + response.body
