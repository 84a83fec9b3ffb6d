"""The `monitor` side of a benchmark, in a process of its own so its CPU and memory are its own.

The runner starts `python -m benchmarks.worker CONFIG.yaml` and drives it with one JSON
command per line on stdin; each answer is one JSON line on stdout:

  {"do": "cycle"}   refresh every configured feed once (as the daemon's poll cycle does,
                    `Monitor.refresh_feeds`), then deliver every queued alert to the webhook
                    receiver (`Monitor.deliver` until the outbox is empty); answers wall and
                    CPU seconds, items seen, new articles, alerts, deliveries.
  {"do": "memory"}  the process's current and peak RSS.
  {"do": "quit"}

Startup (imports, migration, baseline) happens before the first answer (`{"ready": ...}`),
which reports how long it took, so cycles measure the pipeline and nothing else.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import asyncio  # noqa: E402  (timing the imports is the point)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Awaitable, Callable, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

WEBHOOK_SECRET_ENV = "BENCH_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROOT = Path(__file__).resolve().parents[1]

# The shipped watch list's OIC rule, plus a broad desk rule that a realistic share of the
# ordinary news items match, so the alert path carries steady traffic.
WATCHES = [
    {"name": "oic",
     "any": ["سازمان همکاری اسلامی", "سازمان کنفرانس اسلامی", "دبیرکل سازمان همکاری اسلامی",
             "منظمة التعاون الإسلامي", "Organisation of Islamic Cooperation", "OIC"],
     "case_sensitive": ["OIC"], "channels": ["bench-webhook"]},
    {"name": "desk", "any": ["وزیر امور خارجه", "شورای امنیت", "سازمان ملل"],
     "channels": ["bench-webhook"]},
]


def descendants(pid: int | str = "self") -> list[int]:
    """The pids of a process's children and their children (Linux /proc): its parse
    workers and multiprocessing's resource tracker, whose CPU and memory are its own."""
    root = os.getpid() if pid == "self" else int(pid)
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(
                int(entry.name))
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def process_cpu(pid: int | str = "self") -> float:
    """CPU seconds (user + system) of a process and its descendants, those still running."""
    total = time.process_time() if pid == "self" else 0.0
    for each in ([] if pid == "self" else [int(pid)]) + descendants(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def process_rss(pid: int | str = "self") -> dict[str, float]:
    """Current and peak resident set size of a process with its descendants, in MB (Linux
    /proc; peak: the sum of each one's own peak). Pages they share are counted in each."""
    fields = {"VmRSS": 0.0, "VmHWM": 0.0}
    processes = [pid, *descendants(pid)]
    for each in processes:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            name, _, value = line.partition(":")
            if name in fields:
                fields[name] += int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"],
            "processes": len(processes)}


def bench_config(path: Path, database_url: str, feed_urls: list[str], hook_url: str,
                 interval: float = 300, tick: float = 1.0) -> Path:
    """Write a monitor config for a benchmark: the feeds, the watches, a webhook channel."""
    from monitor.config import Config, FetchConfig

    data: dict[str, Any] = {
        "database": {"url": database_url},
        "seed": {"path": str(ROOT / "seed_data")},
        "scheduler": {"tick": tick, "delivery_interval": 1, "shutdown_grace": 10},
        "feeds": [{"name": f"feed-{i}", "url": url, "interval": interval}
                  for i, url in enumerate(feed_urls)],
        "watches": WATCHES,
        "channels": [{"name": "bench-webhook", "type": "webhook", "url": hook_url,
                      "secret_env": WEBHOOK_SECRET_ENV}],
    }
    # Issue 6 adds a private-network guard; the loopback feeds need it opened, but only
    # where the key exists, so this builder works before and after that lands.
    if "network" in Config.model_fields:
        data["network"] = {"allow_private_networks": True}
    # One loopback server stands in for thousands of publishers' hosts; per-host politeness
    # (issue 6) would turn it into one host's queue, which no real deployment has. rss2email
    # runs with its same-server interval at 0 as well.
    if "per_host_spacing" in FetchConfig.model_fields:
        concurrency = FetchConfig().concurrency
        data["fetch"] = {"per_host_concurrency": concurrency, "per_host_spacing": 0}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


class Worker:
    def __init__(self, config_path: str) -> None:
        from monitor.config import load_config, load_secrets
        from monitor.service import Monitor

        config = load_config(config_path)
        secrets = load_secrets(config, {WEBHOOK_SECRET_ENV: WEBHOOK_SECRET})
        self.monitor = Monitor(config, secrets)
        self.feeds = len(config.feeds)

    def prepare(self) -> None:
        self.monitor.prepare()
        self.monitor.open_channels()

    async def cycle(self) -> dict[str, Any]:
        wall, cpu = time.perf_counter(), process_cpu()
        outcomes = await self.monitor.refresh_feeds(due_only=False, limit=self.feeds)
        fetched = time.perf_counter()
        delivered = attempted = 0
        while True:
            summary = await self.monitor.deliver()
            if not summary.attempted:
                break
            attempted += summary.attempted
            delivered += summary.delivered
        results: dict[str, int] = {}
        for outcome in outcomes:
            results[outcome.result] = results.get(outcome.result, 0) + 1
        errors = sorted({o.error for o in outcomes if o.error})[:5]
        return {
            "wall": time.perf_counter() - wall,
            "refresh_wall": fetched - wall,
            "cpu": process_cpu() - cpu,
            "feeds": len(outcomes),
            "results": results,
            "errors": errors,
            "items": sum(o.entries for o in outcomes),
            "new_articles": sum(o.new_articles for o in outcomes),
            "alerts": sum(o.alerts for o in outcomes),
            "deliveries_attempted": attempted,
            "deliveries_delivered": delivered,
        }


async def answer_commands(commands: Mapping[str, Callable[[], Awaitable[dict[str, Any]]]]
                          ) -> None:
    """Answer each JSON command on stdin (`{"do": NAME}`) with one JSON line on stdout, until
    "quit" or the end of stdin: how the runner drives this module and `benchmarks.floors`."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)["do"]
        if command == "quit":
            reply({"bye": True})
            return
        if command in commands:
            reply(await commands[command]())
        else:
            reply({"error": f"unknown command {command!r}"})


async def serve(config_path: str) -> None:
    worker = Worker(config_path)
    worker.prepare()
    reply({"ready": True, "startup": time.perf_counter() - STARTED, **process_rss()})

    async def memory() -> dict[str, Any]:
        return process_rss()

    try:
        await answer_commands({"cycle": worker.cycle, "memory": memory})
    finally:
        await worker.monitor.close()


def reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main() -> None:
    # Alerts and per-feed progress are logged at INFO; a benchmark wants only problems.
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
