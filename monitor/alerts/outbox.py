"""The persistent outbox: pace, claim, record, re-queue.

Every delivery row goes pending -> delivering -> delivered | failed -> dead. A row becomes
sendable when the channel's pacing releases it (`released_at`): at once, or held (`held`)
for a digest in digest mode, in quiet hours, or over the rate limit. Rows released together
as a digest share a `batch_id`, which is also the digest's message id.

A message is claimed (state `delivering`, lease owner and expiry) before anything is sent,
so a process killed mid-send leaves a claim that expires and is picked up again, with the
same message id, after restart. Only the owner of a live lease may record a result.
`FOR UPDATE SKIP LOCKED` keeps two processes from claiming the same rows on PostgreSQL;
SQLite serialises writers with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from monitor.alerts.message import AlertMessage, ArticleView, DeliveryResult, Digest, Outgoing
from monitor.alerts.pacing import in_quiet_hours, next_digest_time
from monitor.config import ChannelConfig, RetryConfig
from monitor.store.models import Alert, Article, ChannelState, Delivery
from monitor.store.queries import story_sources
from monitor.text.match import Span

SENDABLE = ("pending", "failed")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential steps with full jitter; a server's Retry-After is a floor; after
    `give_up_after` from the moment the message became sendable it is dead."""

    delays: Sequence[float] = (5, 300, 1800, 7200, 18000, 36000)
    then: float = 3600
    give_up_after: float = 3 * 86400

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        return cls(tuple(config.delays), config.then, config.give_up_after)

    def next_attempt(self, attempts: int, since: datetime, now: datetime,
                     retry_after: float | None = None,
                     rng: random.Random | None = None) -> datetime | None:
        """When to try again after `attempts` attempts, or None when the time is spent."""
        base = self.delays[attempts - 1] if attempts <= len(self.delays) else self.then
        # Full jitter: many alerts failing together must not retry in lockstep.
        delay = (rng or random).uniform(0, base)
        if retry_after is not None:
            delay = max(delay, retry_after)
        at = now + timedelta(seconds=delay)
        return None if at > since + timedelta(seconds=self.give_up_after) else at


def new_batch_id() -> str:
    return "dig_" + uuid.uuid4().hex


# --- channel state ---------------------------------------------------------------------

def channel_state(session: Session, channel: str, now: datetime,
                  lock: bool = False) -> ChannelState:
    """The channel's row, created on first use; `lock` serialises pacing across processes."""
    row = session.get(ChannelState, channel, with_for_update=lock or None)
    if row is None:
        try:
            with session.begin_nested():
                session.add(ChannelState(channel=channel, state="active", changed_at=now))
        except IntegrityError:
            pass  # another process created it a moment ago
        row = session.get(ChannelState, channel, with_for_update=lock or None,
                          populate_existing=True)
        assert row is not None
    return row


def set_channel_state(session: Session, channel: str, state: str, reason: str | None,
                      now: datetime) -> bool:
    """Returns True when the state changed."""
    row = channel_state(session, channel, now)
    if row.state == state:
        return False
    row.state, row.reason, row.changed_at = state, reason, now
    if state == "active":
        # What waited for the channel goes out now rather than at its old retry time.
        for delivery in session.scalars(select(Delivery).where(
                Delivery.channel == channel, Delivery.state == "failed")):
            delivery.next_attempt_at = now
    return True


def stopped_channels(session: Session) -> dict[str, ChannelState]:
    return {row.channel: row for row in session.scalars(
        select(ChannelState).where(ChannelState.state != "active"))}


# --- pacing ----------------------------------------------------------------------------

def _sent_last_hour(session: Session, channel: str, now: datetime) -> int:
    """Messages released in the past hour; a digest counts once."""
    return session.scalar(
        select(func.count(func.distinct(func.coalesce(Delivery.batch_id, Delivery.message_id))))
        .where(Delivery.channel == channel, Delivery.released_at >= now - timedelta(hours=1))
    ) or 0


def _release(rows: Sequence[Delivery], now: datetime) -> None:
    """Make rows sendable; several become one digest with one id."""
    batch = new_batch_id() if len(rows) > 1 else None
    for row in rows:
        row.state, row.batch_id = "pending", batch
        row.released_at = row.next_attempt_at = now


