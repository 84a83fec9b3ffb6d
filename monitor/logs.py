"""Logging: human-readable lines by default, JSON lines with --log-format json.

Every line passes through a redactor that replaces the values of the secrets the config
names (channel secrets, the database password) wherever they appear: message, arguments,
traceback, in raw, JSON-escaped, repr and URL-encoded form. Uncaught exceptions in the main
thread and in worker threads are routed through logging so they are redacted too.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from urllib.parse import quote

REDACTED = "[redacted]"
# Shorter values would blank out ordinary words and numbers all over the log.
MIN_SECRET_LENGTH = 4

# Lines about a feed or channel are logged as "feed %s: ..." / "channel %s ..." with the
# name as the first argument; JSON lines carry it as a field too, for log pipelines.
_SUBJECTS = ("feed", "channel")


class Redactor:
    def __init__(self) -> None:
        self._forms: list[str] = []
        self._lock = threading.Lock()

    def add_secrets(self, values: Iterable[str]) -> None:
        forms: set[str] = set(self._forms)
        for value in values:
            for variant in (value, value.removeprefix("whsec_")):
                forms.update({variant, json.dumps(variant)[1:-1],
                              json.dumps(variant, ensure_ascii=False)[1:-1],
                              repr(variant)[1:-1], quote(variant, safe="")})
        with self._lock:
            # Longest first, so a secret containing another is replaced whole.
            self._forms = sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH),
                                 key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text


REDACTOR = Redactor()


def add_secrets(values: Iterable[str]) -> None:
    """Secret values to scrub from every log line from now on (a reload adds new ones)."""
    REDACTOR.add_secrets(values)


def subject_of(record: logging.LogRecord) -> tuple[str, str] | None:
    """("feed", name) for a line logged as ``"feed %s: ..."`` (likewise channel)."""
    kind = str(record.msg).split(" ", 1)[0]
    if (kind in _SUBJECTS and str(record.msg).startswith(f"{kind} %s")
            and isinstance(record.args, tuple) and record.args):
        return kind, str(record.args[0])
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        subject = getattr(record, "subject", None) or subject_of(record)
        if subject:
            data[subject[0]] = subject[1]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Scrubs the message and traceback before `inner` formats them (so no escaping, such
    as JSON of a repr, can hide a secret from the scrub), then scrubs the finished line."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # other handlers keep the original
        record.subject = subject_of(record)  # a name, never a secret
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = self.redact(self.inner.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return self.redact(self.inner.format(record))


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("monitor").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        logging.getLogger("monitor").critical(
            "uncaught exception in thread %s", args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(inner, REDACTOR))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    # Library chatter (every request, every job run) would drown the feed lines.
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic", "aiosmtpd", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A poll cycle longer than the tick makes APScheduler warn "maximum number of running
    # instances reached" every tick; that is the design (one cycle at a time), not news.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
