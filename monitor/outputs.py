"""What the daemon does when the OS refuses a write to one of its outputs (disk full, I/O error, quota).

One outcome per kind of output, the same for every error:

- **journal, quarantine** (work that must not be lost): the thread that writes holds its work and retries with
  a backoff (0.5 s doubling to 10 s) until the write succeeds. The scorer holding a batch collects no new
  frames, so the bounded queue fills and folder sources wait (nothing is dropped; cameras drop frames as they
  do whenever the queue is full); a folder source holding a file to quarantine reads nothing else meanwhile.
  On stop, the held work is given up unacknowledged (`OutputStopped`): a folder file is scored again at the
  next start, since its version is not in the ledger.
- **evidence, originals** (the verdict matters more than its picture or its kept input): the verdict goes on
  without an evidence image, or without a kept copy of its input.
- **ledger, outbox**: handled where they are written (a ledger is a cache of the journal; an outbox write that
  fails is logged by the alert worker).

Either way the episode is visible: `anomaly_monitor_output_blocked{output}` is 1 from the first refused write
to the next successful one, `anomaly_monitor_output_errors_total{output,errno}` counts every refusal, the log
says `output_blocked` once per episode and `output_recovered` with its length, and systemd's STATUS= line says
which outputs are blocked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from monitor import metrics, systemd
from monitor.files import describe, errno_name

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bounded label values of the output metrics; the guard reports the first three, the ledger and the outbox
# count their refused writes where they are written.
OUTPUTS = ("journal", "quarantine", "evidence", "originals", "ledger", "outbox")
GUARDED = OUTPUTS[:4]

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


class OutputStopped(Exception):
    """The daemon is stopping while an output refuses writes: the held work is given up, unacknowledged."""

    def __init__(self, output: str) -> None:
        super().__init__(f"stopped while output {output} was blocked")
        self.output = output


@dataclass
class Episode:
    """One stretch of refused writes to an output: from its first refusal to the next success."""

    since: float  # monotonic time of the first refusal
    error: str  # the first refusal, as `describe` writes it
    action: str  # what the daemon does meanwhile: hold_and_retry, no_evidence


def count_error(output: str, exc: BaseException) -> None:
    """Count one refused write (for outputs that handle their errors where they are written)."""
    metrics.OUTPUT_ERRORS.labels(output, errno_name(exc)).inc()


class OutputGuard:
    """Retries refused writes with a bounded backoff, and reports blocked outputs (metric, log, systemd)."""

    def __init__(self, first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                 ok_status: str = "running") -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.ok_status = ok_status  # systemd's STATUS= once no output is blocked
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._episodes: dict[str, Episode] = {}
        self._retrying: Counter[str] = Counter()  # threads inside a retry loop, per output
        for output in GUARDED:  # the series exist from the start: a dashboard sees 0, not "no data"
            metrics.OUTPUT_BLOCKED.labels(output).set(0)

    # --- state ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Give up held work: retry loops end at their next refusal (waits end at once)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def blocked(self) -> list[str]:
        """The outputs whose last write was refused."""
        with self._lock:
            return sorted(self._episodes)

    def retrying(self) -> bool:
        """True while some thread waits to retry a held write: busy on purpose, not hung."""
        with self._lock:
            return any(self._retrying.values())

    # --- reports ------------------------------------------------------------------------------------
    def failed(self, output: str, exc: BaseException, action: str) -> None:
        """A write to `output` was refused: count it; the first refusal of an episode is logged and shown."""
        count_error(output, exc)
        with self._lock:
            if output in self._episodes:
                return
            episode = self._episodes[output] = Episode(time.monotonic(), describe(exc), action)
            status = self._status()
        metrics.OUTPUT_BLOCKED.labels(output).set(1)
        log.error("output_blocked output=%s error=%s action=%s", output, episode.error, action)
        systemd.status(status)

    def succeeded(self, output: str) -> None:
        """A write to `output` went through: end its episode, if it had one."""
        if output not in self._episodes:  # the common case, without the lock: a dict lookup is atomic
            return
        with self._lock:
            episode = self._episodes.pop(output, None)
            status = self._status()
        if episode is None:
            return
        metrics.OUTPUT_BLOCKED.labels(output).set(0)
        log.warning("output_recovered output=%s blocked_s=%.1f error=%s", output,
                    time.monotonic() - episode.since, episode.error)
        systemd.status(status)

    def _status(self) -> str:
        if not self._episodes:
            return self.ok_status
        parts = ", ".join(f"{name} ({ep.error.split(':')[0]})" for name, ep in sorted(self._episodes.items()))
        return f"output blocked: {parts}; holding work and retrying"

    # --- the retry loop -------------------------------------------------------------------------------
    def write(self, output: str, action: Callable[[], T]) -> T:
        """`action()`, retried while it raises OSError; its result once it succeeds.

        Between tries it waits first_delay_s, doubling up to max_delay_s. `action` must leave nothing behind
        when it fails (the stores' writes are all-or-nothing), so a retry writes everything exactly once.
        Raises OutputStopped when it fails after `stop()`: the caller gives up what it holds.
        """
        delay = self.first_delay_s
        while True:
            try:
                result = action()
            except OSError as exc:
                self.failed(output, exc, "hold_and_retry")
                if self._stop.is_set():
                    raise OutputStopped(output) from exc
                with self._lock:
                    self._retrying[output] += 1
                try:
                    self._stop.wait(delay)
                finally:
                    with self._lock:
                        self._retrying[output] -= 1
                delay = min(delay * 2, self.max_delay_s)
                continue
            self.succeeded(output)
            return result
