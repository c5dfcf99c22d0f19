"""Database tables. Every job is a row, so nothing is lost when the bot or worker restarts."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # a /train job waiting for a moderator's Approve
    QUEUED = "queued"          # waiting for the worker
    RUNNING = "running"        # on the worker now
    DELIVERING = "delivering"  # images saved to disk, not yet posted to Discord
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def active(cls) -> tuple[JobStatus, ...]:
        return (cls.AWAITING_APPROVAL, cls.QUEUED, cls.RUNNING, cls.DELIVERING)

    @classmethod
    def cancellable(cls) -> tuple[JobStatus, ...]:
        return (cls.AWAITING_APPROVAL, cls.QUEUED, cls.RUNNING)


class JobKind(enum.StrEnum):
    IMAGINE = "imagine"
    TRAIN = "train"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.IMAGINE)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Interaction tokens expire after 15 minutes; after that we deliver through the channel.
    interaction_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    token_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # A RUNNING or DELIVERING job belongs to one bot process (its instance id) while its lease holds;
    # the owner renews the lease, and another process recovers the job once it lapses (bot/db/leases.py).
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BotState(Base):
    """Small key/value facts the bot remembers, e.g. the hash of the last synced command set."""

    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class GuildSettings(Base):
    """Per-guild moderation settings; a missing row or a NULL limit means the global default."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    mod_role_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mod_channel_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    approve_training: Mapped[bool] = mapped_column(Boolean, default=False)
    max_queued_per_user: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trainings_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lora_import_max_count: Mapped[int | None] = mapped_column(Integer, nullable=True)  # imported LoRAs per member
    lora_import_max_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)  # their MiB per member
    # Age-restricted content: blocklisted prompts pass in age-restricted channels when this is on.
    allow_blocklisted_in_nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    spoiler_images: Mapped[bool] = mapped_column(Boolean, default=False)
    # /mod variety: noise on the prompt embedding per seed (gpu/seed_variance.py), 0..1; NULL: 0 (none)
    seed_variance: Mapped[float | None] = mapped_column(Float, nullable=True)
    # /mod content mode and age_restricted_channels (bot/safety/policy.py): the image safety check.
    # NULL: off (no check, today's behaviour) and allow (age-restricted channels are not checked).
    content_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    content_age_restricted: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Ban(Base):
    __tablename__ = "bans"
    __table_args__ = (UniqueConstraint("guild_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    moderator_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BlockedPattern(Base):
    __tablename__ = "blocklist"
    __table_args__ = (UniqueConstraint("guild_id", "pattern"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    pattern: Mapped[str] = mapped_column(String(200))
    added_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditEntry(Base):
    """Every moderator action: who, what, to whom, when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    moderator_id: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Lora(Base):
    """A LoRA usable in /imagine: trained here (each checkpoint updates `path`) or imported."""

    __tablename__ = "loras"
    __table_args__ = (UniqueConstraint("guild_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    owner_id: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(32))
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # None until the first checkpoint
    rank: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    source: Mapped[str | None] = mapped_column(String(16), nullable=True)  # None: trained here; else the import format
    origin: Mapped[str | None] = mapped_column(Text, nullable=True)  # the file name or url it was imported from


class LoraSelection(Base):
    """What /lora use picked: the adapters a member's /imagine applies in a guild."""

    __tablename__ = "lora_selections"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    lora_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scale: Mapped[float] = mapped_column(Float, default=0.8)


class MemberSettings(Base):
    """A member's /settings: their /imagine defaults and whether results reach them alone. One row per member, used in
    every server and in DMs (a server's /mod limits still cap what it allows). NULL: the bot's default."""

    __tablename__ = "member_settings"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    aspect: Mapped[str | None] = mapped_column(String(8), nullable=True)
    steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)  # results as ephemeral messages or DMs
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
