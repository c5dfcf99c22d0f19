"""The row count of an UPDATE or DELETE run through a Session."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.engine import CursorResult, Result


def rowcount(result: Result[Any]) -> int:
    """How many rows the statement matched.

    Session.execute returns a CursorResult for a DML statement, but SQLAlchemy's annotations promise
    only a Result, which has no rowcount: hence the cast.
    """
    return cast(CursorResult[Any], result).rowcount
