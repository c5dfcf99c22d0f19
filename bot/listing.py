"""Listings (the member's /queue, /mod bans, the blocklist, the audit log) within one Discord message."""

from __future__ import annotations

MESSAGE_LIMIT = 2000  # characters in a Discord message
LINE_LIMIT = 300  # one entry (a ban's reason, a pattern) never takes the whole message


def fit_lines(lines: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """`lines` joined, as many as fit in `limit` characters, whole; then "… and N more." for those left out."""
    lines = [line if len(line) <= LINE_LIMIT else line[: LINE_LIMIT - 1] + "…" for line in lines]
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    reserve = len(f"\n… and {len(lines)} more.")
    kept: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 + reserve > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join([*kept, f"… and {len(lines) - len(kept)} more."])
