"""The on-disk outbox: one JSON file per alert and sink, written atomically before any delivery.

Every file read back is validated by shape and value (OutboxRecord) before it is queued: a file that is
not a well-formed alert of this sink is set aside in `corrupt/` with a reason file, counted and logged, so it
can neither stop the start nor hold the sink's queue. Alerts given up on go to `expired/`, alerts a sink
refused for good to `rejected/`, each with a `<file>.reason.txt` beside it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor import metrics
from monitor.alerts.config import EventKind
from monitor.alerts.events import Alert
from monitor.files import atomic_write, fsync_dir
from monitor.outputs import count_error
from monitor.schema import NAME_PATTERN, key_path

log = logging.getLogger(__name__)

EXPIRED = "expired"
CORRUPT = "corrupt"
REJECTED = "rejected"
REASON_SUFFIX = ".reason.txt"

# A digest file holds a few hundred verdicts at most (a few hundred kB); anything far larger is not ours.
MAX_RECORD_BYTES = 16 * 2**20
# Sequence numbers are written with 12 digits; 15 leaves room for centuries of alerts, and a bound keeps a
# hostile file name from pushing the shared counter towards numbers no one can read.
MAX_SEQ = 10**15 - 1
_FILENAME = re.compile(r"^([0-9]{12,15})-([A-Za-z0-9_-]{1,128})\.json$")
# Wall-clock seconds from 1970 to about the year 5100: iso() and the sinks' arithmetic (Alertmanager adds
# ten years to a camera_lost) never overflow a datetime on a value in this range.
MAX_TIME = 1e11

Time = Annotated[float, Field(ge=0, le=MAX_TIME, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
# Paths become pathlib.Path objects in the sinks; a NUL byte makes every os call on them raise ValueError.
PathText = Annotated[str, Field(pattern=r"^[^\x00]*$", max_length=4096)]


class _Part(BaseModel):
    """A nested part of a record: strict types (JSON gives no reason to coerce), extra keys kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class VerdictRecord(_Part):
    """What the sinks read from a journal line (Verdict.to_json()); its other keys pass through."""

    time: Time
    frame_time: Time | None = None  # shown in the texts as local time
    score: Number
    threshold: Number
    path: PathText | None = None
    evidence: PathText | None = None
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")  # part of the review link


class EventRecord(_Part):
    """A source event (SourceEvent.to_json())."""

    event: str
    detail: str | None = None


class SuppressedRecord(_Part):
    """What a cooldown held back: {count, first, last, max_score}."""

    count: int = Field(ge=0)
    first: Time
    last: Time
    max_score: Number


