"""job claims: the bot process that owns a running or delivering job, and until when its lease holds;
on PostgreSQL, a NOTIFY on the zimage_jobs channel whenever a job becomes runnable

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A trigger rather than a NOTIFY in the bot's code: every path that makes a job runnable (the
# admission INSERT, a requeue, an approval, a recovery, /mod resume) notifies, including ones written
# later, and the notification is sent at COMMIT, when another process can see the job.
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION zimage_jobs_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('zimage_jobs', TG_ARGV[0]);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
JOB_TRIGGER = """
CREATE TRIGGER jobs_runnable_notify AFTER INSERT OR UPDATE OF status ON jobs
FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION zimage_jobs_notify('job')
"""
RESUME_TRIGGER = """
CREATE TRIGGER guild_resumed_notify AFTER UPDATE OF paused ON guild_settings
FOR EACH ROW WHEN (NOT NEW.paused) EXECUTE FUNCTION zimage_jobs_notify('resume')
"""


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))  # the owner's instance id
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))  # UTC; renewed by the owner
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(JOB_TRIGGER)
        op.execute(RESUME_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS guild_resumed_notify ON guild_settings")
        op.execute("DROP TRIGGER IF EXISTS jobs_runnable_notify ON jobs")
        op.execute("DROP FUNCTION IF EXISTS zimage_jobs_notify()")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("claimed_by")
