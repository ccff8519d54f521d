"""What every `monitor` subcommand's handler shares: its error lines, how a time flag is read, and JSON-safe figures
(also for the HTTP API, which answers with the same figures)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any


def fail(msg: str) -> int:
    """Print `msg` as `error: ...` lines on stderr; the exit code of a refused command (2)."""
    for line in msg.splitlines() or [msg]:
        print(f"error: {line}", file=sys.stderr)
    return 2


def parse_time(text: str, flag: str) -> float:
    """A time flag as Unix seconds: Unix seconds, or ISO 8601 (a time without a zone is local time)."""
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        # nan compares false with every time, so `--since nan` would silently count nothing.
        if not math.isfinite(number):
            raise ValueError(f"{flag}: not a finite time: {text!r}")
        return number
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{flag}: not Unix seconds or an ISO 8601 time: {text!r}") from None


def finite(value: Any) -> Any:
    """`value` with every non-finite float as None, through dicts and sequences: JSON has no Infinity (a source
    without verdicts to start its window from has an infinite threshold)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [finite(v) for v in value]
    return value
