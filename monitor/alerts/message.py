"""The records that pass between the outbox and the channels."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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


@dataclass(frozen=True)
class DeliveryResult:
    """What a channel reports instead of raising for a transport failure."""

    ok: bool
    error: str | None = None
    permanent: bool = False  # no point retrying (5xx SMTP, 4xx webhook other than 408/429)
    retry_after: float | None = None  # seconds, from a Retry-After header

    @classmethod
    def success(cls) -> DeliveryResult:
        return cls(ok=True)

    @classmethod
    def failure(cls, error: str, *, permanent: bool = False,
                retry_after: float | None = None) -> DeliveryResult:
        return cls(ok=False, error=error, permanent=permanent, retry_after=retry_after)