class OutboxRecord(BaseModel):
    """The shape and value rules of one outbox file (Alert.to_json()); unknown top-level keys are ignored
    so a file written by a newer version still delivers."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")  # part of the file name: no slash, no dot
    seq: int = Field(ge=0, le=MAX_SEQ)
    sink: str = Field(pattern=NAME_PATTERN)
    kind: Literal[EventKind, "test"]  # the config's event kinds, and TEST_KIND
    source: str = Field(min_length=1, max_length=1024)
    created: Time
    verdicts: list[VerdictRecord] = Field(default=[], max_length=100_000)
    event: EventRecord | None = None
    suppressed: SuppressedRecord | None = None
    host: str = ""
    external_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)

    @model_validator(mode="after")
    def _anomaly_has_content(self) -> OutboxRecord:
        # An anomaly alert is one or more verdicts, or the summary of what a cooldown held: without either
        # there is nothing to say, and its title would fail on every try.
        if self.kind == "anomaly" and not self.verdicts and self.suppressed is None:
            raise ValueError("an anomaly alert needs verdicts or a suppressed summary")
        return self


class BadRecord(ValueError):
    """An outbox file that is not a valid alert record; the message is the reason kept beside it."""


def log_safe(text: str) -> str:
    """`text` on one printable ASCII line (file names and reasons may hold anything)."""
    return text.encode("unicode_escape").decode("ascii")


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which requests refuses to send: the alert could never go out.
    raise BadRecord(f"JSON constant {name} is not allowed")


def parse_record(data: bytes, sink: str, filename: str) -> Alert:
    """The alert in one outbox file's bytes; BadRecord (with a short reason) when it is not a valid one."""
    if not data:
        raise BadRecord("empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except BadRecord:
        raise
    except RecursionError:
        raise BadRecord("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise BadRecord(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise BadRecord(f"a JSON {type(value).__name__}, not an object")
    try:
        record = OutboxRecord.model_validate(value)
    except ValidationError as exc:
        # Locations and messages only: the input values are untrusted and may be huge.
        errors = [f"{key_path(e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()[:5]]
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise BadRecord("invalid alert record: " + "; ".join(errors) + more) from None
    except RecursionError:
        raise BadRecord("JSON nested too deeply") from None
    if record.sink != sink:
        raise BadRecord(f"alert for sink {record.sink!r} in the folder of {sink!r}")
    # The original dicts, not the models: strict validation changed nothing, and extra keys pass through.
    alert = Alert(id=record.id, seq=record.seq, sink=record.sink, kind=record.kind, source=record.source,
                  created=record.created, verdicts=tuple(value.get("verdicts") or ()), event=value.get("event"),
                  suppressed=value.get("suppressed"), host=record.host, external_url=record.external_url)
    if filename != Outbox.filename(alert):
        # remove() and expire() find the file by this name: a mismatch would deliver it again at every start.
        raise BadRecord(f"file name does not match the record (expected {Outbox.filename(alert)})")
    try:
        # Every sink formats from these: an alert that cannot be rendered would fail on every try.
        alert.title()
        alert.text()
        alert.payload_bytes()
    except (ArithmeticError, KeyError, TypeError, ValueError) as exc:
        raise BadRecord(f"cannot be rendered: {type(exc).__name__}: {str(exc)[:200]}") from None
    return alert


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
        try:
            # All or nothing: a refused write leaves no temporary file (atomic_write removes it).
            atomic_write(final, json.dumps(alert.to_json(), sort_keys=True).encode(), durable=True, mode=0o600)
        except OSError as exc:
            count_error("outbox", exc)
            raise
        return final

    def remove(self, alert: Alert) -> None:
        """Forget a delivered alert."""
        self.path(alert).unlink(missing_ok=True)

    def load(self, sink: str) -> list[Alert]:
        """The valid alerts waiting for `sink`, oldest first; bad files are set aside in `corrupt/`.

        Never raises for what is on disk: a folder that cannot be listed gives no alerts (logged), a file
        that cannot be moved aside is skipped (logged) and tried again at the next start.
        """
        folder = self.folder(sink)
        try:
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError as exc:
            metrics.ERRORS.labels("alerts").inc()
            log.error("alert_outbox_unreadable sink=%s error=%s", sink, log_safe(str(exc)))
            return []
        alerts = []
        for path in entries:
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    path.unlink(missing_ok=True)  # a write cut short by a crash: never acknowledged
                except OSError as exc:
                    log.warning("alert_outbox_tmp_left sink=%s file=%s error=%s", sink, log_safe(name),
                                log_safe(str(exc)))
                continue
            if not name.endswith(".json"):
                continue
            try:
                alert = self._read(path, sink)
            except BadRecord as exc:
                self._corrupt(path, sink, str(exc))
                continue
            if alert is not None:
                alerts.append(alert)
        alerts.sort(key=lambda a: a.seq)
        return alerts

    def _read(self, path: Path, sink: str) -> Alert | None:
        """The alert in one file; None for a folder (not ours to judge); BadRecord for anything bad."""
        try:
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                return None
            if not stat.S_ISREG(st.st_mode):
                # A FIFO would block the read for ever, a link may lead anywhere: neither is an alert we wrote.
                raise BadRecord("not a regular file")
            if st.st_size > MAX_RECORD_BYTES:
                raise BadRecord(f"{st.st_size} bytes, more than the {MAX_RECORD_BYTES} an alert can take")
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise BadRecord(f"cannot read: {exc.strerror or exc}") from None
        if len(data) > MAX_RECORD_BYTES:
            raise BadRecord(f"more than the {MAX_RECORD_BYTES} bytes an alert can take")
        return parse_record(data, sink, path.name)

    def _corrupt(self, path: Path, sink: str, reason: str) -> None:
        """Set a bad file aside in `corrupt/` with its reason; count and log it."""
        metrics.ALERT_OUTBOX_CORRUPT.labels(sink).inc()
        try:
            kept = self._set_aside(path, CORRUPT, reason)
        except OSError as exc:
            # Not queued either way; it is looked at again at the next start.
            metrics.ERRORS.labels("alerts").inc()
            log.error("alert_outbox_corrupt sink=%s file=%s kept=no reason=%s error=%s", sink,
                      log_safe(path.name), log_safe(reason), log_safe(str(exc)))
            return
        log.error("alert_outbox_corrupt sink=%s file=%s kept=%s reason=%s", sink, log_safe(path.name),
                  log_safe(str(kept)) if kept else "no", log_safe(reason))

    def expire(self, alert: Alert, keep: int, reason: str = "") -> Path | None:
        """Move an alert given up on to `expired/`, keeping the newest `keep` files there."""
        return self._set_aside(self.path(alert), EXPIRED, reason, keep)

    def reject(self, alert: Alert, reason: str, keep: int) -> Path | None:
        """Move an alert its sink refused for good to `rejected/` with the sink's answer as the reason."""
        return self._set_aside(self.path(alert), REJECTED, reason, keep)

    def _set_aside(self, path: Path, sub: str, reason: str = "", keep: int = 1000) -> Path | None:
        """Move `path` into `sub/` beside it, durably, with `<name>.reason.txt`; None when not kept.

        The reason is written first, so a crash never leaves a set-aside file without one (at worst a
        reason without its file, which pruning removes). Raises OSError when the disk refuses.
        """
        if keep <= 0:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
            return None
        target_dir = path.parent / sub
        target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        if reason:
            try:
                atomic_write(target_dir / (path.name + REASON_SUFFIX), (reason + "\n").encode(), durable=True,
                             mode=0o600)
            except OSError as exc:
                # A full disk must not keep the file in the queue: the move needs no space, and the reason
                # is in the log line that follows.
                log.warning("alert_reason_write_failed file=%s error=%s", log_safe(path.name), log_safe(str(exc)))
        try:
            os.replace(path, target)  # the same file system: a rename, atomic
        except FileNotFoundError:
            return None
        fsync_dir(target_dir)
        fsync_dir(path.parent)
        self._prune(target_dir, keep)
        return target

    @staticmethod
    def _prune(folder: Path, keep: int) -> None:
        """Keep the newest `keep` set-aside files (by name: the sequence number) with their reasons."""
        groups: dict[str, list[Path]] = {}
        for entry in folder.iterdir():
            base = entry.name.removesuffix(REASON_SUFFIX)
            groups.setdefault(base, []).append(entry)
        for base in sorted(groups)[: max(0, len(groups) - keep)]:
            for entry in groups[base]:
                try:
                    entry.unlink(missing_ok=True)
                except OSError as exc:  # a folder someone put there: leave it
                    log.warning("alert_outbox_prune_failed file=%s error=%s", log_safe(entry.name),
                                log_safe(str(exc)))

    def max_seq(self) -> int:
        """The highest sequence number of any waiting alert, -1 when there is none (or none can be read)."""
        best = -1
        try:
            if not self.root.is_dir():
                return best
            for folder in self.root.iterdir():
                if not folder.is_dir():
                    continue
                for path in folder.iterdir():
                    match = _FILENAME.match(path.name)
                    if match:
                        best = max(best, int(match.group(1)))
        except OSError as exc:
            # load() says which folder; numbering goes on from what was read.
            log.warning("alert_outbox_unreadable root=%s error=%s", log_safe(str(self.root)), log_safe(str(exc)))
        return best

    def sinks_on_disk(self) -> list[str]:
        """Sink folders present in the outbox (a sink removed from the config may have left some)."""
        try:
            if not self.root.is_dir():
                return []
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except OSError:
            return []

    def count(self, sink: str) -> int:
        folder = self.folder(sink)
        try:
            return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
        except OSError:
            return 0
