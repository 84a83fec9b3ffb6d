"""CPU per changed feed on the whole refresh path: fetch, parse, prepare, store, deliver.

    python -m benchmarks.changed_cycle [--feeds 200] [--cycles 8]

The steady cycle's changed feeds without its 304s: a loopback server with `--feeds` feeds of
three items, a `Worker` in this process (as `make bench` runs it in its own), one warm-up
cycle, then cycles in which every feed publishes one new item. Prints each cycle's CPU per
feed and the median. Meant for A/B runs against two checkouts and for `py-spy --gil`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from benchmarks.loopback import LoopbackServer
from benchmarks.worker import Worker, bench_config, process_cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=8)
    args = parser.parse_args()
    with LoopbackServer(args.feeds, 3) as server, \
            tempfile.TemporaryDirectory(prefix="bench-changed-") as tmp:
        config = bench_config(Path(tmp) / "monitor.yaml", f"sqlite:///{tmp}/monitor.db",
                              server.feed_urls(), server.hook_url)
        worker = Worker(str(config))
        worker.prepare()

        async def run() -> list[float]:
            await worker.cycle()
            per_feed = []
            for cycle_no in range(args.cycles):
                server.publish(1.0, seed=cycle_no)
                server_cpu = process_cpu(server.pid)
                cycle = await worker.cycle()
                # The server is this process's child too; its CPU is not monitor's.
                cycle["cpu"] -= process_cpu(server.pid) - server_cpu
                if cycle["results"] != {"stored": args.feeds}:
                    raise RuntimeError(f"expected every feed stored, got {cycle['results']}")
                per_feed.append(cycle["cpu"] / args.feeds * 1000)
                print(f"cycle {cycle_no}: {per_feed[-1]:.2f} ms CPU per changed feed, "
                      f"{cycle['alerts']} alerts")
            return per_feed

        per_feed = asyncio.run(run())
        print(f"median {statistics.median(per_feed):.2f} ms CPU per changed feed "
              f"(range {min(per_feed):.2f}–{max(per_feed):.2f})")


if __name__ == "__main__":
    main()
