"""The one kind of error a user is shown as it is.

Commands, services and checks raise ``UserFacingError`` (or a subclass) for anything the member can fix;
bot/reporting.py turns it into their reply. What a job's failure says (worker error codes, a
crashed worker) is written in bot/jobs/outcomes.py.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """A problem the user can fix; the message is shown to them as-is (ephemeral)."""