def pace_channel(session: Session, config: ChannelConfig, now: datetime) -> int:
    """Release or hold the channel's new deliveries and send held ones as a digest when
    it is time. Returns how many rows became sendable."""
    state = channel_state(session, config.name, now, lock=True)
    fresh = list(session.scalars(
        select(Delivery).where(Delivery.channel == config.name, Delivery.state == "pending",
                               Delivery.released_at.is_(None))
        .order_by(Delivery.id).with_for_update(skip_locked=True)))
    held = list(session.scalars(
        select(Delivery).where(Delivery.channel == config.name, Delivery.state == "held")
        .order_by(Delivery.id).with_for_update(skip_locked=True)))
    quiet = in_quiet_hours(config.quiet_hours, now, config.zone)
    digest_mode = config.mode == "digest"
    if digest_mode and state.next_digest_at is None:
        state.next_digest_at = next_digest_time(config.digest, now, config.zone)
    sent = _sent_last_hour(session, config.name, now) if config.rate_limit else 0
    budget = config.rate_limit - sent if config.rate_limit else len(fresh)

    released = 0
    if quiet or digest_mode or held:
        # Alerts already waiting go first; a newer one must not overtake them.
        to_hold = fresh
    else:
        for row in fresh[:max(budget, 0)]:
            _release([row], now)
            released += 1
        to_hold = fresh[max(budget, 0):]
    for row in to_hold:
        row.state = "held"
    held += to_hold

    if held and not quiet:
        due = (now >= state.next_digest_at) if digest_mode else (
            config.rate_limit is None or sent + released < config.rate_limit)
        if due:
            _release(held, now)
            released += len(held)
    if digest_mode and not quiet and now >= state.next_digest_at:
        state.next_digest_at = next_digest_time(config.digest, now, config.zone)
    session.flush()
    return released


# --- claiming and recording ------------------------------------------------------------

def stored_spans(article: Article, watch: str) -> tuple[Span, ...]:
    """The spans stored with the article's match for this watch (none for older rows)."""
    for match in article.matches or ():
        if match.get("watch") == watch:
            return tuple(Span(**span) for span in match.get("spans", ()))
    return ()


def _message(delivery: Delivery, sources: Sequence[str]) -> AlertMessage:
    """`sources` are the story's sources as of now: an alert or digest sent later names the
    copies that arrived since the story's first alert."""
    alert: Alert = delivery.alert
    article: Article = alert.article
    return AlertMessage(
        delivery_id=delivery.id,
        message_id=delivery.message_id,
        channel=delivery.channel,
        watch=alert.watch,
        kind=alert.kind,
        matched=tuple(alert.matched or ()),
        article=ArticleView(id=article.id, title=article.title, link=article.link,
                            summary=article.summary, published=article.published,
                            feed=article.origin, language=article.language),
        created_at=alert.created_at,
        story_id=alert.story_id,
        attempt=delivery.attempts,
        spans=stored_spans(article, alert.watch),
        delivered_to=tuple(delivery.delivered_to or ()),
        other_sources=tuple(s for s in sources if s != article.origin),
    )


def _due(now: datetime):
    return or_(
        and_(Delivery.state.in_(SENDABLE), Delivery.released_at.is_not(None),
             Delivery.next_attempt_at <= now,
             or_(Delivery.lease_until.is_(None), Delivery.lease_until < now)),
        and_(Delivery.state == "delivering", Delivery.lease_until < now),
    )


def claim_messages(session: Session, owner: str, channels: Iterable[str], now: datetime,
                   lease: timedelta, limit: int = 100) -> list[Outgoing]:
    """Lease due messages of running channels: pending or failed and due, or a claim
    whose lease expired (its process died mid-send). A digest is claimed whole or not."""
    stopped = stopped_channels(session)
    names = [c for c in channels if c not in stopped]
    if not names:
        return []
    rows = list(session.scalars(
        select(Delivery).where(_due(now), Delivery.channel.in_(names))
        .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
        .with_for_update(skip_locked=True)))
    batches = {r.batch_id for r in rows if r.batch_id}
    if batches:
        have = {r.id for r in rows}
        rows += [r for r in session.scalars(
            select(Delivery).where(_due(now), Delivery.batch_id.in_(batches))
            .with_for_update(skip_locked=True)) if r.id not in have]
        sizes = dict(session.execute(
            select(Delivery.batch_id, func.count()).where(Delivery.batch_id.in_(batches))
            .group_by(Delivery.batch_id)).all())
        mine: dict[str, int] = {}
        for r in rows:
            if r.batch_id:
                mine[r.batch_id] = mine.get(r.batch_id, 0) + 1
        # Another process holds part of this digest: leave all of it to that process.
        rows = [r for r in rows if not r.batch_id or mine[r.batch_id] == sizes[r.batch_id]]
    for row in rows:
        row.state = "delivering"
        row.lease_owner, row.lease_until = owner, now + lease
        row.attempts += 1
    session.flush()
    if not rows:
        return []
    ids = [r.id for r in rows]
    loaded = {d.id: d for d in session.scalars(
        select(Delivery).where(Delivery.id.in_(ids))
        .options(joinedload(Delivery.alert).joinedload(Alert.article))).unique()}
    sources: dict[int, list[str]] = {}

    def message(delivery: Delivery) -> AlertMessage:
        story_id = delivery.alert.story_id
        if story_id not in sources:
            sources[story_id] = story_sources(session, story_id)
        return _message(delivery, sources[story_id])

    messages: list[Outgoing] = []
    digests: dict[str, list[Delivery]] = {}
    for delivery_id in ids:
        delivery = loaded[delivery_id]
        if delivery.batch_id:
            digests.setdefault(delivery.batch_id, []).append(delivery)
        else:
            messages.append(message(delivery))
    for batch_id, members in digests.items():
        members.sort(key=lambda d: d.id)
        done = set.intersection(*(set(d.delivered_to or ()) for d in members))
        messages.append(Digest(
            message_id=batch_id, channel=members[0].channel,
            alerts=tuple(message(d) for d in members),
            created_at=max(d.released_at for d in members if d.released_at),
            attempt=members[0].attempts, delivered_to=tuple(sorted(done))))
    return messages


