"""Files that could not be scored: moved aside with a reason, counted, logged once."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from monitor import metrics
from monitor.files import atomic_write, safe_name

log = logging.getLogger(__name__)

# Bounded label values for anomaly_monitor_files_quarantined_total{reason=...}.
REASONS = ("empty", "too_large", "truncated", "undecodable", "unreadable")


class Quarantine:
    """Moves a bad file to `folder/<source>/` and writes `<name>.reason.txt` beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def put(self, source: str, path: Path, reason: str, detail: str = "") -> Path | None:
        """Quarantine `path`; returns where it went (None when it vanished meanwhile)."""
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        target_dir = self.folder / safe_name(source)
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = target_dir / f"{stamp}_{safe_name(path.name)}"
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{stamp}_{n}_{safe_name(path.name)}"
        try:
            shutil.move(str(path), target)
        except FileNotFoundError:
            log.info("quarantine_skipped_file_gone source=%s path=%s reason=%s", source, path, reason)
            return None
        metrics.FILES_QUARANTINED.labels(source, reason).inc()
        reason_file = target.with_name(target.name + ".reason.txt")
        text = f"reason: {reason}\nsource: {source}\noriginal: {path}\ntime: {stamp}\ndetail: {detail}\n"
        atomic_write(reason_file, text.encode())  # whoever sees the reason file sees all of it
        log.warning("file_quarantined source=%s path=%s reason=%s detail=%s to=%s",
                    source, path, reason, detail.replace("\n", " "), target)
        return target
