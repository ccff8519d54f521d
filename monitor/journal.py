"""The journal: every verdict and source event as one JSON line, appended, flushed, rotated by size."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from monitor.files import LineFile

log = logging.getLogger(__name__)


class Journal:
    """Append-only JSONL file; `journal.jsonl.1` .. `.N` hold older lines after rotation."""

    def __init__(self, path: Path, max_bytes: int = 64 * 2**20, backups: int = 10) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._file = LineFile(self.path)

    def append(self, record: dict) -> None:
        """Write one line and flush it to the OS (a crash of this process loses nothing written)."""
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._file.size + len(line) > self.max_bytes and self._file.size > 0:
                self._rotate()
            self._file.write(line)

    def sync(self) -> None:
        """fsync: what was appended survives a power cut too. Called once per batch, not per line."""
        with self._lock:
            self._file.sync()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        log.info("journal_rotated path=%s", self.path)
        self._file.reopen()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_journal(path: Path) -> list[dict]:
    """All records of a journal file (not its rotated backups), in order."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_journal_tail(path: Path, max_bytes: int = 4 * 2**20) -> list[dict]:
    """The last records of a journal file, at most `max_bytes` of it; a line cut by a crash is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - max_bytes))
        data = f.read()
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut by the seek
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
