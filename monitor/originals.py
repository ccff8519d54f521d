"""Kept originals: full-resolution copies of the inputs the review page shows and retraining reads.

The policy (`originals:` in the config, `output.originals` the folder):

- The input of every anomaly is kept (`anomalies: true`), and a random sample of normal inputs at
  `normal_rate` (a source's `keep_normal_rate` wins): retraining then has the parts the line really makes,
  and the false alarms an operator labels, at the resolution the camera gave, not the evidence's thumbnails.
- A folder file is kept byte for byte as it was read and scored (its format, bit depth and metadata); a
  camera frame as a lossless PNG of what the model scored: with an `roi`, the crop at the camera's resolution
  (retraining learns the crop the model sees; where it sits on the frame, the evidence shows).
- `<folder>/<source>/<YYYY-MM-DD>/<verdict id><ext>`: the verdict's journal line names it (`original`), so
  the page serves it by verdict id and never by a path from a request.
- Written before the verdict's journal line, atomically but without an fsync: a crash may lose the copies of
  the last seconds (their verdicts are durable); the kept copy is never a partial file. A refused write
  (disk full) costs the copy, never the verdict (monitor.outputs, output `originals`).
- Retention once a minute on its own thread (monitor.retention): older than `max_age_days`, then the oldest
  beyond `max_bytes`. A reload applies new rates and limits.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from pathlib import Path

import cv2

from monitor import metrics
from monitor.config import Config, OriginalsConfig
from monitor.files import atomic_write, safe_name
from monitor.outputs import OutputGuard
from monitor.records import Frame
from monitor.retention import prune_tree
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 60.0
_DAY_S = 86_400
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


class OriginalStore:
    """Keeps the inputs the config asks for, and holds `output.originals` within its limits."""

    def __init__(self, folder: Path, config: Config, outputs: OutputGuard, rng: random.Random | None = None) -> None:
        self.folder = Path(folder)
        self.outputs = outputs
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # the rng and the policy: the scorer reads, a reload writes
        self.configure(config)
        self.interval_s = RETENTION_INTERVAL_S
        self.thread = StoppableThread("originals-retention", self._run)

    def configure(self, config: Config) -> None:
        """Take the rates and limits of `config` (at start and on every reload)."""
        with self._lock:
            self.policy: OriginalsConfig = config.originals
            self._rates = {s.name: (s.keep_normal_rate if s.keep_normal_rate is not None
                                    else config.originals.normal_rate) for s in config.sources}

    def wants(self, source: str, anomaly: bool) -> bool:
        """Whether the input of this verdict is to be kept (a normal one by a random draw at its rate)."""
        with self._lock:
            if anomaly:
                return self.policy.anomalies
            rate = self._rates.get(source, self.policy.normal_rate)
            return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def keep(self, frame: Frame, verdict_id: str, anomaly: bool) -> Path | None:
        """Write the copy of `frame`'s input when the policy wants it; its path, or None (not kept, or refused)."""
        if not self.wants(frame.source, anomaly):
            return None
        try:
            data, suffix = self._content(frame)
            day = time.strftime("%Y-%m-%d", time.localtime(frame.frame_time))
            path = self.folder / safe_name(frame.source) / day / f"{verdict_id}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write(path, data)
            except FileNotFoundError:
                # Retention's thread removes empty folders: one it took between the mkdir and the write (a
                # new day's or source's folder) is made again, once.
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, data)
        except OSError as exc:
            self.outputs.failed("originals", exc, "no_original")
            return None
        except Exception as exc:  # noqa: BLE001 - a frame that cannot be encoded costs its copy, not its verdict
            metrics.ERRORS.labels("originals").inc()
            log.error("original_failed source=%s path=%s error=%s", frame.source, frame.path, exc)
            return None
        self.outputs.succeeded("originals")
        metrics.ORIGINALS_KEPT.labels(frame.source, "anomaly" if anomaly else "normal").inc()
        return path

    @staticmethod
    def _content(frame: Frame) -> tuple[bytes, str]:
        if frame.data is not None:
            suffix = frame.path.suffix.lower() if frame.path is not None else ""
            return frame.data, suffix if _SUFFIX.fullmatch(suffix) else ".img"
        image = frame.image
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"could not encode a {image.shape} {image.dtype} frame as PNG")
        return buf.tobytes(), ".png"

    # --- retention ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop()

    def join(self, timeout: float) -> bool:
        return self.thread.join(timeout)

    def prune(self) -> tuple[int, int]:
        """One retention pass; (removed for age, removed for bytes)."""
        with self._lock:
            policy = self.policy
        if not self.folder.is_dir():
            return 0, 0
        max_age_s = policy.max_age_days * _DAY_S if policy.max_age_days else None
        pruned = prune_tree(self.folder, max_age_s, policy.max_bytes)
        for reason, count in (("age", pruned.removed_age), ("bytes", pruned.removed_bytes)):
            if count:
                metrics.ORIGINALS_REMOVED.labels(reason).inc(count)
        metrics.ORIGINALS_BYTES.set(pruned.total_bytes)
        if pruned.removed_age or pruned.removed_bytes:
            log.info("originals_pruned removed_age=%d removed_bytes=%d files=%d bytes=%d", pruned.removed_age,
                     pruned.removed_bytes, pruned.files, pruned.total_bytes)
        return pruned.removed_age, pruned.removed_bytes

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.prune()
            except Exception:  # noqa: BLE001 - the next pass tries again
                metrics.ERRORS.labels("originals").inc()
                log.exception("originals_prune_failed folder=%s", self.folder)
            stop.wait(self.interval_s)
