"""member settings: each member's /imagine defaults (aspect, steps, count) and private results (/settings)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_settings",
        sa.Column("user_id", sa.BigInteger(), primary_key=True, autoincrement=False),  # a Discord id, not a sequence
        sa.Column("aspect", sa.String(8), nullable=True),  # NULL: the bot's default
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("member_settings")
