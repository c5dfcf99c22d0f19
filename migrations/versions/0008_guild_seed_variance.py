"""guild seed variance: each guild may set the strength of the noise its images' prompt embeddings get per seed
(/mod variety), so Reroll and Variations give visibly different compositions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("seed_variance", sa.Float(), nullable=True))  # NULL: 0, today's images


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("seed_variance")
