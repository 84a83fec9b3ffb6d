"""Parse workers (`parse.processes`): the same prepared documents as in the daemon's own
threads, each watch list matched as configured, and a worker that dies or overruns
`parse.timeout` costs that document only, never the daemon."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing.context
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from benchmarks.worker import descendants
from monitor.articles import Candidate, PreparedDocument, prepare_document
from monitor.cli import EXIT_CONFIG
from monitor.cli import main as cli_main
from monitor.config import WatchConfig, load_config, load_secrets
from monitor.parse import Entry, KnownItems, NotAFeed, UnreadEntry, entries_by_key
from monitor.parse_workers import (
    ParseFailed,
    ParseWorkers,
    WatchList,
    WorkersUnavailable,
    close_workers,
)
from monitor.seed import read_seeds
from monitor.service import Monitor
from monitor.store.models import Feed
from monitor.text.match import Matcher
from tests.conftest import ROOT, shared_testdata, write_config
from tests.servers import FeedServer, rss
from tests.stuck_parse import STUCK, prepare_unless_stuck

OIC = WatchConfig(name="oic", any=["سازمان همکاری اسلامی"])
DESK = WatchConfig(name="desk", any=["شورای امنیت"])
HEADERS = {"content-type": "application/rss+xml; charset=utf-8"}
URL = "http://127.0.0.1/f"


def document(items: int, tag: str = "") -> bytes:
    """An RSS document of `items` Persian entries made from the seed articles."""
    seeds = [e for seed in read_seeds(ROOT / "seed_data") for e in seed.entries]
    return rss([{"title": f"{seeds[i % len(seeds)].title} {tag}{i}",
                 "link": f"http://127.0.0.1/news/{tag}{i}",
                 "description": seeds[i % len(seeds)].summary}
                for i in range(items)]).encode()


def spawned() -> set[int]:
    """This process's spawned children (multiprocessing's `spawn_main`), by /proc."""
    return children_running_spawn_main(os.getpid())


def children_running_spawn_main(parent: int) -> set[int]:
    pids = set()
    for pid in descendants(parent):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        except OSError:
            continue  # it ended meanwhile
    return pids


@pytest.fixture
def workers() -> Iterator[ParseWorkers]:
    pool = ParseWorkers(1)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def worker_pids() -> Callable[[], set[int]]:
    """The pids of the test's own workers: not those the process's Monitors share."""
    others = spawned()
    return lambda: spawned() - others


def run_in_worker(workers: ParseWorkers, body: bytes, watches: list[WatchConfig],
                  timeout: float = 60.0, known: KnownItems | None = None) -> PreparedDocument:
    return asyncio.run(workers.prepare(WatchList.of(watches), timeout, body, HEADERS,
                                       "http://127.0.0.1/f", "agency", known))


def test_a_worker_prepares_what_the_daemon_thread_would(workers: ParseWorkers) -> None:
    body = document(12)
    parsed_once = prepare_document(document(5), HEADERS, "http://127.0.0.1/f", "agency",
                                   Matcher([OIC]))
    known = KnownItems.of(parsed_once.parsed)
    here = prepare_document(body, HEADERS, "http://127.0.0.1/f", "agency", Matcher([OIC]),
                            known)
    there = run_in_worker(workers, body, [OIC], known=known)
    assert there == here
    # The five known entries were left unprepared (and unparsed) there too; the others were
    # matched.
    assert [isinstance(c, Candidate) for c in there.candidates] == [False] * 5 + [True] * 7
    assert all(c.raw is None for c in there.candidates[:5] if isinstance(c, UnreadEntry))
    assert any(c.matches for c in there.candidates if isinstance(c, Candidate))


def test_each_watch_list_is_matched_as_configured(workers: ParseWorkers) -> None:
    body = document(8)
    lists = ([OIC], [DESK], [OIC, DESK], [OIC])  # a third list, then back to the first

    def watch_names(prepared: PreparedDocument) -> set[str]:
        return {m.watch for c in prepared.candidates if isinstance(c, Candidate)
                for m in c.matches}

    expected = [watch_names(prepare_document(body, HEADERS, "http://127.0.0.1/f", "agency",
                                             Matcher(w))) for w in lists]
    assert expected[0] == {"oic"} and expected[2] == {"oic", "desk"}
    assert [watch_names(run_in_worker(workers, body, w)) for w in lists] == expected


def test_not_a_feed_comes_back_as_not_a_feed(workers: ParseWorkers) -> None:
    with pytest.raises(NotAFeed):
        run_in_worker(workers, b"<html><body>maintenance</body></html>", [OIC])


def test_a_document_past_the_timeout_is_given_up_and_the_worker_goes_on(
        workers: ParseWorkers, worker_pids: Callable[[], set[int]]) -> None:
    with pytest.raises(ParseFailed, match=r"longer than 0.05 s \(parse.timeout\)"):
        run_in_worker(workers, document(1500, "slow"), [OIC], timeout=0.05)
    pids = worker_pids()
    assert len(run_in_worker(workers, document(3), [OIC]).candidates) == 3
    assert worker_pids() == pids  # the same worker: it was interrupted, not replaced


def test_a_parse_stuck_in_c_code_is_ended_by_its_cpu_limit(
        worker_pids: Callable[[], set[int]]) -> None:
    """The alarm cannot interrupt a C call; the kernel ends the worker once it has spent
    twice parse.timeout of CPU, twice (the document is tried once more), and the next
    document is read by a new worker."""
    workers = ParseWorkers(1, work=prepare_unless_stuck)
    try:
        started = time.monotonic()
        with pytest.raises(ParseFailed, match=r"spent 0.6 s of CPU \(twice parse.timeout\)"):
            run_in_worker(workers, STUCK, [OIC], timeout=0.3)
        assert time.monotonic() - started < 20  # two worker starts and 2 x 0.6 s of CPU
        assert len(run_in_worker(workers, document(3), [OIC], timeout=0.3).candidates) == 3
        assert len(worker_pids()) == 1
    finally:
        workers.close()


async def _kill_workers_while_parsing(workers: ParseWorkers, body: bytes, kills: int,
                                      worker_pids: Callable[[], set[int]]
                                      ) -> PreparedDocument:
    """Start a long parse and kill the worker reading it, `kills` times."""
    task = asyncio.create_task(workers.prepare(WatchList.of([OIC]), 60.0, body, HEADERS,
                                               "http://127.0.0.1/f", "agency", None))
    killed: set[int] = set()
    while len(killed) < kills:
        await asyncio.sleep(0.05)
        assert not task.done(), "the document was read before its worker could be killed"
        for pid in worker_pids() - killed:
            await asyncio.sleep(0.5)  # well into the document
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
    return await task


def test_a_worker_that_dies_is_replaced_and_the_document_tried_once_more(
        workers: ParseWorkers, worker_pids: Callable[[], set[int]]) -> None:
    workers.start()
    prepared = asyncio.run(_kill_workers_while_parsing(workers, document(2000, "k"), 1,
                                                       worker_pids))
    assert len(prepared.candidates) == 2000


def test_a_document_that_kills_two_workers_fails_alone(
        workers: ParseWorkers, worker_pids: Callable[[], set[int]]) -> None:
    workers.start()
    with pytest.raises(ParseFailed, match="the parse worker stopped while reading"):
        asyncio.run(_kill_workers_while_parsing(workers, document(2000, "k"), 2, worker_pids))
    # The next document goes to a third worker.
    assert len(run_in_worker(workers, document(2), [OIC]).candidates) == 2


def refuse_new_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS refuses to start a process, as under a process limit (root, who runs the
    tests here, is exempt from RLIMIT_NPROC, so the refusal is made where spawn asks)."""
    def refused(self: object) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refused)


