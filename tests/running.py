"""A daemon running in the test's own event loop, or as a real `monitor run` process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from monitor.cli import main
from monitor.config import load_config, load_secrets
from monitor.scheduler import Daemon
from monitor.service import Monitor
from tests.conftest import ROOT


@asynccontextmanager
async def daemon_in_loop(config_path: Path) -> AsyncIterator[Daemon]:
    """`monitor run` without the process: the same Monitor and Daemon, stopped on exit."""
    config = load_config(config_path)
    monitor = Monitor(config, load_secrets(config))
    await asyncio.to_thread(monitor.prepare)
    monitor.open_channels()
    daemon = Daemon(monitor, config_path)
    task = asyncio.create_task(daemon.run())
    try:
        started = asyncio.create_task(daemon.started.wait())
        await asyncio.wait([started, task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # raise what stopped it
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        await monitor.close()


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Await until `predicate()` (sync or async) is true, or the timeout passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or loop.time() > deadline:
            return bool(value)
        await asyncio.sleep(interval)


def run_cli(config: Path, *args: str) -> str:
    """A `monitor` command in this process; its output. It must exit 0."""
    out = io.StringIO()
    assert main(["--config", str(config), *args], out=out) == 0
    return out.getvalue()


@contextmanager
def daemon_process(config: Path, log_path: Path, *extra: str,
                   env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A real `monitor run` process writing to log_path; killed if the test did not stop it."""
    with log_path.open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "monitor", "--config", str(config),
                                   *extra, "run"], cwd=ROOT, env={**os.environ, **(env or {})},
                                  stdout=log, stderr=log)
    try:
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def stop(daemon: subprocess.Popen) -> int:
    """SIGTERM, as systemd and docker send it; the exit code."""
    daemon.send_signal(signal.SIGTERM)
    return daemon.wait(timeout=15)
