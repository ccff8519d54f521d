"""The processed-files ledger: which file versions a folder source has already scored."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from monitor.files import LineFile, atomic_write
from monitor.records import FileKey

log = logging.getLogger(__name__)

def _line(key: FileKey) -> str:
    return json.dumps({"p": key.name, "s": key.size, "m": key.mtime_ns}) + "\n"


class Ledger:
    """Append-only JSONL of scored file versions; compacted at start to files that still exist.

    A file is keyed by path, size and mtime: a camera PC that overwrites `latest.png` gets scored again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: set[FileKey] = set()
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line)
                        self._keys.add(FileKey(rec["p"], int(rec["s"]), int(rec["m"])))
                    except (ValueError, KeyError, TypeError):
                        # A line cut by a crash mid-write: that one file may be scored again; nothing lost.
                        log.warning("ledger_line_skipped path=%s line=%d", self.path, lineno)
        self._file = LineFile(self.path)

    def __contains__(self, key: FileKey) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: FileKey) -> None:
        """Record a scored file version (flushed to the OS at once)."""
        with self._lock:
            self._keys.add(key)
            self._file.write(_line(key))

    def compact(self, existing: Iterable[FileKey]) -> None:
        """Keep only entries of file versions still present, so the ledger never outgrows the folder."""
        present = set(existing)
        with self._lock:
            keep = {k for k in self._keys if k in present}
            if len(keep) == len(self._keys):
                return
            self._file.close()
            atomic_write(self.path, "".join(_line(k) for k in sorted(keep)).encode(), durable=True)
            self._file.reopen()
            log.info("ledger_compacted path=%s kept=%d dropped=%d", self.path, len(keep),
                     len(self._keys) - len(keep))
            self._keys = keep

    def close(self) -> None:
        with self._lock:
            self._file.close()
