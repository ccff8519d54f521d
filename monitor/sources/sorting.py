"""After scoring: a folder source's scored files are kept, sorted into ok/ng by verdict, or deleted.

The policy (`after_scoring` of a folder source):

- `keep` (the default): the file stays where it is and the ledger remembers it; no Sorter is made.
- `move`: once its verdict is durable in the journal, the file goes to
  `<sorted>/ok|ng/YYYY-MM-DD/<its path in the watched folder>` (the local date of the verdict; a name taken
  there gets `_2`, `_3`...). `delete`: it is removed.
- A file whose size or mtime changed since it was scored is a new version: left alone and scored anew.
- A move or deletion the OS refuses (disk full, permissions) leaves the file in place, never lost: counted,
  logged once per episode, and recorded in the ledger with its verdict, so it is not scored again and the
  move is tried again once a minute and at the next start (as is a move a crash interrupted: the journal's
  tail gives the ledger the verdicts of the last batch, FolderSource.reconcile).
- Retention of `<sorted>`, checked at most once a minute: files older than `sorted_max_age_days` (by mtime,
  which a move keeps: the writer's time) go, then the oldest while the total exceeds `sorted_max_bytes`.

The work runs on the sorter's own thread: a rename and its folder fsync per file must not slow the scorer,
and a retention walk must not delay reading the next file.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from monitor import metrics
from monitor.config import FolderSourceConfig
from monitor.files import describe, errno_name, move_file
from monitor.records import FileKey
from monitor.retention import prune_tree
from monitor.sources.ledger import Ledger
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 60.0  # also how often refused moves are tried again
_DAY_S = 86_400
# What `finish` did with one file; the source's `on_done` hears it.
MOVED, DELETED, CHANGED, GONE, FAILED = "moved", "deleted", "changed", "gone", "failed"


class Done(NamedTuple):
    """A scored file whose verdict is durable: where it is, the version scored, its verdict and when."""

    path: Path
    key: FileKey
    anomaly: bool
    at: float  # wall clock of the verdict: picks the day folder


class Sorter:
    """Moves or deletes one folder source's scored files and keeps its sorted folder within its limits."""

    def __init__(self, config: FolderSourceConfig, sorted_root: Path, ledger: Ledger,
                 on_done: Callable[[Done, str], None]) -> None:
        self.name = config.name
        self.mode = config.after_scoring
        self.folder = Path(config.folder)
        self.root = Path(sorted_root)
        self.max_age_s = config.sorted_max_age_days * _DAY_S if config.sorted_max_age_days else None
        self.max_bytes = config.sorted_max_bytes
        self.ledger = ledger
        self.on_done = on_done  # the source forgets the file (or offers a changed one again)
        self.interval_s = RETENTION_INTERVAL_S
        self._todo: deque[Done] = deque()
        self._wake = threading.Event()
        self._next_tick = 0.0  # the first tick retries what the ledger says is due (a crash, a refused move)
        self._failing = False
        self.thread = StoppableThread(f"sort-{self.name}", self._run)

    def put(self, done: Done) -> None:
        """Hand over a file whose verdict is durable; returns at once."""
        self._todo.append(done)
        self._wake.set()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop()
        self._wake.set()

    def close(self) -> None:
        """Finish what is still handed over (the source's last frames, acknowledged after its thread ended)."""
        self._drain()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._drain()
            if time.monotonic() >= self._next_tick:  # the first tick at once: what the last run left is due
                self._next_tick = time.monotonic() + self.interval_s
                try:
                    self.retry_due()
                    if self.mode == "move":
                        self.prune()
                except Exception:  # noqa: BLE001 - the next tick tries again; the sorter lives on
                    metrics.ERRORS.labels("sort").inc()
                    log.exception("sorted_tick_failed source=%s", self.name)
            self._wake.wait(1.0)
            self._wake.clear()

    def _drain(self) -> None:
        while True:
            try:
                done = self._todo.popleft()
            except IndexError:
                return
            self.finish(done)

    def retry_due(self) -> int:
        """Try again the files the ledger holds with a verdict; how many left the folder."""
        left = 0
        for key, anomaly in self.ledger.due().items():
            left += self.finish(Done(self.folder / key.name, key, anomaly, time.time()), retry=True) in (MOVED,
                                                                                                        DELETED)
        return left

    # --- one file ---------------------------------------------------------------------------------
    def finish(self, done: Done, retry: bool = False) -> str:
        """Move or delete one scored file; what happened (MOVED, DELETED, CHANGED, GONE or FAILED)."""
        try:
            outcome = self._finish(done)
        except OSError as exc:
            outcome = FAILED
            metrics.FILES_AFTER_SCORING_FAILED.labels(self.name, errno_name(exc)).inc()
            # The verdict goes with the ledger line: not scored again, moved when the disk takes it.
            if self.ledger.outcome(done.key) is None:
                self.ledger.add(done.key, done.anomaly)
            if not self._failing:
                self._failing = True
                log.error("after_scoring_failed source=%s path=%s action=%s error=%s kept=in_place", self.name,
                          done.path, self.mode, describe(exc))
        else:
            if outcome in (MOVED, DELETED):
                metrics.FILES_AFTER_SCORING.labels(
                    self.name, "deleted" if outcome == DELETED else "ng" if done.anomaly else "ok").inc()
                if self._failing:
                    self._failing = False
                    log.warning("after_scoring_recovered source=%s action=%s", self.name, self.mode)
            self.ledger.discard(done.key)  # moved, deleted, gone, or replaced by a new version: nothing to redo
        if retry and outcome not in (MOVED, DELETED, FAILED):
            log.info("after_scoring_dropped source=%s path=%s reason=%s", self.name, done.path, outcome)
        self.on_done(done, outcome)
        return outcome

    def _finish(self, done: Done) -> str:
        try:
            st = os.lstat(done.path)
        except (FileNotFoundError, NotADirectoryError):
            return GONE
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (done.key.size, done.key.mtime_ns):
            return CHANGED  # overwritten since it was scored: the new version is scored, not sorted as the old
        if self.mode == "delete":
            done.path.unlink()
            return DELETED
        target = self._target(done)
        target.parent.mkdir(parents=True, exist_ok=True)
        move_file(done.path, target)
        log.debug("file_sorted source=%s path=%s to=%s", self.name, done.path, target)
        return MOVED

    def _target(self, done: Done) -> Path:
        day = time.strftime("%Y-%m-%d", time.localtime(done.at))
        # The path inside the watched folder is kept: the same name in two subfolders is two files.
        target = self.root / ("ng" if done.anomaly else "ok") / day / done.key.name
        n = 1
        while os.path.lexists(target):  # the camera PC reuses names (latest.png): keep every version
            n += 1
            target = target.with_name(f"{Path(done.key.name).stem}_{n}{target.suffix}")
        return target

    # --- retention ----------------------------------------------------------------------------------
    def prune(self) -> tuple[int, int]:
        """Remove sorted files beyond the age and the byte limit, oldest first, and empty day folders;
        returns (removed for age, removed for bytes)."""
        pruned = prune_tree(self.root, self.max_age_s, self.max_bytes, keep=(self.root / "ok", self.root / "ng"))
        for reason, count in (("age", pruned.removed_age), ("bytes", pruned.removed_bytes)):
            if count:
                metrics.SORTED_FILES_REMOVED.labels(self.name, reason).inc(count)
        metrics.SORTED_BYTES.labels(self.name).set(pruned.total_bytes)
        if pruned.removed_age or pruned.removed_bytes:
            log.info("sorted_pruned source=%s removed_age=%d removed_bytes=%d bytes=%d", self.name,
                     pruned.removed_age, pruned.removed_bytes, pruned.total_bytes)
        return pruned.removed_age, pruned.removed_bytes
