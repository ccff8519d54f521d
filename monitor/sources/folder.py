"""Watched folder source: complete-file detection, backlog scan, ledger, back-pressure.

A file becomes a candidate on any watchdog event (created, modified, closed, moved in) or at the
backlog scan. It is read only when it is complete: closed by its writer and quiet for `settle_ms`,
or (no close seen, e.g. a network share) unchanged in size for `stable_s`; and its bytes must be a
whole image (PNG IEND, JPEG EOI, BMP size) that decodes. Otherwise it is retried until
`incomplete_timeout_s` after its last change, then quarantined with the reason.

Only regular files are opened, without blocking and without following links: a FIFO named `x.png` would
block a plain open() for ever, and a link (to a file, or a folder linked to a parent) would show the same
file twice. The watched folder itself may be removed, re-created or replaced by a rename at any time: the
inotify watch dies with the folder it was on, so the settle loop checks the folder's identity twice a
second, says `folder_lost`, and when a folder is there again watches it anew and scans its backlog.

Events come from the kernel's inotify watch, read in bulk on one thread (monitor/sources/inotify.py: watchdog's
inotify Observer cost a busy line half its interpreter time). With `poll_s` set (a network share: files written by
other machines raise no inotify event here) watchdog's PollingObserver takes its place and raises the same kinds
of events from snapshots; nothing else changes.

A paused source keeps watching and collecting candidates but reads none: files stay on disk untouched
(never quarantined while paused) and are scored after `resume()`, which also rescans the folder. A source
configured `paused: true` starts so (the supervisor pauses it before `start()`): its backlog waits too.

What happens to a file once its verdict is durable (`after_scoring`: keep, move, delete) is the Sorter's
(monitor/sources/sorting.py): until it is done, the file stays in flight, so no rescan offers it again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.polling import PollingObserver

from monitor import metrics
from monitor.batching import FrameQueue, QueueClosed
from monitor.config import FolderSourceConfig
from monitor.images import (
    ImageTooLarge,
    decode_image,
    image_is_complete,
    is_image_name,
    is_self_delimited,
    unscorable_pixels,
)
from monitor.records import FileKey, Frame
from monitor.sources.base import PausableSource
from monitor.sources.inotify import CLOSED, GONE, MOVED_IN, OPENED, InotifyWatch
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine
from monitor.sources.sorting import CHANGED, Done, Sorter
from monitor.threads import StoppableThread

log = logging.getLogger(__name__)

_RETRY_S = 0.25
_TICK_S = 0.05
_FOLDER_CHECK_S = 0.5  # how often the settle loop checks that the watched folder is still the watched one
_IGNORED_MAX = 10_000  # paths remembered so an ignored file is logged and counted once
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for ever.
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
# Rescans after an overflow, in seconds after it: a subfolder made while events were lost is watched again by
# the reader after it reports the overflow, so a file made in it meanwhile is found by the later scan.
_OVERFLOW_RESCANS_S = (0.0, 2.0)


class _Skip(Exception):
    """The entry is not a regular file reached without links: never read it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # one of FolderSource.SKIP_REASONS
        self.detail = detail


@dataclass
class _Candidate:
    first_seen: float  # wall clock, the file's arrival
    last_change: float  # monotonic
    closed: bool
    size: int = -1
    next_try: float = 0.0
    # Its last event was a rename into the folder: complete as it is (a rename is atomic), read without settle_ms.
    moved_in: bool = False


class _Polled(FileSystemEventHandler):
    """The events of watchdog's PollingObserver (a `poll_s` source), as the source's calls."""

    def __init__(self, source: FolderSource) -> None:
        self._source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = self._source
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            # A folder moved in brings files that raise no events of their own.
            src.scan(Path(os.fsdecode(getattr(event, "dest_path", "") or event.src_path)))
            return
        if event.is_directory:
            if isinstance(event, DirDeletedEvent) and os.fsdecode(event.src_path) == os.path.abspath(src.folder):
                src.folder_deleted()  # the emitter stops itself after this event: the watch is dead
            return
        if isinstance(event, FileDeletedEvent):
            src.forget(Path(os.fsdecode(event.src_path)))
        elif isinstance(event, FileMovedEvent):
            src.forget(Path(os.fsdecode(event.src_path)))
            src.offer(Path(os.fsdecode(event.dest_path)), closed=True)  # a rename is atomic
        else:
            src.offer(Path(os.fsdecode(event.src_path)), closed=isinstance(event, FileClosedEvent))


