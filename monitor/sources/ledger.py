"""The processed-files ledger: which file versions a folder source has already scored.

The ledger is a cache of the journal (the source of truth): it saves rescoring a folder's backlog at each
start. So nothing in it may stop a start. Each line is validated (LedgerRecord, strict); bad lines are
skipped, counted and logged once, and the file is set aside as `<ledger>.rejected` and rewritten with the
good lines, so the next start does not meet them again. A ledger that cannot be read at all (a folder, no
permission, not a regular file) is set aside too, and the source starts with an empty ledger that the
journal's tail then fills (FolderSource.reconcile).

A source that moves or deletes its scored files (`after_scoring`) writes a line only for a file that could not
be moved or deleted: the line carries the verdict (`"a"`: anomaly or not), so the move is tried again later
(monitor/sources/sorting.py); an entry is dropped once its file has left the folder.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]  # C; json.dumps's own
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from monitor import metrics
from monitor.files import LineFile, atomic_write, describe
from monitor.journal import FileName, MtimeNs, RecordRejected, Rejections, Size, parse_object_line, rejection_reason
from monitor.outputs import count_error
from monitor.records import FileKey

log = logging.getLogger(__name__)

REJECTED_SUFFIX = ".rejected"
UNREADABLE_SUFFIX = ".unreadable"


class LedgerRecord(BaseModel):
    """One ledger line: {"p": name, "s": size, "m": mtime_ns} (and "a": the verdict of a file whose move or
    deletion is still due), exactly as `_line` writes it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    p: FileName
    s: Size
    m: MtimeNs
    a: bool | None = None

    def key(self) -> FileKey:
        return FileKey(self.p, self.s, self.m)


def _line(key: FileKey, anomaly: bool | None = None) -> str:
    """The line `json.dumps({"p": name, "s": size, "m": mtime_ns[, "a": anomaly]})` writes, made by hand: once per
    scored file, where building a dict and an encoder pass cost the scorer's thread 2 µs each."""
    tail = "" if anomaly is None else (', "a": true' if anomaly else ', "a": false')
    return f'{{"p": {encode_basestring_ascii(key.name)}, "s": {int(key.size)}, "m": {int(key.mtime_ns)}{tail}}}\n'


def _why(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).replace(" ", "_")


