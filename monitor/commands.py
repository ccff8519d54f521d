"""What every `monitor` subcommand's handler shares: its error lines, and how a time flag is read."""

from __future__ import annotations

import sys
from datetime import datetime


def fail(msg: str) -> int:
    """Print `msg` as `error: ...` lines on stderr; the exit code of a refused command (2)."""
    for line in msg.splitlines() or [msg]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def parse_time(text: str, flag: str) -> float:
    """A time flag as Unix seconds: Unix seconds, or ISO 8601 (a time without a zone is local time)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{flag}: not Unix seconds or an ISO 8601 time: {text!r}") from None