def test_workers_that_cannot_start_say_so_and_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The process's shared workers, which earlier tests' Monitors started, would serve the
    # daemon below without a new process.
    close_workers()
    refuse_new_processes(monkeypatch)
    workers = ParseWorkers(2)
    with pytest.raises(WorkersUnavailable, match=r"could not start 2 parse worker processes "
                       r"\(BlockingIOError: .*Resource temporarily unavailable\).*"
                       r"parse.processes: 0"):
        workers.start()
    # A refresh that meets the refusal later is that feed's error, not the daemon's end.
    with pytest.raises(ParseFailed, match="could not start"):
        run_in_worker(workers, document(2), [OIC])
    workers.close()
    # `monitor run` stops at startup with the message, not a traceback.
    path = write_config(tmp_path / "monitor.yaml", f"sqlite:///{tmp_path / 'm.db'}", feeds=[])
    # Should the daemon start after all, it is stopped as systemd would, and the test fails.
    stop = threading.Timer(30, os.kill, (os.getpid(), signal.SIGTERM))
    stop.start()
    try:
        assert cli_main(["--config", str(path), "run"]) == EXIT_CONFIG
    finally:
        stop.cancel()
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "monitor: parse.processes: could not start 1 parse worker process (")


def test_a_worker_ignores_the_signals_meant_for_the_daemon(
        workers: ParseWorkers, worker_pids: Callable[[], set[int]]) -> None:
    async def interrupted() -> PreparedDocument:
        task = asyncio.create_task(workers.prepare(
            WatchList.of([OIC]), 60.0, document(1500, "i"), HEADERS, "http://127.0.0.1/f",
            "agency", None))
        while not worker_pids():
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the worker is up and reading
        for pid in worker_pids():
            os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the process group
            os.kill(pid, signal.SIGTERM)  # so does systemd's stop
        return await task

    assert len(asyncio.run(interrupted()).candidates) == 1500


