"""Changed feeds' documents parsed and prepared in worker processes (`parse.processes`).

Why processes: feedparser and the work on a new entry (keys, language, matches, sketches)
are about two thirds of a changed feed's CPU. In the daemon's threads they take turns with
fetching and storing under one GIL; in a worker they run on another core (a cold start of
200 feeds x 30 items on 2 cores: about 1.6 times the items per second with one worker).
And a document that crashes the parser, or keeps it busy past `parse.timeout`, costs a
worker, not the daemon: the feed records the error and a new worker takes over.

The timeout has two levels. An alarm interrupts the parse between bytecodes, and the worker
goes on. A parse stuck inside one C call never returns to take the alarm; the kernel ends
that worker once it has spent twice `parse.timeout` of CPU on the document (`SIGVTALRM`,
whose default action is to terminate), and the pool is replaced as for any dead worker.

The workers belong to the process, like a thread pool: every `Monitor` in it shares them,
and a reload changes the watches they match with, not the workers. A task names its watch
list by digest; a worker that has no matcher for that digest yet says so, and the list is
sent once more with the task.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import FrameType

from monitor.articles import PreparedDocument, prepare_document
from monitor.config import WatchConfig
from monitor.parse import KnownItems
from monitor.text.match import Matcher
from monitor.text.normalize import load_normalizer


class ParseFailed(Exception):
    """A worker gave up on a document, or died reading it; the message says which."""


class WorkersUnavailable(ParseFailed):
    """No worker process could be started (a process or memory limit)."""

    def __init__(self, processes: int, exc: OSError) -> None:
        super().__init__(
            f"parse.processes: could not start {processes} parse worker process"
            f"{'es' if processes > 1 else ''} ({type(exc).__name__}: {exc}); free the "
            "resources, or set parse.processes: 0 to parse in the daemon's threads")


@dataclass(frozen=True)
class WatchList:
    """Watches as a worker receives them: pickled once, named by their digest."""

    digest: bytes
    pickled: bytes

    @classmethod
    def of(cls, watches: Sequence[WatchConfig]) -> WatchList:
        pickled = pickle.dumps(list(watches))
        return cls(hashlib.sha256(pickled).digest(), pickled)


# --- in a worker ------------------------------------------------------------------------

# Matchers by watch-list digest. Two: during a reload, refreshes that started before it
# still match with the old list while new ones use the new.
_matchers: OrderedDict[bytes, Matcher] = OrderedDict()
_KEPT_MATCHERS = 2


class _UnknownWatches(Exception):
    """This worker has no matcher for the digest yet: send the watches."""


class _Overtime(BaseException):
    # A BaseException: feedparser catches Exception around its handlers, and must not
    # swallow this one.
    pass


def _start_worker() -> None:
    # Ctrl-C and systemd's SIGTERM reach every process of the group; a worker finishes the
    # document it is reading while the daemon drains, and leaves when the daemon closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _overtime)
    signal.signal(signal.SIGVTALRM, signal.SIG_DFL)  # the CPU limit: see the module's note
    threading.Thread(target=_leave_with, args=(os.getppid(),), daemon=True,
                     name="parse-worker-watch").start()
    load_normalizer()


def _leave_with(daemon: int) -> None:
    """Exit once the daemon is gone (killed, crashed). A worker would not notice by itself:
    it waits on a queue whose write end it holds as well, so no end-of-file comes."""
    while os.getppid() == daemon:
        time.sleep(1.0)
    os._exit(0)


_reading = False  # a document is being read: the alarm may interrupt it


def _overtime(signum: int, frame: FrameType | None) -> None:
    if _reading:
        raise _Overtime


def _matcher(digest: bytes, pickled: bytes | None) -> Matcher:
    matcher = _matchers.get(digest)
    if matcher is not None:
        _matchers.move_to_end(digest)
        return matcher
    if pickled is None:
        raise _UnknownWatches
    matcher = _matchers[digest] = Matcher(pickle.loads(pickled))
    while len(_matchers) > _KEPT_MATCHERS:
        _matchers.popitem(last=False)
    return matcher


# CPU a document may take, as a multiple of `parse.timeout`, before the kernel ends its worker.
CPU_LIMIT_FACTOR = 2.0

Work = Callable[[bytes, Mapping[str, str], str, str, Matcher, KnownItems | None],
                PreparedDocument]


def _prepare(work: Work, digest: bytes, pickled: bytes | None, timeout: float, body: bytes,
             headers: Mapping[str, str], url: str, feed_name: str,
             known: KnownItems | None) -> PreparedDocument:
    global _reading
    matcher = _matcher(digest, pickled)
    # The clocks start when the worker takes the document, not when it was queued.
    _reading = True
    signal.setitimer(signal.ITIMER_REAL, timeout)
    signal.setitimer(signal.ITIMER_VIRTUAL, timeout * CPU_LIMIT_FACTOR)
    try:
        try:
            document = work(body, headers, url, feed_name, matcher, known)
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
            _reading = False
    except _Overtime:
        raise ParseFailed(f"parsing took longer than {timeout:g} s (parse.timeout); "
                          "given up") from None
    return document


# --- in the daemon ----------------------------------------------------------------------

class ParseWorkers:
    """A pool of worker processes, replaced whole when one of its workers dies.

    `work` is what a worker does with a document: `prepare_document`, or in tests a
    module-level stand-in (a worker imports it by name)."""

    def __init__(self, processes: int, work: Work = prepare_document) -> None:
        self.processes = processes
        self.work = work
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()  # Monitors on other threads' loops share the pool

    def _submit(self, pool: ProcessPoolExecutor, *task: object) -> Future[PreparedDocument]:
        # Worker processes start on submit: a process limit or a failed fork shows here.
        try:
            return pool.submit(*task)  # type: ignore[arg-type]
        except OSError as exc:
            raise WorkersUnavailable(self.processes, exc) from exc

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the daemon has threads (a forked child could inherit a
                # lock held by one of them) and a worker needs little of its memory.
                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker)
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)

    def start(self) -> None:
        """Start the workers now (they import and build the normalizer, about a second)
        rather than at the first changed feed."""
        pool = self._current()
        for _ in range(self.processes):
            self._submit(pool, int)

    async def prepare(self, watches: WatchList, timeout: float, body: bytes,
                      headers: Mapping[str, str], url: str, feed_name: str,
                      known: KnownItems | None) -> PreparedDocument:
        """`prepare_document` in a worker. A worker that dies (killed, out of memory, a
        crash in C code) fails every task it was given with the pool: each is tried once
        more in a new pool, so that only the document that kills workers fails."""
        args = (timeout, body, dict(headers), url, feed_name, known)
        for _ in range(2):
            pool = self._current()
            try:
                try:
                    return await asyncio.wrap_future(
                        self._submit(pool, _prepare, self.work, watches.digest, None, *args))
                except _UnknownWatches:
                    return await asyncio.wrap_future(self._submit(
                        pool, _prepare, self.work, watches.digest, watches.pickled, *args))
            except BrokenProcessPool:
                self._replace(pool)
        raise ParseFailed(
            "the parse worker stopped while reading this document, twice: it crashed, was "
            f"killed, or spent {timeout * CPU_LIMIT_FACTOR:g} s of CPU (twice parse.timeout) "
            "where the timeout could not interrupt it")

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_shared: dict[int, ParseWorkers] = {}
_shared_lock = threading.Lock()


def shared_workers(processes: int) -> ParseWorkers:
    """The process's workers (`processes` of them), created on first use."""
    with _shared_lock:
        if processes not in _shared:
            _shared[processes] = ParseWorkers(processes)
        return _shared[processes]


def close_workers() -> None:
    """Stop every worker of this process (the daemon, on its way out)."""
    with _shared_lock:
        workers = list(_shared.values())
        _shared.clear()
    for each in workers:
        each.close()
