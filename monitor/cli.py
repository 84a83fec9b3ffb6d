"""The `monitor` command line. Wiring only: every command calls into the stages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from monitor.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    channel_missing_secrets,
    load_config,
    load_secrets,
)
from monitor.logs import setup_logging
from monitor.seed import SeedError
from monitor.store.database import Database, DatabaseError

log = logging.getLogger("monitor")

EXIT_OK, EXIT_CONFIG, EXIT_DATABASE = 0, 2, 3


def _monitor(config: Config):
    from monitor.service import Monitor

    return Monitor(config, load_secrets(config))


def cmd_check_config(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    secrets = load_secrets(config)
    out.write(f"configuration OK: {args.config}\n")
    out.write(f"database: {Database(config.database.url).safe_url}\n")
    out.write(f"feeds: {len(config.feeds)}\n")
    for feed in config.feeds:
        flag = "" if feed.enabled else " (disabled)"
        out.write(f"  - {feed.name}: {feed.url} every {feed.interval:g} s{flag}\n")
    out.write(f"watches: {len(config.watches)}\n")
    for watch in config.watches:
        terms = len(watch.any) + len(watch.all) + len(watch.not_)
        out.write(f"  - {watch.name}: {terms} terms -> {', '.join(watch.channels) or 'none'}\n")
    out.write(f"channels: {len(config.channels)}\n")
    for channel in config.channels:
        missing = channel_missing_secrets(channel, secrets)
        status = ("disabled" if not channel.enabled else
                  f"inactive, set {', '.join(missing)}" if missing else "active")
        out.write(f"  - {channel.name} ({channel.type}): {status}\n")
    return EXIT_OK


def cmd_migrate(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    db = Database(config.database.url)
    db.migrate()
    out.write(f"database is at the newest schema: {db.safe_url}\n")
    return EXIT_OK


def cmd_seed(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    monitor = _monitor(config)
    monitor.db.migrate()
    added = monitor.load_baseline()
    out.write(f"baseline: {added} new seed articles stored\n")
    return EXIT_OK


def cmd_poll(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    async def main() -> int:
        monitor = _monitor(config)
        try:
            monitor.prepare()
            monitor.open_channels()
            outcomes = await monitor.refresh_feeds(due_only=False)
            summary = await monitor.deliver()
        finally:
            await monitor.close()
        for o in outcomes:
            if o.result == "error":
                out.write(f"{o.feed}: error: {o.error}\n")
            else:
                out.write(f"{o.feed}: {o.result}, {o.new_articles} new, "
                          f"{o.duplicates} duplicates, {o.alerts} alerts\n")
        out.write(f"deliveries: {summary.delivered} delivered, {summary.failed} to retry, "
                  f"{summary.dead} dead\n")
        return EXIT_OK

    return asyncio.run(main())


def cmd_run(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from monitor.scheduler import Daemon
    from monitor.service import process_owner
    from monitor.store.lock import single_daemon

    async def main() -> int:
        monitor = _monitor(config)
        try:
            monitor.prepare()
            monitor.open_channels()
            await Daemon(monitor).run()
        finally:
            await monitor.close()
        return EXIT_OK

    with single_daemon(config.database.url, process_owner()):
        return asyncio.run(main())


def export_rows(db: Database):
    """Every stored article as a dict, oldest first, streamed."""
    from monitor.store.models import Article

    def iso(value):
        return value.isoformat() if value else None

    with db.session() as session:
        for a in session.scalars(select(Article).order_by(Article.id).execution_options(
                yield_per=500)):
            yield {
                "id": a.id, "feed": a.origin, "link": a.link, "title": a.title,
                "summary": a.summary, "published": iso(a.published), "fetched": iso(a.fetched),
                "baseline": a.baseline, "story": a.story_id, "language": a.language,
                "watches": [m["watch"] for m in a.matches],
                "matched": {m["watch"]: m["terms"] for m in a.matches},
            }


def cmd_export(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    db = Database(config.database.url)
    db.migrate()
    for row in export_rows(db):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return EXIT_OK


COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace, TextIO], int], str]] = {
    "run": (cmd_run, "run the daemon in the foreground"),
    "poll": (cmd_poll, "poll every feed once, deliver the resulting alerts, exit"),
    "check-config": (cmd_check_config, "validate the configuration and print a summary"),
    "export": (cmd_export, "print every stored article as JSON lines"),
    "migrate": (cmd_migrate, "create or upgrade the database schema"),
    "seed": (cmd_seed, "load the seed baseline (already-known articles)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor", description="Watch news feeds and alert on matching items.")
    parser.add_argument("--config", default=os.environ.get("MONITOR_CONFIG", DEFAULT_CONFIG_PATH),
                        help="YAML configuration (default: %(default)s; env MONITOR_CONFIG)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default=os.environ.get("MONITOR_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level.upper())
    handler, _ = COMMANDS[args.command]
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(config, args, out)
    except (ConfigError, SeedError) as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseError, OperationalError, SQLAlchemyError) as exc:
        print(f"monitor: database error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
