"""Files that could not be scored: moved aside with a reason, counted, logged once.

A quarantined file is whole, with its reason file beside it, or it is not quarantined at all: the reason file
is written first (atomically), then the file is moved (a rename, or across file systems a copy to a temporary
name, fsync, rename, then the original removed). A step the disk refuses undoes the ones before it, so a full
disk leaves no zero-byte copy, no partial copy and no reason file without its file; the original stays where
it was. With an OutputGuard (the daemon's), the quarantine is retried under back-pressure until it succeeds:
the thread that asked waits, and the file is never dropped from tracking.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from monitor import metrics
from monitor.files import atomic_write, describe, move_file, safe_name
from monitor.logsafe import escape_controls
from monitor.outputs import OutputGuard, OutputStopped, count_error

log = logging.getLogger(__name__)

# Bounded label values for anomaly_monitor_files_quarantined_total{reason=...}.
REASONS = ("empty", "too_large", "truncated", "undecodable", "unreadable")
REASON_SUFFIX = ".reason.txt"


class _Vanished(Exception):
    """The file to quarantine is gone (its writer removed or renamed it): nothing to do, nothing to retry."""


class Quarantine:
    """Moves a bad file to `folder/<source>/` and writes `<name>.reason.txt` beside it."""

    def __init__(self, folder: Path, guard: OutputGuard | None = None) -> None:
        self.folder = Path(folder)
        # None: one try, and a refused quarantine leaves the file where it is (logged, counted).
        self.guard = guard

    def put(self, source: str, path: Path, reason: str, detail: str = "") -> Path | None:
        """Quarantine `path`; returns where it went.

        None when the file vanished meanwhile, or when the disk refused and no retry is possible (no guard,
        or the daemon is stopping): the original is then where it was, and scored again at the next start.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        try:
            if self.guard is None:
                target = self._move(source, path, reason, detail)
            else:
                target = self.guard.write("quarantine", lambda: self._move(source, path, reason, detail))
        except _Vanished:
            log.info("quarantine_skipped_file_gone source=%s path=%s reason=%s", source, path, reason)
            return None
        except OutputStopped:
            log.warning("quarantine_given_up source=%s path=%s reason=%s action=kept_in_place", source, path, reason)
            return None
        except OSError as exc:  # no guard: one try
            count_error("quarantine", exc)
            log.error("quarantine_failed source=%s path=%s reason=%s error=%s action=kept_in_place", source, path,
                      reason, describe(exc))
            return None
        metrics.FILES_QUARANTINED.labels(source, reason).inc()
        log.warning("file_quarantined source=%s path=%s reason=%s detail=%s to=%s",
                    source, path, reason, detail.replace("\n", " "), target)
        return target

    def _move(self, source: str, path: Path, reason: str, detail: str) -> Path:
        """One try: reason file, then the file; on any error neither is left (_Vanished: the file is gone)."""
        if not path.exists():
            raise _Vanished(str(path))
        target_dir = self.folder / safe_name(source)
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = target_dir / f"{stamp}_{safe_name(path.name)}"
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{stamp}_{n}_{safe_name(path.name)}"
        reason_file = target.with_name(target.name + REASON_SUFFIX)
        # One field a line, whatever the file's name holds: a newline in it must not forge a field, and the
        # bytes of a name that is not UTF-8 (lone surrogates in Python) must not make the reason unwritable.
        fields = {"reason": reason, "source": source, "original": str(path), "time": stamp, "detail": detail}
        text = "".join(f"{key}: {escape_controls(value)}\n" for key, value in fields.items())
        # First, and atomic: whoever sees a quarantined file sees its whole reason.
        atomic_write(reason_file, text.encode(), durable=True)
        try:
            move_file(path, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                reason_file.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError) and not path.exists():
                raise _Vanished(str(path)) from exc
            raise
        return target
