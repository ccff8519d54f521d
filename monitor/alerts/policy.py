"""Cooldown and digest rules of one sink: what goes out now, what is held back, what goes out together.

Cooldown: after an anomaly alert of a source, the sink sends no other anomaly alert of that source for
`cooldown_s`. The anomalies held back meanwhile are counted and summed up (count, first and last time, max
score); the next alert of that source carries the summary, or, when none follows, the summary goes out as
its own alert once the cooldown ends. Either way a new cooldown starts, so nothing is only counted.

Digest: when `digest_after` or more anomaly alerts of one source wait for the sink (a burst, or a sink
that was down), they go out as one message, at most MAX_DIGEST of them, never overtaking a camera or
daemon event of the same source. Events are never held back or merged.

Pure: no threads, no I/O, no clock of its own. Callers pass `now` (monotonic seconds) and hold whatever
lock guards the policy object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monitor.alerts.events import Alert

MAX_DIGEST = 500  # anomalies listed in one digest at most; the rest go in the next one


@dataclass
class Held:
    """Anomalies of one source held back since the last alert of that source went out."""

    window_start: float  # monotonic time of the last alert that went out
    count: int = 0
    first: float = 0.0  # wall-clock times of the verdicts, as shown to people
    last: float = 0.0
    max_score: float = 0.0

    def add(self, scored_at: float, score: float) -> None:
        """Count one more held anomaly."""
        if not self.count:
            self.first = scored_at
        self.count += 1
        self.last = scored_at
        self.max_score = max(self.max_score, score)

    def summary(self) -> dict | None:
        """{count, first, last, max_score}, the `suppressed` field of an alert; None when nothing was held."""
        if not self.count:
            return None
        return {"count": self.count, "first": self.first, "last": self.last, "max_score": self.max_score}


@dataclass(frozen=True)
class Decision:
    """What to do with one anomaly: send it now (with what was held before it), or hold it."""

    send: bool
    suppressed: dict | None = None  # for an alert that goes out: the summary of what was held before
    held: int = 0  # for a held anomaly: how many of its source are held now, this one included


class AlertPolicy:
    """The cooldown state of one sink, per source, and its digest rule."""

    def __init__(self, cooldown_s: float, digest_after: int, max_digest: int = MAX_DIGEST) -> None:
        self.cooldown_s = cooldown_s
        self.digest_after = digest_after
        self.max_digest = max_digest
        self._held: dict[str, Held] = {}  # a source appears once its first alert went out

    def on_anomaly(self, source: str, scored_at: float, score: float, now: float) -> Decision:
        """Send this anomaly now, or hold it because its source's cooldown runs."""
        held = self._held.get(source)
        if self.cooldown_s > 0 and held is not None and now < held.window_start + self.cooldown_s:
            held.add(scored_at, score)
            return Decision(send=False, held=held.count)
        self._held[source] = Held(window_start=now)
        return Decision(send=True, suppressed=held.summary() if held is not None else None)

    def next_digest_at(self) -> float | None:
        """When the earliest cooldown that holds anomalies ends (monotonic); None when nothing is held."""
        due = [h.window_start + self.cooldown_s for h in self._held.values() if h.count]
        return min(due) if due else None

    def due_digests(self, now: float, everything: bool = False) -> list[tuple[str, dict]]:
        """(source, summary) of each source whose cooldown ended with anomalies held; starts its next cooldown.

        `everything` (the dispatcher is stopping) takes what is held whether or not its cooldown ended.
        """
        due = []
        for source, held in self._held.items():
            if held.count and (everything or now >= held.window_start + self.cooldown_s):
                due.append((source, held.summary()))
        for source, _ in due:
            self._held[source] = Held(window_start=now)
        return due

    def take(self, pending: Sequence[Alert]) -> list[Alert]:
        """The alerts to send as one message: the oldest alone, or merged with its burst as a digest.

        `pending` is oldest first. Anomaly alerts of the head's source join it until an event of that
        source (which must not be overtaken) or `max_digest`; fewer than `digest_after` go out one by one.
        """
        head = pending[0]
        if head.kind != "anomaly" or self.digest_after <= 0:
            return [head]
        batch = [head]
        for alert in pending[1:]:
            if alert.source != head.source:
                continue
            if alert.kind != "anomaly" or len(batch) >= self.max_digest:
                break
            batch.append(alert)
        return batch if len(batch) >= self.digest_after else [head]
