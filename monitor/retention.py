"""Retention: remove old rows without losing anything the daemon still needs.

Kept always: baseline articles and their stories; alerts with a delivery still open
(held, pending, delivering, failed) and the articles and stories they point to; and what
deduplication needs — an article a feed still carries (its entry was in the feed's latest
parsed document, or was seen within the articles window) stays, so a feed that keeps an old
item for months never re-alerts it.

Removed: alerts older than `delivered_alerts` whose deliveries are all finished (delivered
or dead) and whose story has had no article within the stories window (an alert is how a
story remembers it was announced), with their deliveries; then articles older than
`articles` that nothing above protects, with their feed entries (and story band keys); then
stories left with no articles and no alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.store.database import Database
from monitor.store.models import Alert, Article, Delivery, FeedEntry, Story

# Deliveries still to be sent: held for a digest, queued, being sent, waiting for a retry.
OPEN_DELIVERY_STATES = ("held", "pending", "delivering", "failed")
_CHUNK = 1000


@dataclass
class PruneReport:
    removed: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def describe(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        parts = ", ".join(f"{n} {table}" for table, n in self.removed.items())
        return f"retention: {verb} {parts}"


class _Rollback(Exception):
    def __init__(self, removed: dict[str, int]) -> None:
        super().__init__()
        self.removed = removed


Transaction = Callable[[], AbstractContextManager[Session]]


def prune(db: Database, config: Config, now: datetime, dry_run: bool = False) -> PruneReport:
    """Apply the policy. A real run commits in batches, so a daemon sharing a SQLite file
    never waits long for the write lock; a dry run makes the same deletes in one
    transaction and rolls it back, so its counts are exactly what a real run removes."""
    if not dry_run:
        return PruneReport(apply_policy(db.session, config, now))
    try:
        with db.session() as session:
            raise _Rollback(apply_policy(lambda: nullcontext(session), config, now))
    except _Rollback as rollback:
        return PruneReport(rollback.removed, dry_run=True)


def apply_policy(transaction: Transaction, config: Config, now: datetime) -> dict[str, int]:
    """The deletes, each step in a `transaction()`; returns the rows removed per table."""
    policy = config.retention
    removed = {"deliveries": 0, "alerts": 0, "feed_entries": 0, "articles": 0, "stories": 0}
    if policy.delivered_alerts is not None:
        with transaction() as session:
            alerts = select(Alert.id).where(_finished_alert(
                now - _span(policy.delivered_alerts), now - _span(config.stories.window)))
            removed["deliveries"] = _delete(session, delete(Delivery).where(
                Delivery.alert_id.in_(alerts)))
            removed["alerts"] = _delete(session, delete(Alert).where(Alert.id.in_(alerts)))
    if policy.articles is not None:
        cutoff = now - _span(policy.articles)
        with transaction() as session:
            ids = list(session.scalars(select(Article.id).where(_expired_article(cutoff))))
        for start in range(0, len(ids), _CHUNK):
            with transaction() as session:
                # Checked again: a feed may have carried the article since the selection.
                chunk = list(session.scalars(select(Article.id).where(
                    Article.id.in_(ids[start:start + _CHUNK]), _unprotected_article(cutoff))))
                removed["feed_entries"] += _delete(session, delete(FeedEntry).where(
                    FeedEntry.article_id.in_(chunk)))
                removed["articles"] += _delete(session, delete(Article).where(
                    Article.id.in_(chunk)))
        with transaction() as session:
            removed["stories"] = _delete(session, delete(Story).where(
                Story.baseline.is_(False), Story.created_at < cutoff,
                ~exists().where(Article.story_id == Story.id),
                ~exists().where(Alert.story_id == Story.id)))
    return removed


def _span(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _finished_alert(cutoff: datetime, story_active_since: datetime):  # type: ignore[no-untyped-def]
    return and_(
        Alert.created_at < cutoff,
        ~exists().where(Delivery.alert_id == Alert.id,
                        Delivery.state.in_(OPEN_DELIVERY_STATES)),
        ~exists().where(Article.story_id == Alert.story_id,
                        Article.fetched >= story_active_since),
    )


def _unprotected_article(cutoff: datetime):  # type: ignore[no-untyped-def]
    """Old, not baseline, no alert left, and no feed carried it within the window."""
    seen = func.coalesce(FeedEntry.last_seen, FeedEntry.first_seen)
    return and_(
        Article.baseline.is_(False),
        Article.fetched < cutoff,
        ~exists().where(Alert.article_id == Article.id),
        ~exists().where(FeedEntry.article_id == Article.id, seen >= cutoff),
    )


def _expired_article(cutoff: datetime):  # type: ignore[no-untyped-def]
    """Unprotected, and not in its feed's latest parsed document (a feed that has not
    changed for longer than the window still carries it)."""
    seen = func.coalesce(FeedEntry.last_seen, FeedEntry.first_seen)
    latest = (select(FeedEntry.feed_id, func.max(seen).label("at"))
              .group_by(FeedEntry.feed_id).subquery())
    in_latest_document = select(FeedEntry.article_id).join(
        latest, and_(FeedEntry.feed_id == latest.c.feed_id, seen == latest.c.at))
    return and_(_unprotected_article(cutoff), Article.id.not_in(in_latest_document))


def _delete(session: Session, statement) -> int:  # type: ignore[no-untyped-def]
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount or 0
