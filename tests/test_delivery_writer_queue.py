"""The in-process queue for SQLite's single writer: the order of turns, re-entrance, and
real concurrent transactions that neither overlap nor get lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from monitor.store.database import Database, Priority, WriterQueue


def _wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_turns_go_by_priority_then_arrival() -> None:
    queue = WriterQueue()
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with queue.turn(Priority.NORMAL):
            holding.set()
            release.wait()

    def waiter(name: str, priority: Priority) -> None:
        with queue.turn(priority):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    holding.wait()
    waiters = [("304 release", Priority.ROUTINE), ("store a", Priority.NORMAL),
               ("claim", Priority.DELIVERY), ("store b", Priority.NORMAL),
               ("record", Priority.DELIVERY)]
    threads = []
    for name, priority in waiters:
        thread = threading.Thread(target=waiter, args=(name, priority))
        thread.start()
        threads.append(thread)
        _wait_until(lambda: queue.waiting == len(threads))  # queued in this order
    release.set()
    for thread in [first, *threads]:
        thread.join(5)
    assert order == ["claim", "record", "store a", "store b", "304 release"]


def test_a_turn_is_reentrant_for_its_thread() -> None:
    queue = WriterQueue()
    with queue.turn(Priority.ROUTINE), queue.turn(Priority.DELIVERY):
        pass
    # Released completely: another thread gets a turn at once.
    done = threading.Event()

    def other() -> None:
        with queue.turn(Priority.NORMAL):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert done.wait(5)
    thread.join(5)


def test_concurrent_sqlite_writes_take_turns_and_all_commit(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'queue.db'}")
    with db.transaction() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))
    inside, most_inside, errors = [0], [0], []
    guard = threading.Lock()

    def increment(routine: bool) -> None:
        try:
            for _ in range(25):
                writing = db.transaction() if routine else db.session(Priority.DELIVERY)
                with writing as connection:
                    with guard:
                        inside[0] += 1
                        most_inside[0] = max(most_inside[0], inside[0])
                    n = connection.execute(text("SELECT n FROM counter")).scalar_one()
                    time.sleep(0.0005)  # a read-modify-write that overlapping turns would lose
                    connection.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(i % 2 == 0,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert most_inside[0] == 1
    with db.session() as session:
        assert session.execute(text("SELECT n FROM counter")).scalar_one() == 12 * 25
    db.dispose()
