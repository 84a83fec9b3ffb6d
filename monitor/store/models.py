"""The database schema as SQLAlchemy 2 typed models. Alembic migrations mirror this file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as UTC on every backend; always read back timezone-aware.

    SQLite has no time zones and returns naive values, so the zone is re-attached on load.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT ids on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Feed(Base):
    """A polled feed and its health; the real schedule lives here, not in APScheduler."""

    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)
    # The URL's host, so a Retry-After can pause every feed of one server at once.
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(String(100))
    body_hash: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="new")  # new ok failing gone
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    # The interval chosen at the last full fetch (feed hints, adaptive), reused after a 304.
    check_interval: Mapped[float | None] = mapped_column(Float)
    last_checked_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    next_check_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Story(Base):
    """One event as told by one or more articles."""

    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    title: Mapped[str] = mapped_column(Text, default="")
    baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Article(Base):
    """An item stored once: per feed by its entry key, across feeds by canonical link."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feeds.id", ondelete="SET NULL"))
    origin: Mapped[str] = mapped_column(String(200))  # feed name, or "seed:<file>"
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"), index=True)
    link: Mapped[str | None] = mapped_column(Text)
    canonical_link: Mapped[str | None] = mapped_column(Text, unique=True)
    fingerprint: Mapped[str] = mapped_column(String(40), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    content: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))
    match_key: Mapped[str] = mapped_column(Text, default="")
    # [{"watch", "terms", "spans": [{"term", "field", "start", "end", "text"}]}]
    matches: Mapped[list[Any]] = mapped_column(default=list)
    baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    published: Mapped[datetime | None]
    fetched: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    story: Mapped[Story] = relationship()
    feed: Mapped[Feed | None] = relationship()


class ArticleBand(Base):
    """One band key of an article's story sketch (`monitor.stories`): the index that finds
    the earlier articles a new one may retell without scanning them all.

    The primary key (baseline, band, article_id) is the lookup index: a new article seeks
    its band keys among the baseline's rows, which never age out, and among the others from
    the recent window on (article ids grow with time). A new article's rows go into this one
    B-tree by band key, at random pages, and the index by article id, at its end.
    """

    __tablename__ = "article_bands"
    # WITHOUT ROWID on SQLite: the rows live in the primary-key B-tree, stored once.
    # ix_article_bands_article_id: deleting an article (retention) cascades here; without
    # it each deleted article scans the whole table.
    __table_args__ = (PrimaryKeyConstraint("baseline", "band", "article_id"),
                      Index("ix_article_bands_article_id", "article_id"),
                      {"sqlite_with_rowid": False})

    band: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), autoincrement=False)
    baseline: Mapped[bool] = mapped_column(Boolean, default=False)


class FeedEntry(Base):
    """That a feed carried an entry (by its GUID/link/hash), and which article it became."""

    __tablename__ = "feed_entries"
    __table_args__ = (UniqueConstraint("feed_id", "entry_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    entry_key: Mapped[str] = mapped_column(String(520))
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"),
                                            index=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    # The last time a parsed document of the feed still carried the entry; retention keeps
    # what a feed still carries so that it is never stored (and alerted) again.
    last_seen: Mapped[datetime | None] = mapped_column(default=utcnow)


class Alert(Base):
    """A watch matched an article: the fact, independent of how many channels are told."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("watch", "article_id", "kind"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    watch: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="new")  # new | update
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"),
                                            index=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id"), index=True)
    matched: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    article: Mapped[Article] = relationship()
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="alert")


class Delivery(Base):
    """The outbox: one row per (alert, channel), claimed with a lease before sending.

    state: pending -> delivering -> delivered | failed (retried) -> dead; `held` waits for
    a digest (digest mode, quiet hours, rate limit). A row is sendable once `released_at`
    is set; rows sharing a `batch_id` are one digest message, sent and recorded together.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("alert_id", "channel"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(200), index=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)  # webhook-id, Message-ID
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]
    batch_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # Email recipients that already accepted it: a retry goes only to the others.
    delivered_to: Mapped[list[Any] | None]

    alert: Mapped[Alert] = relationship(back_populates="deliveries")


class ChannelState(Base):
    """What the daemon learned about a channel at run time and must remember across
    restarts: disabled (webhook 410), paused (SMTP 535), and when its next digest is due."""

    __tablename__ = "channel_states"

    channel: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="active")  # active disabled paused
    reason: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_digest_at: Mapped[datetime | None]
