"""lora library: where an imported LoRA came from

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loras") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=True))  # NULL: trained here; else the format
        batch.add_column(sa.Column("origin", sa.Text(), nullable=True))  # file name or url of an import


def downgrade() -> None:
    with op.batch_alter_table("loras") as batch:
        batch.drop_column("origin")
        batch.drop_column("source")