def delivery_ids(message: Outgoing) -> list[int]:
    if isinstance(message, Digest):
        return [a.delivery_id for a in message.alerts]
    return [message.delivery_id]


def record_result(session: Session, ids: Sequence[int], owner: str, result: DeliveryResult,
                  now: datetime, policy: RetryPolicy = RetryPolicy()) -> str | None:
    """Apply one attempt's result to the rows of one message; returns the new state, or
    None if the lease was lost (another process took the expired claim over)."""
    rows = [r for r in session.scalars(
        select(Delivery).where(Delivery.id.in_(list(ids))).order_by(Delivery.id)
        .with_for_update()) if r.lease_owner == owner and r.state == "delivering"]
    if not rows:
        return None
    if result.channel_state:
        set_channel_state(session, rows[0].channel, result.channel_state, result.error, now)
    retry_at = None
    if not result.ok and not result.permanent and not result.channel_state:
        since = min(r.released_at or r.created_at for r in rows)
        retry_at = policy.next_attempt(rows[0].attempts, since, now, result.retry_after)
    for row in rows:
        row.lease_owner = row.lease_until = None
        if result.accepted:
            row.delivered_to = sorted({*(row.delivered_to or ()), *result.accepted})
        if result.ok:
            row.state, row.delivered_at, row.last_error = "delivered", now, None
            continue
        row.last_error = result.error
        if result.channel_state:
            # The channel is stopped, not this message: it waits, and the attempt is not
            # counted against its retry schedule.
            row.state, row.next_attempt_at = "failed", now
            row.attempts = max(row.attempts - 1, 0)
        elif result.permanent or retry_at is None:
            row.state = "dead"
        else:
            row.state, row.next_attempt_at = "failed", retry_at
    return rows[0].state


# --- operator actions ------------------------------------------------------------------

def requeue(session: Session, now: datetime, ids: Sequence[int] = (),
            dead: bool = False) -> tuple[int, list[str]]:
    """Queue dead or failed deliveries again with a fresh retry schedule (a digest as a
    whole). Returns how many rows were queued and a problem line per id that was not."""
    problems: list[str] = []
    rows: list[Delivery] = []
    if dead:
        rows += session.scalars(select(Delivery).where(Delivery.state == "dead"))
    for delivery_id in ids:
        row = session.get(Delivery, delivery_id)
        if row is None:
            problems.append(f"delivery {delivery_id}: no such delivery")
        elif row.state not in ("dead", "failed"):
            problems.append(f"delivery {delivery_id}: is {row.state}, only dead or failed "
                            "deliveries are re-queued")
        else:
            rows.append(row)
    batches = {r.batch_id for r in rows if r.batch_id}
    if batches:
        rows += session.scalars(select(Delivery).where(Delivery.batch_id.in_(batches),
                                                       Delivery.state.in_(("dead", "failed"))))
    unique = {r.id: r for r in rows}
    for row in unique.values():
        row.state, row.attempts = "pending", 0
        row.released_at = row.next_attempt_at = now
        row.lease_owner = row.lease_until = None
    return len(unique), problems


def recent_deliveries(session: Session, limit: int = 50, state: str | None = None,
                      channel: str | None = None) -> list[dict[str, Any]]:
    query = (select(Delivery).options(joinedload(Delivery.alert).joinedload(Alert.article))
             .order_by(Delivery.id.desc()).limit(limit))
    if state:
        query = query.where(Delivery.state == state)
    if channel:
        query = query.where(Delivery.channel == channel)

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return [{
        "id": d.id, "alert": d.alert_id, "channel": d.channel, "state": d.state,
        "attempts": d.attempts, "watch": d.alert.watch, "title": d.alert.article.title,
        "link": d.alert.article.link, "message_id": d.batch_id or d.message_id,
        "created": iso(d.created_at), "next_attempt": iso(d.next_attempt_at)
        if d.state in ("failed", "pending") else None,
        "delivered": iso(d.delivered_at), "delivered_to": d.delivered_to or [],
        "last_error": d.last_error,
    } for d in session.scalars(query).unique()]


def state_counts(session: Session) -> dict[str, dict[str, int]]:
    """{channel: {state: n}} over the whole outbox."""
    counts: dict[str, dict[str, int]] = {}
    for channel, state, n in session.execute(
            select(Delivery.channel, Delivery.state, func.count())
            .group_by(Delivery.channel, Delivery.state)):
        counts.setdefault(channel, {})[state] = n
    return counts
