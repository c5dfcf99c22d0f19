"""guild content check: each guild may run its results through the image safety classifier (/mod content mode:
off, spoiler or block) and choose whether its age-restricted channels are checked too (age_restricted_channels)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("content_mode", sa.String(16), nullable=True))  # NULL: off, today's behaviour
        batch.add_column(sa.Column("content_age_restricted", sa.String(16), nullable=True))  # NULL: allow


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("content_age_restricted")
        batch.drop_column("content_mode")
