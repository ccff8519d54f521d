"""Rolling-quantile threshold per source, warm-started from the bundle's calibration scores."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable


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