def test_an_overrunning_feed_is_recorded_and_the_others_are_stored(
        tmp_path: Path, db_url: str, feed_server: FeedServer) -> None:
    path = write_config(
        tmp_path / "monitor.yaml", db_url, parse={"processes": 1, "timeout": 0.05},
        fetch={"per_host_spacing": 0},
        feeds=[{"name": "slow", "url": feed_server.set_feed("/slow", document(1500, "slow"))},
               {"name": "quick", "url": feed_server.set_feed("/quick", document(3, "q"))}])
    config = load_config(path, env={})
    monitor = Monitor(config, load_secrets(config, env={}))
    monitor.prepare()

    async def poll() -> dict[str, str]:
        try:
            outcomes = await monitor.refresh_feeds(due_only=False)
        finally:
            await monitor.close()
        return {o.feed: o.result for o in outcomes}

    started = time.monotonic()
    assert asyncio.run(poll()) == {"slow": "error", "quick": "stored"}
    assert time.monotonic() - started < 30
    with monitor.db.session() as session:
        errors = dict(session.execute(select(Feed.name, Feed.last_error)).all())
    assert "parse.timeout" in errors["slow"] and errors["quick"] is None


def test_workers_leave_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """A killed daemon (SIGKILL, a crash, the OOM killer) leaves no worker behind: a worker
    ignores SIGTERM and would otherwise wait on its queue for ever."""
    script = (
        "import asyncio, sys\n"
        "from monitor.config import WatchConfig\n"
        "from monitor.parse_workers import ParseWorkers, WatchList\n"
        "workers = ParseWorkers(1)\n"
        "asyncio.run(workers.prepare(WatchList.of([WatchConfig(name='w', any=['x'])]), 60.0,\n"
        "    b'<rss version=\"2.0\"><channel><title>t</title></channel></rss>', {},\n"
        "    'http://127.0.0.1/f', 'f', None))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        workers = children_running_spawn_main(daemon.pid)
        assert len(workers) == 1
    finally:
        daemon.kill()
        daemon.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "the worker outlived its daemon by 10 s"
        time.sleep(0.1)


def test_every_corpus_document_survives_the_trip_from_a_worker() -> None:
    """What a worker sends back is pickled: feedparser's whole corpus, read once, then again
    with every entry's key known (left unread, with feedparser's own entry inside) and with
    its items known as well (not parsed at all), comes back equal."""
    corpus = shared_testdata("feedparser")
    matcher = Matcher([OIC])
    documents = unread = unparsed = 0
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.parent != corpus):
        body = path.read_bytes()
        try:
            first = prepare_document(body, {}, URL, "f", matcher)
        except NotAFeed:
            continue
        everything = KnownItems.of(first.parsed)
        keys_only = KnownItems(everything.keys, array("q", [0] * len(everything.keys)),
                               everything.published)
        for known in (None, keys_only, everything):
            sent = prepare_document(body, {}, URL, "f", matcher, known)
            received = pickle.loads(pickle.dumps(sent))
            assert received == sent, path
            assert [read(c, body) for c in received.candidates] == \
                [read(c, body) for c in sent.candidates]
            unread += sum(isinstance(c, UnreadEntry) and c.raw is not None
                          for c in received.candidates)
            unparsed += sum(isinstance(c, UnreadEntry) and c.raw is None
                            for c in received.candidates)
        documents += 1
    assert documents > 2000 and unread > 100 and unparsed > 100


def read(candidate: Candidate | Entry | UnreadEntry, body: bytes) -> Candidate | Entry:
    if isinstance(candidate, UnreadEntry):
        return candidate.read() if candidate.raw is not None else \
            entries_by_key(body, {}, URL)[candidate.key]
    return candidate


@pytest.mark.parametrize(("processes", "built_at_start"), [(1, False), (0, True)])
def test_the_daemon_builds_hazms_normalizer_at_start_only_when_it_parses_itself(
        tmp_path: Path, processes: int, built_at_start: bool) -> None:
    """With parse workers, each builds hazm's normalizer; the daemon's own would cost every
    start 0.56 s and the daemon 17 MB for the rare entry it reads itself (a wrong guess
    about a repeated item). Such an entry still reads as a worker would have read it, the
    normalizer built then. In a process of its own: this one may have built it already."""
    config = write_config(tmp_path / "monitor.yaml", f"sqlite:///{tmp_path / 'm.db'}",
                          parse={"processes": processes})
    text = "سازمان همكاري اسلامي در کتاب های خود می گوید"  # Arabic kaf and yeh, no ZWNJ
    script = (
        "import asyncio, sys\n"
        "from monitor.config import load_config, load_secrets\n"
        "from monitor.service import Monitor\n"
        "from monitor.text import normalize\n"
        "config = load_config(sys.argv[1])\n"
        "monitor = Monitor(config, load_secrets(config, {}))\n"
        "monitor.prepare()\n"
        "print(normalize._normalizer is not None)\n"
        "print(normalize.display_text(sys.argv[2]))\n"
        "asyncio.run(monitor.close())\n")
    run = subprocess.run([sys.executable, "-c", script, str(config), text], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    built, shown = run.stdout.splitlines()
    assert built == str(built_at_start)
    assert shown == "سازمان همکاری اسلامی در کتاب\u200cهای خود می\u200cگوید"
