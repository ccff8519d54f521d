"""Rolling-quantile threshold per source, warm-started from the bundle's calibration scores, and the state
file that carries each source's window across restarts and reloads."""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor import metrics
from monitor.files import atomic_write, describe, errno_name

log = logging.getLogger(__name__)


class RollingQuantile:
    """Quantile of the last `window` values, updated in O(log n) search + one memmove per value.

    Values are kept twice: in arrival order (to know which one leaves the window) and sorted (to read a
    quantile without sorting). At a window of 100,000 an update costs microseconds, not a sort.
    """

    def __init__(self, window: int, quantile: float, initial: Iterable[float] = ()) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 0.0 < quantile < 1.0:
            raise ValueError("quantile must be between 0 and 1")
        self.window = window
        self.quantile = quantile
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        for value in initial:
            self.add(value)

    def __len__(self) -> int:
        return len(self._order)

    def add(self, value: float) -> None:
        """Add a value; the oldest leaves once the window is full."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"not a finite score: {value}")
        if len(self._order) == self.window:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def values(self) -> list[float]:
        """The window's values, oldest first."""
        return list(self._order)

    def value(self) -> float:
        """The quantile with linear interpolation (numpy's default method); nan when empty."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        pos = self.quantile * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return self._sorted[lo] + (self._sorted[hi] - self._sorted[lo]) * (pos - lo)


class Threshold:
    """Judges scores of one source: fixed, or margin x rolling quantile of its recent normal scores."""

    def __init__(
        self,
        *,
        fixed: float | None = None,
        quantile: float = 0.999,
        window: int = 2000,
        margin: float = 1.0,
        calibration: Iterable[float] = (),
        learn_from_anomalies: bool = False,
    ) -> None:
        self.fixed = fixed
        self.margin = margin
        self.learn_from_anomalies = learn_from_anomalies
        self._rolling = None
        if fixed is None:
            # The newest calibration scores fill the window, so the very first image is judged.
            calibration = list(calibration)[-window:]
            if not calibration:
                raise ValueError("a rolling threshold needs calibration scores to start from")
            self._rolling = RollingQuantile(window, quantile, calibration)

    @property
    def value(self) -> float:
        if self.fixed is not None:
            return self.fixed
        return self.margin * self._rolling.value()

    def judge(self, score: float) -> tuple[bool, float]:
        """Return (anomaly, threshold used) and let the score into the window when it is normal."""
        threshold = self.value
        anomaly = bool(score > threshold)
        if self._rolling is not None and (not anomaly or self.learn_from_anomalies) and math.isfinite(score):
            self._rolling.add(score)
        return anomaly, threshold

    @property
    def rolling(self) -> bool:
        """True for a rolling quantile, False for a fixed threshold."""
        return self._rolling is not None

    def window_values(self) -> list[float]:
        """The rolling window, oldest first ([] for a fixed threshold)."""
        return self._rolling.values() if self._rolling is not None else []

    def restore(self, values: Iterable[float]) -> bool:
        """Replace the window with saved values (the newest `window` of them); False when there is nothing
        to restore into (fixed) or from (no values), and the window is then left as it was."""
        values = [v for v in values if math.isfinite(v)]
        if self._rolling is None or not values:
            return False
        rolling = self._rolling
        self._rolling = RollingQuantile(rolling.window, rolling.quantile, values[-rolling.window:])
        return True


# --- the state file: each source's window, kept across restarts -----------------------------------

STATE_FORMAT = "anomaly-monitor-thresholds"
STATE_VERSION = 1
CORRUPT_SUFFIX = ".corrupt"


@dataclass(frozen=True)
class SavedWindow:
    """A source's rolling window as saved, with the identity of the model whose scores it holds."""

    model_id: str
    values: list[float]


class ThresholdState:
    """`thresholds.json` in the state folder: {source: {model_id, values}}, written atomically.

    The window is a cache of the journal's scores, so nothing in it may stop a start: a file that is not
    valid JSON of the expected shape is set aside as `thresholds.json.corrupt-<ns>` (counted, logged with the
    reason) and the sources start from their bundles' calibration; a bad entry of one source is dropped alone.
    """

    FILE = "thresholds.json"

    def __init__(self, folder: Path, min_interval_s: float = 5.0) -> None:
        self.path = Path(folder) / self.FILE
        self.min_interval_s = min_interval_s
        self._last_save = -math.inf
        self._failing = False

    def load(self) -> dict[str, SavedWindow]:
        """The saved windows by source; {} when there is no file or it cannot be used."""
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            self._set_aside(f"unreadable: {describe(exc) if isinstance(exc, OSError) else 'not UTF-8'}")
            return {}
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._set_aside(f"not JSON: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return {}
        if (not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION
                or not isinstance(data.get("sources"), dict)):
            self._set_aside(f"not a {STATE_FORMAT} version {STATE_VERSION} object")
            return {}
        windows: dict[str, SavedWindow] = {}
        for source, entry in data["sources"].items():
            window = _parse_entry(entry)
            if window is None:
                metrics.STATE_RECORDS_REJECTED.labels("thresholds").inc()
                log.warning("threshold_state_entry_rejected path=%s source=%r reason=%s", self.path, source,
                            "not {model_id: str, values: [finite numbers]}")
                continue
            windows[str(source)] = window
        return windows

    def save(self, windows: Mapping[str, SavedWindow], force: bool = False) -> bool:
        """Write the windows (at most every `min_interval_s` unless `force`); False when skipped or refused.

        A refused write (disk full) is logged once per episode and counted; the next save tries again.
        """
        now = time.monotonic()
        if not force and now - self._last_save < self.min_interval_s:
            return False
        self._last_save = now
        data = {"format": STATE_FORMAT, "version": STATE_VERSION, "saved_at": time.time(),
                "sources": {name: {"model_id": w.model_id, "values": w.values} for name, w in windows.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode(), durable=force)
        except OSError as exc:
            metrics.OUTPUT_ERRORS.labels("state", errno_name(exc)).inc()
            if not self._failing:
                log.warning("threshold_state_save_failed path=%s error=%s", self.path, describe(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("threshold_state_save_recovered path=%s", self.path)
        self._failing = False
        return True

    def _set_aside(self, reason: str) -> None:
        metrics.STATE_FILES_UNREADABLE.labels("thresholds").inc()
        aside = self.path.with_name(f"{self.path.name}{CORRUPT_SUFFIX}-{time.time_ns()}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.warning("threshold_state_set_aside_failed path=%s error=%s", self.path, describe(exc))
            aside = None
        log.warning("threshold_state_unusable path=%s reason=%s set_aside=%s action=start_from_calibration",
                    self.path, reason, aside or "no")


def _parse_entry(entry: object) -> SavedWindow | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("model_id"), str):
        return None
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return SavedWindow(entry["model_id"], [float(v) for v in values])
