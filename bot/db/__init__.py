"""Persistence: SQLAlchemy models, Alembic migrations at start-up, and the job store."""
