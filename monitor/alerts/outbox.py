"""The on-disk outbox: one JSON file per alert and sink, written atomically before any delivery."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from monitor.alerts.events import Alert
from monitor.files import atomic_write

log = logging.getLogger(__name__)

EXPIRED = "expired"
CORRUPT = "corrupt"


class Outbox:
    """`root/<sink>/<seq>-<id>.json`; a file is removed only after its alert was delivered.

    A file is written to a temporary name, fsynced, renamed and its folder fsynced, so a crash leaves
    either the whole alert or nothing (a stray temporary file is removed at the next start).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, sink: str) -> Path:
        return self.root / sink

    @staticmethod
    def filename(alert: Alert) -> str:
        return f"{alert.seq:012d}-{alert.id}.json"

    def path(self, alert: Alert) -> Path:
        return self.folder(alert.sink) / self.filename(alert)

    def write(self, alert: Alert) -> Path:
        """Persist one alert durably; returns its path."""
        folder = self.folder(alert.sink)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / self.filename(alert)
        atomic_write(final, json.dumps(alert.to_json(), sort_keys=True).encode(), durable=True, mode=0o600)
        return final

    def remove(self, alert: Alert) -> None:
        """Forget a delivered alert."""
        self.path(alert).unlink(missing_ok=True)

    def load(self, sink: str) -> list[Alert]:
        """The alerts waiting for `sink`, oldest first; unreadable files are moved to `corrupt/`."""
        folder = self.folder(sink)
        if not folder.is_dir():
            return []
        alerts = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash: never acknowledged
                continue
            if not path.is_file() or path.suffix != ".json":
                continue
            try:
                alert = Alert.from_json(json.loads(path.read_text(encoding="utf-8")))
                if alert.sink != sink:
                    raise ValueError(f"alert for sink {alert.sink!r} in the folder of {sink!r}")
            except (OSError, ValueError) as exc:
                self._set_aside(path, CORRUPT)
                log.error("alert_outbox_corrupt sink=%s file=%s error=%s", sink, path.name, exc)
                continue
            alerts.append(alert)
        alerts.sort(key=lambda a: a.seq)
        return alerts

    def expire(self, alert: Alert, keep: int) -> Path | None:
        """Move an alert given up on to `expired/`, keeping the newest `keep` files there."""
        return self._set_aside(self.path(alert), EXPIRED, keep)

    def _set_aside(self, path: Path, sub: str, keep: int = 1000) -> Path | None:
        target_dir = path.parent / sub
        if keep <= 0:
            path.unlink(missing_ok=True)
            return None
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        try:
            shutil.move(str(path), target)
        except FileNotFoundError:
            return None
        old = sorted(target_dir.iterdir())
        for extra in old[: max(0, len(old) - keep)]:
            extra.unlink(missing_ok=True)
        return target

    def max_seq(self) -> int:
        """The highest sequence number of any waiting alert, -1 when there is none."""
        best = -1
        if not self.root.is_dir():
            return best
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.glob("*.json"):
                head = path.name.split("-", 1)[0]
                if head.isdigit():
                    best = max(best, int(head))
        return best

    def sinks_on_disk(self) -> list[str]:
        """Sink folders present in the outbox (a sink removed from the config may have left some)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def count(self, sink: str) -> int:
        folder = self.folder(sink)
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
