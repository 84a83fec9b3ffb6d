"""The persistent outbox: claim due deliveries with a lease, record each result.

A delivery is claimed (state `delivering`, lease owner and expiry) before anything is sent,
so a process killed mid-send leaves a claim that expires and is picked up again, with the
same message id, after restart. Only the owner of a live lease may record a result.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, joinedload

from monitor.alerts.message import AlertMessage, ArticleView, DeliveryResult
from monitor.store.models import Alert, Article, Delivery
from monitor.text.match import Span

# Seconds before attempt n+1; after the last one the delivery is dead-lettered.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000)


@dataclass(frozen=True)
class RetryPolicy:
    schedule: Sequence[float] = DEFAULT_SCHEDULE

    def delay(self, attempts: int, retry_after: float | None = None) -> float | None:
        """Seconds until the next attempt after `attempts` failures, or None when spent.

        Full jitter spreads retries from many alerts; a server's Retry-After is a floor.
        """
        if attempts > len(self.schedule):
            return None
        base = self.schedule[attempts - 1]
        delay = random.uniform(base / 2, base)
        return max(delay, retry_after or 0.0)


def stored_spans(article: Article, watch: str) -> tuple[Span, ...]:
    """The spans stored with the article's match for this watch (none for older rows)."""
    for match in article.matches or ():
        if match.get("watch") == watch:
            return tuple(Span(**span) for span in match.get("spans", ()))
    return ()


def _message(delivery: Delivery) -> AlertMessage:
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
    )


def claim_deliveries(session: Session, owner: str, channels: Iterable[str], now: datetime,
                     lease: timedelta, limit: int = 100) -> list[AlertMessage]:
    """Lease due deliveries for the given channels: pending or failed and due, or a
    `delivering` claim whose lease expired (its process died mid-send)."""
    due = or_(
        and_(Delivery.state.in_(("pending", "failed")), Delivery.next_attempt_at <= now,
             or_(Delivery.lease_until.is_(None), Delivery.lease_until < now)),
        and_(Delivery.state == "delivering", Delivery.lease_until < now),
    )
    query = (
        select(Delivery).where(due, Delivery.channel.in_(list(channels)))
        .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = list(session.scalars(query))
    for delivery in claimed:
        delivery.state = "delivering"
        delivery.lease_owner, delivery.lease_until = owner, now + lease
        delivery.attempts += 1
    session.flush()
    if not claimed:
        return []
    ids = [d.id for d in claimed]
    loaded = session.scalars(
        select(Delivery).where(Delivery.id.in_(ids))
        .options(joinedload(Delivery.alert).joinedload(Alert.article))).unique()
    return sorted((_message(d) for d in loaded), key=lambda m: ids.index(m.delivery_id))


def record_result(session: Session, delivery_id: int, owner: str, result: DeliveryResult,
                  now: datetime, policy: RetryPolicy = RetryPolicy()) -> str | None:
    """Apply one attempt's result; returns the new state, or None if the lease was lost."""
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.lease_owner != owner or delivery.state != "delivering":
        return None  # another process took the expired claim over; its result counts
    delivery.lease_owner = delivery.lease_until = None
    if result.ok:
        delivery.state, delivery.delivered_at, delivery.last_error = "delivered", now, None
        return delivery.state
    delivery.last_error = result.error
    delay = None if result.permanent else policy.delay(delivery.attempts, result.retry_after)
    if delay is None:
        delivery.state = "dead"
    else:
        delivery.state = "failed"
        delivery.next_attempt_at = now + timedelta(seconds=delay)
    return delivery.state
