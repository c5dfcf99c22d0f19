"""moderation: guild settings, bans, blocklist, audit log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("mod_role_id", sa.BigInteger(), nullable=True),
        sa.Column("mod_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("approve_training", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_queued_per_user", sa.Integer(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("trainings_per_day", sa.Integer(), nullable=True),
        sa.Column("max_count", sa.Integer(), nullable=True),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("allow_blocklisted_in_nsfw", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("spoiler_images", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "bans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("moderator_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("guild_id", "user_id"),
    )
    op.create_table(
        "blocklist",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("pattern", sa.String(200), nullable=False),
        sa.Column("added_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("guild_id", "pattern"),
    )
    op.create_index("ix_blocklist_guild_id", "blocklist", ["guild_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("moderator_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_audit_log_guild_id", "audit_log", ["guild_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_guild_id", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_blocklist_guild_id", "blocklist")
    op.drop_table("blocklist")
    op.drop_table("bans")
    op.drop_table("guild_settings")
