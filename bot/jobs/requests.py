"""The id of a job's request to the worker: one function, so a cancel names what the lane sent.

The attempt is part of it: a retried job is a new request, and a late message of the attempt
that crashed can never be taken for one of the retry.
"""

from __future__ import annotations

from ..db.models import Job


def request_id(job: Job) -> str:
    return f"job-{job.id}-{job.attempts}"
