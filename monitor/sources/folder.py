"""Watched folder source: complete-file detection, backlog scan, ledger, back-pressure.

A file becomes a candidate on any watchdog event (created, modified, closed, moved in) or at the
backlog scan. It is read only when it is complete: closed by its writer and quiet for `settle_ms`,
or (no close seen, e.g. a network share) unchanged in size for `stable_s`; and its bytes must be a
whole image (PNG IEND, JPEG EOI, BMP size) that decodes. Otherwise it is retried until
`incomplete_timeout_s` after its last change, then quarantined with the reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from monitor import metrics
from monitor.batching import FrameQueue, QueueClosed
from monitor.config import FolderSourceConfig
from monitor.images import decode_image, image_is_complete, is_image_name, is_self_delimited
from monitor.records import FileKey, Frame
from monitor.sources.base import Source
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

_RETRY_S = 0.25
_TICK_S = 0.05


@dataclass
class _Candidate:
    first_seen: float  # wall clock, the file's arrival
    last_change: float  # monotonic
    closed: bool
    size: int = -1
    next_try: float = 0.0


class _Events(FileSystemEventHandler):
    def __init__(self, source: FolderSource) -> None:
        self._source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = self._source
        if isinstance(event, (FileOpenedEvent, FileClosedNoWriteEvent)):
            return  # our own reads, and readers' opens, say nothing about completeness
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            # A folder moved in brings files that raise no events of their own.
            src.scan(Path(os.fsdecode(getattr(event, "dest_path", "") or event.src_path)))
            return
        if event.is_directory:
            return
        if isinstance(event, FileDeletedEvent):
            src.forget(Path(os.fsdecode(event.src_path)))
        elif isinstance(event, FileMovedEvent):
            src.forget(Path(os.fsdecode(event.src_path)))
            src.offer(Path(os.fsdecode(event.dest_path)), closed=True)  # a rename is atomic
        else:
            src.offer(Path(os.fsdecode(event.src_path)), closed=isinstance(event, FileClosedEvent))


class FolderSource(Source):
    """Watches one folder and feeds complete image files into the frame queue."""

    def __init__(self, config: FolderSourceConfig, queue: FrameQueue, ledger: Ledger,
                 quarantine: Quarantine) -> None:
        self.config = config
        self.name = config.name
        self.folder = Path(config.folder)
        self.queue = queue
        self.ledger = ledger
        self.quarantine = quarantine
        self._extensions = frozenset(config.extensions)
        self._pending: dict[Path, _Candidate] = {}
        self._inflight: dict[Path, FileKey] = {}
        self._ignored: OrderedDict[Path, None] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._observer = None
        self.thread = StoppableThread(f"folder-{self.name}", self._run)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching, then scan the backlog (events during the scan are merged, not lost)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.name = f"watch-{self.name}"
        self._observer.schedule(_Events(self), str(self.folder), recursive=self.config.recursive)
        self._observer.start()
        existing = self.scan(self.folder)
        self.ledger.compact(existing)
        self.thread.start()
        log.info("folder_source_started source=%s folder=%s backlog=%d", self.name, self.folder,
                 len(self._pending))

    def stop(self) -> None:
        """Stop accepting new files; files already queued are still scored."""
        self.thread.stop()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._observer is not None:
            self._observer.join(timeout)
        return self.thread.join(deadline - time.monotonic())

    def close(self) -> None:
        self.ledger.close()

    # --- candidates ---------------------------------------------------------------------------
    def _relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def _wanted(self, path: Path) -> bool:
        if path.name.startswith("."):
            return False  # hidden files are writers' temporaries (rsync, editors)
        try:
            path.relative_to(self.folder)
        except ValueError:
            return False
        if not self.config.recursive and path.parent != self.folder:
            return False
        if is_image_name(path, self._extensions):
            return True
        if path not in self._ignored:
            self._ignored[path] = None
            if len(self._ignored) > 10_000:
                self._ignored.popitem(last=False)
            metrics.FILES_IGNORED.labels(self.name).inc()
            log.info("file_ignored source=%s path=%s reason=extension", self.name, path)
        return False

    def offer(self, path: Path, closed: bool, arrived: float | None = None) -> None:
        """A file appeared or changed: (re)start its completeness clock."""
        if not self._wanted(path):
            return
        now = time.monotonic()
        with self._lock:
            if path in self._inflight:
                return
            idle = not self._pending
            cand = self._pending.get(path)
            if cand is None:
                self._pending[path] = _Candidate(arrived or time.time(), now, closed)
            else:
                cand.last_change = now
                cand.closed = cand.closed or closed
                cand.next_try = 0.0
        # Waking the settle loop on every event of a burst would rescan the pending set each time;
        # once it has candidates it wakes by itself when the next one is due.
        if idle:
            self._wake.set()

    def forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def scan(self, folder: Path) -> list[FileKey]:
        """Offer every image under `folder` not yet in the ledger; returns the keys of all found."""
        found: list[tuple[float, Path, FileKey]] = []
        walker = os.walk(folder) if self.config.recursive else [(str(folder), [], os.listdir(folder))]
        for dirpath, _dirs, files in walker:
            for name in files:
                path = Path(dirpath) / name
                if name.startswith(".") or not is_image_name(path, self._extensions):
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((st.st_mtime, path, FileKey(self._relative(path), st.st_size, st.st_mtime_ns)))
        found.sort()
        for mtime, path, key in found:
            if key not in self.ledger:
                # Present before we looked: closed as far as we know; size stability still checked.
                self.offer(path, closed=True, arrived=min(mtime, time.time()))
        return [key for _, _, key in found]

    # --- the settle loop ------------------------------------------------------------------------
    def _quick(self, path: Path, cand: _Candidate) -> bool:
        # A file moved in from elsewhere never shows a close event, but PNG, JPEG and BMP carry their own
        # end: reading after a short quiet time is safe, the end check refuses a partial file.
        return cand.closed or is_self_delimited(path)

    def _due_at(self, path: Path, cand: _Candidate) -> float:
        quiet = self.config.settle_ms / 1000 if self._quick(path, cand) else self.config.stable_s
        return max(cand.next_try, cand.last_change + quiet)

    def _run(self, stop: threading.Event) -> None:
        wait = _TICK_S
        while not stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due_at = [(self._due_at(p, c), c.first_seen, p) for p, c in self._pending.items()]
            due = sorted((first, p) for at, first, p in due_at if at <= now)
            later = [at for at, _, _ in due_at if at > now]
            # Sleep until the next candidate is due (a new event wakes us earlier), at most one tick.
            wait = min([_TICK_S, *(at - now for at in later)]) if not due else 0.0
            for _, path in due:
                if stop.is_set():
                    return
                try:
                    self._try_read(path)
                except QueueClosed:
                    return
                except Exception:  # noqa: BLE001 - one bad file must never stop the source
                    metrics.ERRORS.labels("read").inc()
                    log.exception("folder_read_failed source=%s path=%s", self.name, path)
                    self.forget(path)

    def _retry_or_quarantine(self, path: Path, cand: _Candidate, reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - cand.last_change >= self.config.incomplete_timeout_s:
            self.forget(path)
            self.quarantine.put(self.name, path, reason, detail)
        else:
            cand.next_try = now + _RETRY_S

    def _try_read(self, path: Path) -> None:
        with self._lock:
            cand = self._pending.get(path)
        if cand is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self.forget(path)
            return
        if st.st_size != cand.size:
            # A closed or self-delimited file is read at first look; any other size change restarts the
            # quiet clock, so other files are read only after two looks `stable_s` apart agree on the size.
            first_look = cand.size < 0
            with self._lock:
                cand.size = st.st_size
                if not (first_look and self._quick(path, cand)):
                    cand.last_change = time.monotonic()
                    return
        key = FileKey(self._relative(path), st.st_size, st.st_mtime_ns)
        if key in self.ledger:
            self.forget(path)
            return
        if st.st_size > self.config.max_file_bytes:
            self.forget(path)
            self.quarantine.put(self.name, path, "too_large",
                                f"{st.st_size} bytes > max_file_bytes {self.config.max_file_bytes}")
            return
        try:
            with open(path, "rb") as f:
                data = f.read(self.config.max_file_bytes + 1)
        except FileNotFoundError:
            self.forget(path)
            return
        except OSError as exc:
            self._retry_or_quarantine(path, cand, "unreadable", str(exc))
            return
        if len(data) != st.st_size:
            cand.last_change, cand.size = time.monotonic(), len(data)
            return
        if not data:
            self._retry_or_quarantine(path, cand, "empty", "0 bytes")
            return
        if not image_is_complete(data):
            self._retry_or_quarantine(path, cand, "truncated", f"{len(data)} bytes, no end-of-image marker")
            return
        try:
            image = decode_image(data)
        except cv2.error as exc:
            self.forget(path)
            reason = "too_large" if "pixels" in str(exc).lower() else "undecodable"
            self.quarantine.put(self.name, path, reason, str(exc).strip().splitlines()[-1][:200])
            return
        if image is None or image.size == 0:
            self._retry_or_quarantine(path, cand, "undecodable", "OpenCV could not decode it")
            return
        with self._lock:
            self._pending.pop(path, None)
            self._inflight[path] = key
        frame = Frame(source=self.name, image=image, frame_time=cand.first_seen, path=path, file_key=key)
        try:
            self.queue.put(frame)  # blocks while the queue is full: back-pressure, never a drop
        except QueueClosed:
            with self._lock:
                self._inflight.pop(path, None)
            raise

    def reconcile(self, records: list[dict]) -> int:
        """Add to the ledger the file versions that journal `records` show as scored; returns how many.

        Closes the window between a verdict's journal line and its ledger line: after a crash there,
        the journal (the source of truth) says the file was scored, so it is not scored twice.
        """
        added = 0
        for rec in records:
            file = rec.get("file")
            if rec.get("source") != self.name or not isinstance(file, dict):
                continue
            try:
                key = FileKey(str(file["name"]), int(file["size"]), int(file["mtime_ns"]))
            except (KeyError, TypeError, ValueError):
                continue
            if key not in self.ledger:
                self.ledger.add(key)
                added += 1
        if added:
            log.info("ledger_reconciled_from_journal source=%s added=%d", self.name, added)
        return added

    def acknowledge(self, frame: Frame) -> None:
        """The file's verdict (or quarantine) is in the journal: record the file version in the ledger."""
        if frame.path is None:
            return
        with self._lock:
            key = self._inflight.pop(frame.path, None)
        if key is not None:
            self.ledger.add(key)
