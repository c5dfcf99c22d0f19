"""lora import limits: each guild may override the per-member quota of imported LoRAs (count and MiB)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("lora_import_max_count", sa.Integer(), nullable=True))  # NULL: LORA_IMPORT_MAX_COUNT
        batch.add_column(sa.Column("lora_import_max_mb", sa.Integer(), nullable=True))  # NULL: LORA_IMPORT_MAX_MB


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("lora_import_max_mb")
        batch.drop_column("lora_import_max_count")