class _Fed:
    """The inotify watch's reports (monitor.sources.inotify.FolderEvents), as the source's calls."""

    def __init__(self, source: FolderSource) -> None:
        self._source = source

    def files(self, changes: list[tuple[str, int]]) -> None:
        self._source.changed(changes)

    def folder_appeared(self, path: str) -> None:
        if self._source.config.recursive:  # a subfolder of a flat source holds nothing it reads
            self._source.scan(Path(path))

    def overflow(self) -> None:
        self._source.events_lost()

    def root_gone(self) -> None:
        self._source.folder_deleted()


class FolderSource(PausableSource):
    """Watches one folder and feeds complete image files into the frame queue."""

    source_kind = "folder"

    # Bounded label values for anomaly_monitor_files_skipped_total{reason=...}.
    SKIP_REASONS = ("not_regular", "symlink")

    def __init__(self, config: FolderSourceConfig, queue: FrameQueue, ledger: Ledger,
                 quarantine: Quarantine, sorted_root: Path | None = None) -> None:
        """`sorted_root`: where `after_scoring: move` sorts files (config.sorted_folder_of); required then."""
        super().__init__(config.name)
        self.config = config
        self.folder = Path(config.folder)
        self._prefix = str(self.folder).rstrip(os.sep) + os.sep  # see _relative
        self.queue = queue
        self.ledger = ledger
        self.quarantine = quarantine
        self._extensions = frozenset(config.extensions)
        self._pending: dict[Path, _Candidate] = {}
        self._inflight: dict[Path, FileKey] = {}
        # Paths that changed while a version of them was in flight (being scored, or waiting for its move): the
        # last event's kind. Offered again once that version is done, or a new version written meanwhile (a camera
        # PC rewriting latest.png within one batch) would wait for the next start.
        self._changed_in_flight: dict[Path, int] = {}
        self._ignored: OrderedDict[Path, None] = OrderedDict()
        self._skipped: OrderedDict[tuple[Path, int], None] = OrderedDict()  # (path, inode): logged once
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._observer: PollingObserver | None = None  # poll_s: watchdog's poller; else `_inotify`
        self._inotify: InotifyWatch | None = None
        self._watch: object | None = None  # the folder's watch (an ObservedWatch, or True), None while it is lost
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched
        self._folder_deleted = threading.Event()  # set from the observer thread on the folder's DirDeletedEvent
        self._next_folder_check = 0.0
        # Monotonic times at which the settle loop scans the folder again: resume() asks for one now, an
        # overflow for two (_OVERFLOW_RESCANS_S).
        self._rescans_due: list[float] = []
        self.thread = StoppableThread(f"folder-{self.name}", self._run)
        self.sorter: Sorter | None = None  # None: after_scoring keep
        if config.after_scoring != "keep":
            if config.after_scoring == "move" and sorted_root is None:
                raise ValueError(f"source {self.name!r}: after_scoring move needs a sorted folder")
            self.sorter = Sorter(config, sorted_root or self.folder, ledger, self._sorted)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching, then scan the backlog (events during the scan are merged, not lost)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # Polling takes snapshots (a stat of every file) and raises the same events from their differences, so
        # everything downstream is one code path; files seen only by a poll are never known closed, so a TIFF
        # waits for `stable_s` of unchanged size, a PNG/JPEG/BMP for its end marker.
        if self.config.poll_s is not None:
            self._observer = PollingObserver(timeout=self.config.poll_s)
            self._observer.name = f"watch-{self.name}"
        else:
            self._inotify = InotifyWatch(self.name, self.config.recursive, _Fed(self))
        self._schedule()
        if self._observer is not None:
            self._observer.start()
        else:
            self._inotify.start()
        existing = self.scan(self.folder)
        self.ledger.compact(existing)
        metrics.SOURCE_FOLDER_PRESENT.labels(self.name).set(1)
        self._next_folder_check = time.monotonic() + _FOLDER_CHECK_S
        self.thread.start()
        if self.sorter is not None:
            self.sorter.start()  # its first tick moves what a crash or a refused move left (ledger.due)
        log.info("folder_source_started source=%s folder=%s backlog=%d watch=%s", self.name, self.folder,
                 len(self._pending), "inotify" if self.config.poll_s is None else f"poll_{self.config.poll_s:g}s")

    def stop(self) -> None:
        """Stop accepting new files; files already queued are still scored."""
        self.thread.stop()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
        if self._inotify is not None:
            self._inotify.stop()
        if self.sorter is not None:
            self.sorter.stop()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._observer is not None:
            self._observer.join(timeout)
        if self._inotify is not None:
            self._inotify.join(timeout)
        joined = self.thread.join(deadline - time.monotonic())
        return (self.sorter is None or self.sorter.thread.join(deadline - time.monotonic())) and joined

    @property
    def dead(self) -> bool:
        return super().dead or any(t is not None and t.started and not t.alive and not t.stopping
                                   for t in (self.sorter.thread if self.sorter is not None else None,
                                             self._inotify.thread if self._inotify is not None else None))

    def close(self) -> None:
        if self.sorter is not None:
            self.sorter.close()  # frames acknowledged after the threads ended (the scorer's drain)
        self.ledger.close()

    def _paused_changed(self) -> None:
        if not self.paused:
            # Events seen while paused are in the pending set already; the scan is for what they cannot
            # cover (a folder lost and found meanwhile clears the set). Done by the settle loop, not here:
            # a large folder must not hold the caller (an HTTP request) for the length of a scan.
            self._rescan_at(0.0)
        self._wake.set()

    def events_lost(self) -> None:
        """The kernel dropped inotify events (a burst beyond fs.inotify.max_queued_events): scan the folder.

        Files whose events were lost would otherwise sit unscored until the next start. The scan offers every
        image not in the ledger, not pending and not in flight, so nothing is scored twice.
        """
        metrics.FOLDER_EVENTS_LOST.labels(self.name).inc()
        log.warning("folder_events_lost source=%s folder=%s action=rescan", self.name, self.folder)
        self._rescan_at(*_OVERFLOW_RESCANS_S)
        self._wake.set()

    def _rescan_at(self, *delays: float) -> None:
        """Have the settle loop scan the folder `delays` seconds from now (once for each)."""
        now = time.monotonic()
        with self._lock:
            self._rescans_due.extend(now + delay for delay in delays)

    # --- the watched folder itself --------------------------------------------------------------
    def _folder_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the folder now at the configured path; None when there is no folder."""
        try:
            st = os.stat(self.folder)  # the configured path itself may be a link: the operator chose it
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def _schedule(self) -> None:
        """Watch the folder now at the path; raises OSError when it cannot be watched."""
        identity = self._folder_identity()
        if self._inotify is not None:
            self._inotify.watch(str(self.folder))
            self._watch = True
        else:
            self._watch = self._observer.schedule(_Polled(self), str(self.folder), recursive=self.config.recursive,
                                                  follow_symlink=False)
        self._identity = identity

    def _unschedule(self) -> None:
        watch, self._watch = self._watch, None
        if watch is None:
            return
        if self._inotify is not None:
            self._inotify.unwatch()
            return
        try:
            self._observer.unschedule(watch)
        except Exception:  # noqa: BLE001 - an emitter that died with its folder may fail to stop; it is gone
            log.debug("folder_unschedule_failed source=%s", self.name, exc_info=True)

    def folder_deleted(self) -> None:
        """The watched folder was deleted (its watch is dead): check at once rather than at the next poll."""
        self._folder_deleted.set()
        self._wake.set()

    def _check_folder(self, now: float) -> None:
        """Notice a lost, re-created or replaced folder; re-watch it and scan its backlog when it is back."""
        if now < self._next_folder_check and not self._folder_deleted.is_set():
            return
        self._next_folder_check = now + _FOLDER_CHECK_S
        deleted = self._folder_deleted.is_set()
        self._folder_deleted.clear()
        identity = self._folder_identity()
        if self._watch is not None and (deleted or identity != self._identity):
            # The inotify watch follows the inode, not the path: on a deleted folder it is dead, on a
            # renamed one it reports the old folder's files under the new folder's path.
            self._unschedule()
            with self._lock:
                self._pending.clear()  # their paths now name other files or none; the backlog scan re-offers
            # The line first, then the metric: whoever sees the metric change finds the line already written.
            log.warning("folder_lost source=%s folder=%s", self.name, self.folder)
            metrics.SOURCE_FOLDER_PRESENT.labels(self.name).set(0)
            identity = self._folder_identity()  # a replacement may already be there
        if self._watch is None and identity is not None:
            try:
                self._schedule()
            except OSError as exc:
                log.info("folder_watch_retry source=%s folder=%s error=%s", self.name, self.folder, exc)
                return
            self.scan(self.folder)  # files that arrived while no watch was on the folder raised no event
            log.warning("folder_found source=%s folder=%s backlog=%d", self.name, self.folder, len(self._pending))
            metrics.SOURCE_FOLDER_PRESENT.labels(self.name).set(1)

    # --- candidates ---------------------------------------------------------------------------
    def _relative(self, path: Path) -> str:
        # A string prefix, not PurePath.relative_to: this runs several times per file, and pathlib's parsing
        # was a tenth of the reader's time on a fast line. Paths here are the folder's own joined with names.
        text, prefix = str(path), self._prefix
        if text.startswith(prefix):
            return text[len(prefix):].replace(os.sep, "/")
        return path.relative_to(self.folder).as_posix()

    def _wanted(self, path: Path) -> bool:
        try:
            path.relative_to(self.folder)
        except ValueError:
            return False
        if not self.config.recursive and path.parent != self.folder:
            return False
        return self._wanted_name(path)

    def _wanted_name(self, path: Path) -> bool:
        """`path` (in the folder or, recursive, below it) has an image's name and is no writer's temporary."""
        if path.name.startswith("."):
            return False  # hidden files are writers' temporaries (rsync, editors)
        if is_image_name(path, self._extensions):
            return True
        if path not in self._ignored:
            self._ignored[path] = None
            if len(self._ignored) > _IGNORED_MAX:
                self._ignored.popitem(last=False)
            metrics.FILES_IGNORED.labels(self.name).inc()
            log.info("file_ignored source=%s path=%s reason=extension", self.name, path)
        return False

    def offer(self, path: Path, closed: bool, arrived: float | None = None) -> None:
        """A file appeared or changed: (re)start its completeness clock."""
        if not self._wanted(path):
            return
        with self._lock:
            if path in self._inflight:
                self._changed_in_flight[path] = CLOSED if closed else OPENED
                return
            idle = not self._pending
            self._touch(path, closed, time.monotonic(), arrived or time.time())
        # Waking the settle loop on every event of a burst would rescan the pending set each time;
        # once it has candidates it wakes by itself when the next one is due.
        if idle:
            self._wake.set()

    def changed(self, changes: list[tuple[str, int]]) -> None:
        """The inotify watch's file events (`offer` for OPENED, CLOSED and MOVED_IN, `forget` for GONE) in kernel order.

        One lock round for everything one read of the kernel's queue returned; paths come from the watched
        folders, so only the name is checked.
        """
        now, wall = time.monotonic(), time.time()
        wanted = [(Path(text), change) for text, change in changes]
        wanted = [(path, change) for path, change in wanted if change == GONE or self._wanted_name(path)]
        with self._lock:
            idle = not self._pending
            for path, change in wanted:
                if change == GONE:
                    self._pending.pop(path, None)
                    self._changed_in_flight.pop(path, None)
                elif path in self._inflight:
                    self._changed_in_flight[path] = change
                else:
                    self._touch_change(path, change, now, wall)
            wake = idle and bool(self._pending)
        if wake:
            self._wake.set()

    def _touch(self, path: Path, closed: bool, now: float, arrived: float, moved_in: bool = False) -> None:
        """A pending candidate for `path`, its quiet clock restarted at `now`; call with the lock held.

        moved_in: this event renamed the file into the folder. A later write to it makes it wait for quiet again.
        """
        cand = self._pending.get(path)
        if cand is None:
            self._pending[path] = _Candidate(arrived, now, closed, moved_in=moved_in)
        else:
            cand.last_change = now
            cand.closed = cand.closed or closed
            cand.moved_in = moved_in
            cand.next_try = 0.0

    def _touch_change(self, path: Path, change: int, now: float, arrived: float) -> None:
        """`_touch` for an inotify change (OPENED, CLOSED or MOVED_IN); call with the lock held."""
        self._touch(path, change != OPENED, now, arrived, moved_in=change == MOVED_IN)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def _skip(self, path: Path, inode: int, reason: str, detail: str) -> None:
        """Never read `path` (a FIFO, a socket, a link): forget it, log and count it once per file."""
        self.forget(path)
        with self._lock:
            if (path, inode) in self._skipped:
                return
            self._skipped[(path, inode)] = None
            if len(self._skipped) > _IGNORED_MAX:
                self._skipped.popitem(last=False)
        metrics.FILES_SKIPPED.labels(self.name, reason).inc()
        log.warning("file_skipped source=%s path=%s reason=%s detail=%s", self.name, path, reason, detail)

    def _classify(self, path: Path, st: os.stat_result) -> None:
        """Raise _Skip unless `st` (from lstat) is a regular file."""
        if stat.S_ISLNK(st.st_mode):
            raise _Skip("symlink", "a link is never followed")
        if not stat.S_ISREG(st.st_mode):
            raise _Skip("not_regular", f"file type {stat.filemode(st.st_mode)[0]!r}, not a regular file")

    def _open(self, path: Path) -> tuple[int, os.stat_result]:
        """Open `path` read-only and without blocking, through no link below the watched folder; (fd, fstat).

        Walks from the folder one component at a time with O_NOFOLLOW, so neither the file nor any folder
        on its way may be a link; raises _Skip for a link or a non-regular file, OSError as open() does.
        A file right in the folder is opened by its path: only its own name can be a link there (the folder's
        path is the operator's), and two system calls fewer per file count on a fast line, where every call
        gives the interpreter lock away.
        """
        parts = self._relative(path).split("/")
        if len(parts) == 1:
            fd = self._open_file(str(path))
        else:
            dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for part in parts[:-1]:
                    try:
                        next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                                os.lstat(part, dir_fd=dir_fd).st_mode):
                            raise _Skip("symlink", f"folder {part!r} on the way is a link") from exc
                        raise
                    os.close(dir_fd)
                    dir_fd = next_fd
                fd = self._open_file(parts[-1], dir_fd)
            finally:
                os.close(dir_fd)
        try:
            opened = os.fstat(fd)
            self._classify(path, opened)  # what was opened, not what a name pointed to before
        except BaseException:
            os.close(fd)
            raise
        return fd, opened

    @staticmethod
    def _open_file(name: str, dir_fd: int | None = None) -> int:
        try:
            return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Skip("symlink", "a link is never followed") from exc
            if exc.errno == errno.ENXIO:
                raise _Skip("not_regular", "a socket or a device without a reader") from exc
            raise

    def scan(self, folder: Path) -> list[FileKey]:
        """Offer every image under `folder` not yet in the ledger; returns the keys of all found."""
        found: list[tuple[float, Path, FileKey]] = []
        try:
            # followlinks=False: a folder linked to a parent would list every file a second time.
            walker = (os.walk(folder, followlinks=False) if self.config.recursive
                      else [(str(folder), [], os.listdir(folder))])
            entries = [(dirpath, name) for dirpath, _dirs, files in walker for name in files]
        except OSError as exc:  # the folder vanished meanwhile: the folder check notices, the next scan finds
            log.info("folder_scan_failed source=%s folder=%s error=%s", self.name, folder, exc)
            return []
        for dirpath, name in entries:
            path = Path(dirpath) / name
            if name.startswith(".") or not is_image_name(path, self._extensions):
                continue
            try:
                st = os.lstat(path)
                self._classify(path, st)
            except OSError:
                continue
            except _Skip as skip:
                self._skip(path, st.st_ino, skip.reason, skip.detail)
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
        if cand.moved_in:
            return cand.next_try
        quiet = self.config.settle_ms / 1000 if self._quick(path, cand) else self.config.stable_s
        return max(cand.next_try, cand.last_change + quiet)

    def _run(self, stop: threading.Event) -> None:
        wait = _TICK_S
        while not stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            now = time.monotonic()
            try:
                self._check_folder(now)
            except Exception:  # noqa: BLE001 - a failed check is retried at the next poll; the source lives on
                metrics.ERRORS.labels("watch").inc()
                log.exception("folder_check_failed source=%s folder=%s", self.name, self.folder)
            if self.paused:
                wait = _TICK_S  # candidates keep arriving (offer) and keep their clocks; none is read
                continue
            with self._lock:
                rescan = any(at <= now for at in self._rescans_due)
                self._rescans_due = [at for at in self._rescans_due if at > now]
            if rescan and self._watch is not None:  # a lost folder is scanned when it is found again
                found = self.scan(self.folder)
                log.info("folder_rescanned source=%s files=%d pending=%d", self.name, len(found),
                         len(self._pending))
            with self._lock:
                due_at = [(self._due_at(p, c), c.first_seen, p) for p, c in self._pending.items()]
            due = sorted((first, p) for at, first, p in due_at if at <= now)
            later = [at for at, _, _ in due_at if at > now]
            # Sleep until the next candidate is due (a new event wakes us earlier), at most one tick.
            wait = min([_TICK_S, *(at - now for at in later)]) if not due else 0.0
            for _, path in due:
                if stop.is_set():
                    return
                if self.paused:
                    break  # the rest stay pending, due again after resume
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
            seen = None if cand is None else cand.last_change
        if cand is None:
            return
        try:
            st = os.lstat(path)  # never stat() through a link; _open re-checks what it actually opens
        except (FileNotFoundError, NotADirectoryError):
            self.forget(path)
            return
        if not stat.S_ISREG(st.st_mode):
            try:
                self._classify(path, st)
            except _Skip as skip:
                self._skip(path, st.st_ino, skip.reason, skip.detail)
            return
        if st.st_size != cand.size:
            # A closed or self-delimited file is read at first look; any other size change restarts the
            # quiet clock, so other files are read only after two looks `stable_s` apart agree on the size.
            first_look = cand.size < 0
            with self._lock:
                cand.size = st.st_size
                if not (first_look and self._quick(path, cand)):
                    cand.last_change = time.monotonic()
                    cand.moved_in = False  # still being written: it waits for quiet like any other file
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
            fd, opened = self._open(path)
        except _Skip as skip:
            self._skip(path, st.st_ino, skip.reason, skip.detail)
            return
        except (FileNotFoundError, NotADirectoryError):
            self.forget(path)
            return
        except OSError as exc:
            self._retry_or_quarantine(path, cand, "unreadable", str(exc))
            return
        try:
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                cand.last_change = time.monotonic()  # replaced between the look and the open: look again
                return
            data = self._read(fd, st.st_size)
        except OSError as exc:
            self._retry_or_quarantine(path, cand, "unreadable", str(exc))
            return
        finally:
            # A read-only descriptor's close error (EIO on a network share) says nothing about bytes already read,
            # which are checked whole below; it must not reach the settle loop, which would forget the file.
            with contextlib.suppress(OSError):
                os.close(fd)
        if len(data) != st.st_size:
            cand.last_change, cand.size, cand.moved_in = time.monotonic(), len(data), False
            return
        if not data:
            self._retry_or_quarantine(path, cand, "empty", "0 bytes")
            return
        if not image_is_complete(data):
            self._retry_or_quarantine(path, cand, "truncated", f"{len(data)} bytes, no end-of-image marker")
            return
        try:
            image = decode_image(data, self.config.max_decoded_bytes)
        except ImageTooLarge as exc:
            self.forget(path)  # refused from the header: nothing was decoded
            self.quarantine.put(self.name, path, "too_large", str(exc))
            return
        except cv2.error as exc:
            self.forget(path)
            reason = "too_large" if "pixels" in str(exc).lower() else "undecodable"
            self.quarantine.put(self.name, path, reason, str(exc).strip().splitlines()[-1][:200])
            return
        if image is None or image.size == 0:
            self._retry_or_quarantine(path, cand, "undecodable", "OpenCV could not decode it")
            return
        unscorable = unscorable_pixels(image)
        if unscorable is not None:
            self.forget(path)
            self.quarantine.put(self.name, path, "undecodable", unscorable)
            return
        with self._lock:
            self._pending.pop(path, None)
            self._inflight[path] = key
            if cand.last_change != seen:  # an event since this read began: what was read may be old already
                self._changed_in_flight[path] = CLOSED if cand.closed else OPENED
        frame = Frame(source=self.name, image=image, frame_time=cand.first_seen, path=path, file_key=key,
                      data=data)
        try:
            self.queue.put(frame)  # blocks while the queue is full: back-pressure, never a drop
        except QueueClosed:
            with self._lock:
                self._inflight.pop(path, None)
            raise

    @staticmethod
    def _read(fd: int, size: int) -> bytes:
        """Up to `size` + 1 bytes of `fd`: one byte more than the size seen, so that a file that grew since reads
        longer (and is looked at again). One system call for a whole image; more only where one read returns
        less than asked before the end (Linux caps a read near 2 GiB)."""
        data = os.read(fd, size + 1)
        if len(data) >= size:
            return data
        chunks = [data]
        got = len(data)
        while got <= size:
            chunk = os.read(fd, size + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def reconcile(self, records: list[dict]) -> int:
        """Add to the ledger the file versions that journal `records` show as scored; returns how many.

        Closes the window between a verdict's journal line and its ledger line: after a crash there,
        the journal (the source of truth) says the file was scored, so it is not scored twice.
        """
        from pydantic import ValidationError  # local: the only uses in this module

        from monitor.journal import FileRecord

        with_verdict = self.config.after_scoring != "keep"
        added = 0
        for rec in records:
            # read_journal_tail validated these, but a caller may pass anything: a record that is not a dict,
            # or whose `file` is not a valid file version (int(inf) raised OverflowError here), is skipped.
            if not isinstance(rec, dict) or rec.get("source") != self.name or rec.get("file") is None:
                continue
            try:
                key = FileRecord.model_validate(rec["file"]).key()
            except (ValidationError, RecursionError):
                continue
            # With a verdict, a file a crash left in the folder before its move is moved at start (Sorter).
            anomaly = rec.get("anomaly") if with_verdict and isinstance(rec.get("anomaly"), bool) else None
            if key not in self.ledger or (anomaly is not None and self.ledger.outcome(key) is None):
                self.ledger.add(key, anomaly)
                added += 1
        if added:
            log.info("ledger_reconciled_from_journal source=%s added=%d", self.name, added)
        return added

    def acknowledge(self, frame: Frame, anomaly: bool | None = None) -> None:
        """The file's verdict (`anomaly`), or its quarantine (None), is in the journal.

        Kept files go into the ledger. With a Sorter, a scored file stays in flight until it is moved or
        deleted (`_sorted`); a quarantined one is gone, and the ledger need not know it unless it is still here.
        """
        if frame.path is None:
            return
        if self.sorter is not None and anomaly is not None:
            with self._lock:
                key = self._inflight.get(frame.path)
            if key is not None:
                self.sorter.put(Done(frame.path, key, anomaly, time.time()))
            return
        self._into_ledger([frame.path])

    def acknowledge_many(self, done: list[tuple[Frame, bool]]) -> None:
        """`acknowledge` for one batch's verdicts: one lock round and one ledger write for the kept files."""
        if self.sorter is not None:
            for frame, anomaly in done:
                self.acknowledge(frame, anomaly)
            return
        self._into_ledger([frame.path for frame, _ in done if frame.path is not None])

    def _into_ledger(self, paths: list[Path]) -> None:
        """No longer in flight, so into the ledger; with a Sorter only a file still here (a quarantined file is
        normally gone, and the ledger need not know it)."""
        with self._lock:
            keys = [(path, self._inflight.pop(path, None)) for path in paths]
        self.ledger.add_many([key for path, key in keys
                              if key is not None and (self.sorter is None or os.path.lexists(path))])
        self._offer_changed_in_flight([path for path, key in keys if key is not None])

    def _offer_changed_in_flight(self, paths: list[Path]) -> None:
        """Offer again those of `paths` (just out of flight, their version in the ledger or sorted) that changed
        while in flight; the ledger tells a new version from the one already scored."""
        if not self._changed_in_flight:
            return
        now, wall, wake = time.monotonic(), time.time(), False
        with self._lock:
            for path in paths:
                change = self._changed_in_flight.pop(path, None)
                if change is not None and path not in self._inflight:
                    self._touch_change(path, change, now, wall)
                    wake = True
        if wake:
            self._wake.set()

    def _sorted(self, done: Done, outcome: str) -> None:
        """The Sorter is done with a file (moved, deleted, gone, or kept with its verdict in the ledger)."""
        with self._lock:
            if self._inflight.get(done.path) == done.key:  # not a newer version of the same name in flight
                del self._inflight[done.path]
        if outcome == CHANGED:
            self.offer(done.path, closed=False)  # a new version written while the old one was in flight
        self._offer_changed_in_flight([done.path])