class Ledger:
    """Append-only JSONL of scored file versions; compacted at start to files that still exist.

    A file is keyed by path, size and mtime: a camera PC that overwrites `latest.png` gets scored again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: set[FileKey] = set()
        self._due: dict[FileKey, bool] = {}  # scored files still to be moved or deleted, with their verdict
        self._lock = threading.Lock()
        self._file: LineFile | None = None  # None: the ledger lives in memory only (it could not be opened)
        self._failing = False  # the last write was refused: logged once, until a write succeeds again
        rejected, ends_clean = self._load()
        if rejected.count:
            set_aside = self._rewrite_without(rejected)
            rejected.report(set_aside=set_aside or "no")
            ends_clean = True if set_aside else ends_clean
        self._open(ends_clean)

    def _load(self) -> tuple[Rejections, bool]:
        """Read the valid lines into `_keys`; returns the bad ones and whether the last line was whole."""
        rejected = Rejections("ledger", self.path)
        try:
            # O_NONBLOCK: a FIFO left at the ledger's path would block a plain open() for ever.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return rejected, True
        except OSError as exc:
            self._unreadable(_why(exc))
            return rejected, True
        ends_clean = True
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    f.close()
                    self._unreadable("not_a_regular_file")
                    return rejected, True
                for lineno, raw in enumerate(f, 1):
                    ends_clean = raw.endswith(b"\n")
                    if not raw.strip():
                        continue
                    try:
                        record = LedgerRecord.model_validate(parse_object_line(raw))
                        self._keys.add(record.key())
                        if record.a is not None:
                            self._due[record.key()] = record.a
                    except RecordRejected as exc:
                        # The last line without a newline is the usual one: cut by a crash mid-write. That one
                        # file may be scored again; nothing is lost.
                        rejected.add(lineno, "cut_line" if not ends_clean else exc.reason)
                    except ValidationError as exc:
                        rejected.add(lineno, rejection_reason(exc))
        except OSError as exc:  # an I/O error mid-file: keep what was read, set the rest aside
            self._unreadable(_why(exc))
            return rejected, True
        return rejected, ends_clean

    def _set_aside(self, suffix: str) -> Path | None:
        """Move the ledger file (or whatever is at its path) out of the way; None when that fails."""
        aside = self.path.with_name(self.path.name + suffix)
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.warning("ledger_set_aside_failed path=%s to=%s error=%s", self.path, aside, _why(exc))
            return None
        return aside

    def _unreadable(self, why: str) -> None:
        metrics.STATE_FILES_UNREADABLE.labels("ledger").inc()
        # A unique name: what is there may be a folder, which a later one could not replace.
        aside = self._set_aside(f"{UNREADABLE_SUFFIX}-{time.time_ns()}")
        log.warning("ledger_unreadable path=%s error=%s kept=%d action=start_empty set_aside=%s",
                    self.path, why, len(self._keys), aside or "no")

    def _rewrite_without(self, rejected: Rejections) -> Path | None:
        """Keep the file with bad lines as `<ledger>.rejected` (the last one only) and write the good keys."""
        aside = self._set_aside(REJECTED_SUFFIX)
        if aside is None:
            return None
        try:
            atomic_write(self.path, self._text(self._keys), durable=True)
        except OSError as exc:
            # Nothing lost: the keys are in memory, and the file opened next starts empty and appends.
            log.warning("ledger_rewrite_failed path=%s error=%s", self.path, _why(exc))
        return aside

    def _open(self, ends_clean: bool) -> None:
        try:
            self._file = LineFile(self.path)
            if not ends_clean:
                self._file.write("\n")  # end the cut line, so the next record is a line of its own
        except OSError as exc:
            # Scoring goes on; after a restart the journal's tail saves the recent files from a second scoring.
            self._file = None
            metrics.STATE_FILES_UNREADABLE.labels("ledger").inc()
            log.warning("ledger_unwritable path=%s error=%s action=memory_only", self.path, _why(exc))

    def _text(self, keys: Iterable[FileKey]) -> bytes:
        return "".join(_line(k, self._due.get(k)) for k in sorted(keys)).encode()

    def __contains__(self, key: FileKey) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def outcome(self, key: FileKey) -> bool | None:
        """The verdict recorded with `key` (a move or deletion still due), else None."""
        with self._lock:
            return self._due.get(key)

    def due(self) -> dict[FileKey, bool]:
        """The file versions whose move or deletion is still due, with their verdicts."""
        with self._lock:
            return dict(self._due)

    def discard(self, key: FileKey) -> None:
        """Forget a file version that left the folder (moved or deleted after scoring).

        In memory only: its line, if it had one, goes at the next start's compaction (the file is gone).
        """
        with self._lock:
            self._keys.discard(key)
            self._due.pop(key, None)

    def add(self, key: FileKey, anomaly: bool | None = None) -> None:
        """Record a scored file version (flushed to the OS at once); `anomaly` for one whose move or
        deletion is still due.

        Never raises: a line the disk refuses is kept in memory only (the verdict is already in the journal,
        whose tail fills the ledger again at the next start), counted, and logged once per episode.
        """
        self.add_many([key], anomaly)

    def add_many(self, keys: list[FileKey], anomaly: bool | None = None) -> None:
        """`add` for the file versions of one batch: one write for all of them."""
        if not keys:
            return
        with self._lock:
            self._keys.update(keys)
            if anomaly is not None:
                for key in keys:
                    self._due[key] = anomaly
            if self._file is None:
                return
            try:
                # All or nothing: no cut line on a full disk.
                self._file.write_many([_line(key, anomaly) for key in keys])
            except OSError as exc:
                count_error("ledger", exc)
                if not self._failing:
                    self._failing = True
                    log.error("output_blocked output=ledger path=%s error=%s action=memory_only", self.path,
                              describe(exc))
                return
            if self._failing:
                self._failing = False
                log.warning("output_recovered output=ledger path=%s", self.path)

    def compact(self, existing: Iterable[FileKey]) -> None:
        """Keep only entries of file versions still present, so the ledger never outgrows the folder."""
        present = set(existing)
        with self._lock:
            keep = {k for k in self._keys if k in present}
            if len(keep) == len(self._keys):
                return
            if self._file is not None:
                try:
                    atomic_write(self.path, self._text(keep), durable=True)
                except OSError as exc:
                    # The old file stays (a few lines too many); compaction is tried again at the next start.
                    count_error("ledger", exc)
                    log.warning("ledger_compact_failed path=%s error=%s", self.path, describe(exc))
                    return
                self._reopen()
            log.info("ledger_compacted path=%s kept=%d dropped=%d", self.path, len(keep),
                     len(self._keys) - len(keep))
            self._keys = keep
            self._due = {k: a for k, a in self._due.items() if k in keep}

    def _reopen(self) -> None:
        """Append to the file now at the path (compaction replaced it); memory only when that fails."""
        assert self._file is not None
        try:
            self._file.reopen()
        except OSError as exc:
            self._file = None
            count_error("ledger", exc)
            log.warning("ledger_unwritable path=%s error=%s action=memory_only", self.path, describe(exc))

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:  # its lines are in the journal too; nothing to do but say so
                    log.warning("ledger_close_failed path=%s error=%s", self.path, describe(exc))
