"""The `monitor` command line. Wiring only: every command calls into the stages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from monitor.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    channel_missing_secrets,
    load_config,
    load_fault_pauses,
    load_secrets,
    pid_file_path,
    secret_values,
)
from monitor.logs import add_secrets, setup_logging
from monitor.parse_workers import WorkersUnavailable, close_workers
from monitor.seed import SeedError
from monitor.store.database import Database, DatabaseError

if TYPE_CHECKING:
    from monitor.store.queries import StoryView

log = logging.getLogger("monitor")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DATABASE = 0, 1, 2, 3
EXIT_USAGE = 64  # `explain` with nothing to explain


def _monitor(config: Config):
    from monitor.service import Monitor

    return Monitor(config, load_secrets(config), fault_pauses=load_fault_pauses())


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
        out.write(f"  - {channel.name} ({channel.type}): {status}{_pacing(channel)}\n")
    listen = config.http.listen
    out.write(f"http: {listen} (/healthz, /metrics)\n" if listen else "http: off\n")
    kept = config.retention
    out.write("retention: articles {}, delivered alerts {}\n".format(
        *(f"{days / 86400:g} days" if days else "for ever"
          for days in (kept.articles, kept.delivered_alerts))))
    return EXIT_OK


def _pacing(channel) -> str:
    """How a channel paces its alerts, for check-config: empty when it sends at once."""
    parts = []
    if channel.mode == "digest":
        digest = channel.digest
        parts.append("digest " + (", ".join(t.strftime("%H:%M") for t in sorted(digest.at))
                                  if digest.at else f"every {digest.interval / 60:g} min"))
    if channel.rate_limit:
        parts.append(f"at most {channel.rate_limit}/hour")
    if channel.quiet_hours:
        q = channel.quiet_hours
        parts.append(f"quiet {q.start:%H:%M}-{q.end:%H:%M}")
    return f"; {', '.join(parts)} ({channel.timezone})" if parts else ""


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
            close_workers()
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
    from monitor.scheduler import Daemon, limit_malloc_arenas
    from monitor.service import process_owner
    from monitor.store.lock import single_daemon

    limit_malloc_arenas()

    async def main() -> int:
        monitor = _monitor(config)
        try:
            # Alembic then never enters the daemon's memory; prepare() finds it done.
            monitor.db.migrate(in_child=True)
            monitor.prepare()
            monitor.open_channels()
            await Daemon(monitor, config_path=args.config).run()
        finally:
            await monitor.close()
            close_workers()
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
                "spans": {m["watch"]: m.get("spans", []) for m in a.matches},
            }


def cmd_export(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    db = Database(config.database.url)
    db.migrate()
    for row in export_rows(db):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return EXIT_OK


def cmd_stories(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from monitor.store.queries import recent_stories

    db = Database(config.database.url)
    db.migrate()
    with db.session() as session:
        stories = recent_stories(session, args.limit)
    if args.json:
        for story in stories:
            out.write(json.dumps(_story_row(story), ensure_ascii=False) + "\n")
        return EXIT_OK
    for story in stories:
        flag = " (baseline)" if story.baseline else ""
        out.write(f"story {story.id}{flag}: {story.title}\n"
                  f"  {len(story.articles)} article(s) from {', '.join(story.sources)}; "
                  f"updated {story.updated_at:%Y-%m-%d %H:%M} UTC\n")
        for a in story.articles:
            out.write(f"  - [{a.origin}] {a.title}" + (f" <{a.link}>" if a.link else "") + "\n")
    if not stories:
        out.write("no stories yet\n")
    return EXIT_OK


def _story_row(story: StoryView) -> dict[str, object]:
    return {
        "id": story.id, "title": story.title, "baseline": story.baseline,
        "created": story.created_at.isoformat(), "updated": story.updated_at.isoformat(),
        "sources": story.sources,
        "articles": [{"id": a.id, "feed": a.origin, "title": a.title, "link": a.link,
                      "fetched": a.fetched.isoformat(),
                      "watches": [m["watch"] for m in a.matches]} for a in story.articles],
    }


def _stories_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20,
                        help="how many stories, newest first (default: 20)")
    parser.add_argument("--json", action="store_true", help="one JSON object per story and line")


def cmd_match(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from monitor.text.match import Matcher
    from monitor.text.report import match_lines

    matcher = Matcher(config.watches)
    # Bytes in, decoded per line: one bad byte must not stop a backtest of a big archive.
    lines = (raw.decode("utf-8", "replace") for raw in sys.stdin.buffer)
    for line in match_lines(matcher, lines, details=args.details):
        out.write(line)
        out.flush()  # a caller may feed one line and wait for its answer
    return EXIT_OK


class ExplainError(Exception):
    """Nothing to explain: no text given, or the file or feed could not be read."""


def _explain_items(config: Config, args: argparse.Namespace) -> list:
    """The items `monitor explain` looks at: the TEXT, a file, or a feed's entries."""
    from monitor.text.match import MatchInput
    from monitor.text.normalize import detect_language, display_text

    if args.url:
        feed = args.feed or next((f.name for f in config.feeds if f.url == args.url), None)
        return asyncio.run(_feed_items(config, args.url, feed))
    if args.file:
        try:
            with open(args.file, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            raise ExplainError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        # A headline on the first line, the rest is the body.
        title, _, rest = text.strip().partition("\n")
        fields = {"title": display_text(title), "summary": display_text(rest)}
    elif args.text is not None:
        fields = {args.field: display_text(args.text)}
    else:
        raise ExplainError("give a TEXT, --file PATH or --url FEED_URL")
    language = detect_language("\n".join(fields.values()))
    return [MatchInput(**{"title": "", **fields}, feed=args.feed, language=language)]


async def _feed_items(config: Config, url: str, feed: str | None) -> list:
    """A feed's entries, fetched and parsed as the daemon does."""
    from monitor.articles import entry_language
    from monitor.fetch import Fetcher
    from monitor.net import network_policy
    from monitor.parse import NotAFeed, parse_feed
    from monitor.text.match import MatchInput

    fetcher = Fetcher(config.fetch, network_policy(config.network))
    try:
        fetched = await fetcher.fetch(url)
    finally:
        await fetcher.close()
    if fetched.error is not None:
        raise ExplainError(f"{url}: {fetched.error}")
    try:
        parsed = parse_feed(fetched.body, fetched.headers, fetched.url)
    except NotAFeed as exc:
        raise ExplainError(f"{url}: not a feed: {exc}") from None
    return [MatchInput(e.title, e.summary, e.content, feed=feed, language=entry_language(e))
            for e in parsed.entries]


def cmd_explain(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from monitor.text.match import Matcher
    from monitor.text.report import render_explanations

    try:
        items = _explain_items(config, args)
    except ExplainError as exc:
        print(f"monitor explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    matcher = Matcher(config.watches)
    color = out.isatty() and not os.environ.get("NO_COLOR")
    matched = False
    for i, item in enumerate(items):
        explanations = matcher.explain(item)
        matched = matched or any(e.matched for e in explanations)
        if i:
            out.write("\n")
        out.write(render_explanations(item, explanations, color))
    if not items:
        out.write("the feed has no entries\n")
    return EXIT_OK if matched else EXIT_FAILED  # like grep: 1 = nothing matched


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from datetime import UTC, datetime

    from monitor.status import collect, render

    db = Database(config.database.url)
    db.migrate()
    with db.session() as session:
        status = collect(session, config, load_secrets(config), datetime.now(UTC))
    db.dispose()
    if args.json:
        out.write(json.dumps(status.as_json(), ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(render(status))
    return EXIT_OK


def cmd_prune(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from datetime import UTC, datetime

    from monitor.retention import prune

    db = Database(config.database.url)
    db.migrate()
    report = prune(db, config, datetime.now(UTC), dry_run=args.dry_run)
    db.dispose()
    out.write(report.describe() + "\n")
    return EXIT_OK


def cmd_reload(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    # The file was already validated by main(): an invalid one never reaches the daemon.
    path = pid_file_path(config)
    try:
        pid = int(path.read_text(encoding="ascii").strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        reason = "no pid file" if isinstance(exc, FileNotFoundError) else (
            "no such process" if isinstance(exc, ProcessLookupError) else str(exc))
        out.write(f"no running daemon found via {path} ({reason}); is it running with this "
                  "config? (scheduler.pid_file sets the path)\n")
        return EXIT_FAILED
    out.write(f"configuration OK; asked the daemon (pid {pid}) to reload it; its log says "
              "what changed\n")
    return EXIT_OK


def cmd_alerts(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from datetime import UTC, datetime

    from monitor.alerts import outbox

    db = Database(config.database.url)
    db.migrate()
    now = datetime.now(UTC)
    if args.action == "retry":
        if not args.targets and not args.dead:
            print("monitor: alerts retry needs delivery ids or --dead", file=sys.stderr)
            return EXIT_CONFIG
        try:
            ids = [int(t) for t in args.targets]
        except ValueError:
            print("monitor: alerts retry: delivery ids are numbers (see `monitor alerts`)",
                  file=sys.stderr)
            return EXIT_CONFIG
        with db.session() as session:
            queued, problems = outbox.requeue(session, now, ids, dead=args.dead)
        for problem in problems:
            out.write(f"{problem}\n")
        out.write(f"re-queued {queued} deliveries; a running daemon sends them within "
                  f"{config.scheduler.delivery_interval:g} s\n")
        return EXIT_OK if queued or not problems else EXIT_FAILED
    if args.action == "resume":
        names = {c.name for c in config.channels}
        unknown = [t for t in args.targets if t not in names]
        if not args.targets or unknown:
            print(f"monitor: alerts resume needs channel names from the config "
                  f"({', '.join(sorted(names))})", file=sys.stderr)
            return EXIT_CONFIG
        with db.session() as session:
            for name in args.targets:
                changed = outbox.set_channel_state(session, name, "active", None, now)
                out.write(f"channel {name}: {'resumed' if changed else 'was already active'}\n")
        return EXIT_OK
    with db.session() as session:
        stopped = outbox.stopped_channels(session)
        counts = outbox.state_counts(session)
        rows = outbox.recent_deliveries(session, args.limit, args.state, args.channel)
    channels = [{
        "name": c.name, "type": c.type, "mode": c.mode,
        "state": stopped[c.name].state if c.name in stopped else "active",
        "reason": stopped[c.name].reason if c.name in stopped else None,
        "deliveries": counts.get(c.name, {}),
    } for c in config.channels]
    if args.json:
        out.write(json.dumps({"channels": channels, "deliveries": rows}, ensure_ascii=False,
                             indent=2) + "\n")
        return EXIT_OK
    out.write("channels:\n")
    for c in channels:
        tally = ", ".join(f"{n} {state}" for state, n in sorted(c["deliveries"].items()))
        out.write(f"  {c['name']} ({c['type']}, {c['mode']}): {c['state']}"
                  f"{' — ' + tally if tally else ''}\n")
        if c["reason"]:
            out.write(f"    {c['reason']}\n")
    out.write(f"recent deliveries ({len(rows)}, newest first):\n")
    for r in rows:
        detail = ""
        if r["state"] in ("failed", "pending") and r["next_attempt"]:
            detail = f" next {r['next_attempt'][:19]}"
        if r["last_error"] and r["state"] != "delivered":
            detail += f" — {r['last_error']}"
        out.write(f"  {r['id']:>6} {r['created'][:19]} {r['channel']:<14} {r['state']:<10} "
                  f"attempts {r['attempts']:<2} [{r['watch']}] {r['title'][:70]}{detail}\n")
    return EXIT_OK


def cmd_test_alert(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    if args.channel not in {c.name for c in config.channels}:
        print(f"monitor: no channel named {args.channel!r} (channels: "
              f"{', '.join(c.name for c in config.channels)})", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> int:
        monitor = _monitor(config)
        try:
            monitor.db.migrate()
            result = await monitor.test_alert(args.channel)
        finally:
            await monitor.close()
        if result.ok:
            out.write(f"channel {args.channel}: test alert delivered\n")
            return EXIT_OK
        out.write(f"channel {args.channel}: test alert FAILED: {result.error}\n")
        return EXIT_FAILED

    return asyncio.run(main())


def _alerts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("retry", "resume"),
                        help="retry: re-queue dead/failed deliveries by id (or --dead); "
                             "resume: re-enable disabled or paused channels by name")
    parser.add_argument("targets", nargs="*", help="delivery ids (retry) or channel names")
    parser.add_argument("--dead", action="store_true", help="retry: every dead delivery")
    parser.add_argument("--limit", type=int, default=30, help="how many recent deliveries")
    parser.add_argument("--state", choices=("held", "pending", "delivering", "delivered",
                                            "failed", "dead"))
    parser.add_argument("--channel")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _test_alert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", help="a channel name from the config")


COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace, TextIO], int], str]] = {
    "run": (cmd_run, "run the daemon in the foreground"),
    "poll": (cmd_poll, "poll every feed once, deliver the resulting alerts, exit"),
    "check-config": (cmd_check_config, "validate the configuration and print a summary"),
    "export": (cmd_export, "print every stored article as JSON lines"),
    "stories": (cmd_stories, "list recent stories with their articles and sources"),
    "migrate": (cmd_migrate, "create or upgrade the database schema"),
    "seed": (cmd_seed, "load the seed baseline (already-known articles)"),
    "status": (cmd_status, "feeds, watches and channels at a glance"),
    "prune": (cmd_prune, "remove old rows per the retention policy"),
    "reload": (cmd_reload, "validate the config and make the running daemon re-read it"),
    "explain": (cmd_explain, "show which watches match a text, file or feed, where, and why "
                             "not"),
    "match": (cmd_match, "backtest: JSON lines in on stdin, one {id, watches} line out each"),
    "alerts": (cmd_alerts, "list recent alerts and their delivery state; retry; resume"),
    "test-alert": (cmd_test_alert, "send a sample alert through one channel and report"),
}


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("text", nargs="?", help="the text to explain")
    source.add_argument("--file", help="a text file: headline on the first line, body after")
    source.add_argument("--url", help="a feed URL: every entry is explained")
    parser.add_argument("--field", choices=("title", "summary", "content"), default="title",
                        help="which field TEXT stands for (default: %(default)s)")
    parser.add_argument("--feed", help="the feed name to assume, for watches limited to feeds")


def _match_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--details", action="store_true",
                        help="also print each match's terms and spans")


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "stories": _stories_arguments,
    "explain": _explain_arguments,
    "match": _match_arguments,
    "alerts": _alerts_arguments,
    "test-alert": _test_alert_arguments,
    "status": lambda p: p.add_argument("--json", action="store_true",
                                       help="print JSON for scripts instead of tables"),
    "prune": lambda p: p.add_argument("--dry-run", action="store_true",
                                      help="count what would be removed, remove nothing"),
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
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name in ARGUMENTS:
            ARGUMENTS[name](command)
    return parser


def _skip_httpx_cli() -> None:
    """Keep httpx's own command-line client out of the process.

    `import httpx` also imports its CLI (click, pygments, rich) when they are installed,
    and keeps what loaded before a missing one stopped it: 3.2 MB of a daemon's RSS where
    pytest brought pygments. A module set to None in sys.modules raises ImportError on
    import, which httpx answers with its fallback for a missing CLI; monitor never calls
    httpx's CLI. Before anything imports httpx, or it changes nothing.
    """
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    _skip_httpx_cli()
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level.upper())
    handler, _ = COMMANDS[args.command]
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    add_secrets(secret_values(config, load_secrets(config)))
    try:
        return handler(config, args, out)
    except (ConfigError, SeedError, WorkersUnavailable) as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseError, OperationalError, SQLAlchemyError) as exc:
        print(f"monitor: database error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
