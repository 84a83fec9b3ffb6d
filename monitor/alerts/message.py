"""The records that pass between the outbox and the channels."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from monitor.text.match import Span


@dataclass(frozen=True)
class ArticleView:
    id: int
    title: str
    link: str | None
    summary: str
    published: datetime | None
    feed: str
    language: str | None


@dataclass(frozen=True)
class AlertMessage:
    """One alert for one channel: everything a channel needs to render and send it."""

    delivery_id: int
    message_id: str  # stable across retries: webhook-id and email Message-ID
    channel: str
    watch: str
    kind: str  # "new" or "update"
    matched: tuple[str, ...]
    article: ArticleView
    created_at: datetime
    story_id: int
    attempt: int = 1
    other_sources: tuple[str, ...] = field(default_factory=tuple)
    spans: tuple[Span, ...] = ()  # where the matched terms are in the article's fields
    delivered_to: tuple[str, ...] = ()  # email recipients that already accepted it


@dataclass(frozen=True)
class Digest:
    """Several held alerts sent as one message (digest mode, after quiet hours, or what a
    rate limit kept back). Its id is as stable across retries as a single alert's."""

    message_id: str
    channel: str
    alerts: tuple[AlertMessage, ...]
    created_at: datetime
    attempt: int = 1
    delivered_to: tuple[str, ...] = ()


Outgoing = AlertMessage | Digest


@dataclass(frozen=True)
class DeliveryResult:
    """What a channel reports instead of raising for a transport failure."""

    ok: bool
    error: str | None = None
    permanent: bool = False  # no point retrying (5xx SMTP)
    retry_after: float | None = None  # seconds, from a Retry-After header
    # Email recipients that accepted the message in this attempt (all of them when ok).
    accepted: tuple[str, ...] = ()
    # The channel itself must stop until the operator acts: webhook 410 -> "disabled",
    # SMTP 535 -> "paused". The delivery stays queued for when it is resumed.
    channel_state: Literal["disabled", "paused"] | None = None

    @classmethod
    def success(cls, accepted: tuple[str, ...] = ()) -> DeliveryResult:
        return cls(ok=True, accepted=accepted)

    @classmethod
    def failure(cls, error: str, *, permanent: bool = False, retry_after: float | None = None,
                accepted: tuple[str, ...] = (),
                channel_state: Literal["disabled", "paused"] | None = None) -> DeliveryResult:
        return cls(ok=False, error=error, permanent=permanent, retry_after=retry_after,
                   accepted=accepted, channel_state=channel_state)
