"""The journal: every verdict and source event as one JSON line, appended, flushed, rotated by size.

Also what every state file read at start shares (the journal's tail here, the ledgers in
`monitor.sources.ledger`): a line is parsed strictly (UTF-8, one JSON object, finite numbers, bounded
integers and nesting) and validated by pydantic; a line that fails is skipped with a reason, counted in
`anomaly_monitor_state_records_rejected_total{file}` and summed up in one log line per file, never raised.
State files are written by this daemon, so a bad line means a crash, a disk fault or a person's editor; in
each case the daemon must still start, and a 10 MB corrupt file must not flood the log.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import stat
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from monitor import metrics
from monitor.files import LineFile, NotRegularFile, describe
from monitor.records import FileKey, Verdict

log = logging.getLogger(__name__)

# --- strict parsing of state lines ---------------------------------------------------------------

MAX_INT_DIGITS = 20  # 2**63 has 19 digits: a longer integer is never a size or a time, and costs to parse
MAX_NAME_CHARS = 4096  # PATH_MAX: no file name in a watched folder is longer
INT64_MAX = 2**63 - 1


class RecordRejected(ValueError):
    """One state line that is not a valid record; `reason` is a short fixed token for logs and tests."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuse_constant(name: str) -> float:
    # Python's json accepts NaN, Infinity and -Infinity; the daemon never writes them (allow_nan=False).
    raise RecordRejected("non_finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf without passing through parse_constant
        raise RecordRejected("non_finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RecordRejected("huge_number")
    return int(text)


def parse_object_line(raw: bytes) -> dict[str, Any]:
    """One line of a state file as a JSON object, or RecordRejected with the reason it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordRejected("not_utf8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecordRejected:
        raise
    except RecursionError:  # `[[[[...` thousands deep: the decoder recurses once per level
        raise RecordRejected("too_deep") from None
    except ValueError:
        raise RecordRejected("not_json") from None
    if not isinstance(value, dict):
        raise RecordRejected("not_object")
    return value


def _file_name(value: Any) -> str:
    # A plain validator, not pydantic's str: names from os.scandir carry lone surrogates for bytes that are
    # not UTF-8 (surrogateescape), which pydantic's core refuses; such a file must stay in the ledger.
    if not isinstance(value, str):
        raise PydanticCustomError("name_type", "a file name must be a string")
    if not value or len(value) > MAX_NAME_CHARS or "\x00" in value:
        raise PydanticCustomError("name_value", "a file name must be 1 to 4096 characters without NUL")
    return value


FileName = Annotated[str, PlainValidator(_file_name)]
Size = Annotated[int, Field(ge=0, le=INT64_MAX)]
# st_mtime_ns is signed: a camera PC with its clock at 1969 writes files with a negative mtime.
MtimeNs = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]


class FileRecord(BaseModel):
    """The `file` of a verdict line: the scored file version (FileKey._asdict())."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: FileName
    size: Size
    mtime_ns: MtimeNs

    def key(self) -> FileKey:
        return FileKey(self.name, self.size, self.mtime_ns)


class JournalTailRecord(BaseModel):
    """What start-up reads from a journal line: its source and scored file version; other keys pass through."""

    model_config = ConfigDict(strict=True, extra="allow")

    source: str | None = None
    file: FileRecord | None = None


_KNOWN_KEYS = frozenset({"source", "file", "name", "size", "mtime_ns", "p", "s", "m"})


def rejection_reason(exc: ValidationError) -> str:
    """A short reason for a record pydantic refused: `file.size.less_than_equal`.

    Only known key names and pydantic's error type go in it: an unknown key is text from the file, and
    must not reach the log.
    """
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid"
    err = errors[0]
    known = [part for part in err["loc"] if isinstance(part, str) and part in _KNOWN_KEYS]
    return ".".join([*known, err["type"]])


def parse_journal_record(raw: bytes) -> dict[str, Any]:
    """One journal line as a record: parsed strictly, then validated; RecordRejected with the reason otherwise.

    The one rule every reader of the journal applies (the daemon's tail, `replay`, `compare`, feedback).
    """
    try:
        record = parse_object_line(raw)
        JournalTailRecord.model_validate(record)
    except ValidationError as exc:
        raise RecordRejected(rejection_reason(exc)) from None
    except RecursionError:  # nesting the parser took but the validator's copy could not
        raise RecordRejected("too_deep") from None
    return record


class Rejections:
    """The bad lines of one state file, read once: counted per reason, logged once with the first line."""

    def __init__(self, file: str, path: Path) -> None:
        self.file = file  # "journal" or "ledger": the metric's label, from a fixed set
        self.path = path
        self.reasons: Counter[str] = Counter()
        self.first_line = 0
        self.first_reason = ""

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def add(self, line: int, reason: str) -> None:
        if not self.reasons:
            self.first_line, self.first_reason = line, reason
        self.reasons[reason] += 1

    def report(self, **extra: object) -> None:
        """One warning and one counter increment for all of the file's bad lines (none when it had none)."""
        if not self.reasons:
            return
        metrics.STATE_RECORDS_REJECTED.labels(self.file).inc(self.count)
        more = "".join(f" {k}={v}" for k, v in extra.items())
        reasons = ",".join(f"{r}:{n}" for r, n in self.reasons.most_common())
        log.warning("state_records_rejected file=%s path=%s count=%d first_line=%d reason=%s reasons=%s%s",
                    self.file, self.path, self.count, self.first_line, self.first_reason, reasons, more)


def _ends_with_newline(path: Path) -> bool:
    """False when the file's last line was cut by a crash (the next append would be glued onto it)."""
    try:
        # O_NONBLOCK: a FIFO at the journal's path must not block the start (LineFile then refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # nothing to repair that we can read; opening for append will say what is wrong
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return True
        return os.pread(fd, 1, st.st_size - 1) == b"\n"
    except OSError:
        return True
    finally:
        os.close(fd)


class Journal:
    """Append-only JSONL file; `journal.jsonl.1` .. `.N` hold older lines after rotation.

    Records wait in a queue until they are written: a write the disk refuses leaves the file as it was (no
    torn line: LineFile cuts it back) and the records in the queue, so the next `sync` or `append` writes each
    of them exactly once. The daemon retries `sync` while the disk is full (monitor.outputs).
    """

    def __init__(self, path: Path, max_bytes: int = 64 * 2**20, backups: int = 10) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._queued: deque[str] = deque()
        cut = self.path.exists() and not _ends_with_newline(self.path)
        self._file = LineFile(self.path)  # NotRegularFile for a FIFO, a socket, a device
        if cut:
            # A crash mid-line: end that line, so the first record of this run is a line of its own. Queued,
            # not written: a full disk must not stop the start (the first write of this run ends the line).
            self._queued.append("\n")

    @property
    def queued(self) -> int:
        """Records waiting to be written (the disk refused them so far)."""
        with self._lock:
            return len(self._queued)

    def enqueue(self, records: list[dict]) -> None:
        """Queue records for the next `sync` (or `append`), which writes them in order, each exactly once."""
        self._enqueue_lines([_line(r) for r in records])

    def enqueue_verdicts(self, verdicts: list[Verdict]) -> None:
        """`enqueue` of the verdicts' journal lines (see `verdict_line`)."""
        self._enqueue_lines([verdict_line(v) for v in verdicts])

    def _enqueue_lines(self, lines: list[str]) -> None:
        with self._lock:
            self._queued.extend(lines)

    def append(self, record: dict) -> None:
        """Write one line (after any still queued) and flush it to the OS: a crash of this process loses nothing
        written. Raises OSError when the disk refuses; the record then stays queued for the next write."""
        line = _line(record)
        with self._lock:
            self._queued.append(line)
            self._write_queued(durable=False)

    def sync(self) -> None:
        """Write what is queued and fsync: it survives a power cut too. Called once per batch, not per line.

        Raises OSError when the disk refuses; what is not durable is then queued again (the file cut back).
        """
        with self._lock:
            self._write_queued(durable=True)

    def _write_queued(self, durable: bool) -> None:
        # Lines written to the current file by this call, and where they began: an fsync that fails is undone
        # (cut back, queued again), since after a failed fsync Linux may drop the pages and report success later.
        start = self._file.ensure_open()
        written: list[str] = []
        try:
            while self._queued:
                size = self._file.size
                if size > 0 and size + len(self._queued[0]) > self.max_bytes:
                    self._file.sync()  # what went into this file is durable before it is renamed
                    self._rotate()
                    start, written = 0, []
                chunk = self._chunk(self.max_bytes - self._file.size)
                self._file.write_many(chunk)  # all or nothing
                for _ in chunk:
                    self._queued.popleft()
                written.extend(chunk)
            if durable:
                self._file.sync()
        except OSError:
            if written:
                self._undo(start, written)
            raise

    def _chunk(self, room: int) -> list[str]:
        """The queued lines that fit in `room` bytes, at least one (a line longer than the limit goes alone)."""
        chunk = [self._queued[0]]
        used = len(chunk[0])
        for line in itertools.islice(self._queued, 1, None):
            used += len(line)
            if used > room:
                break
            chunk.append(line)
        return chunk

    def _undo(self, start: int, written: list[str]) -> None:
        """Cut the current file back to `start` and queue `written` again (not when the cut failed: the lines
        are then still in the file, and queuing them again would write them twice)."""
        try:
            self._file.truncate(start)
        except OSError:
            return
        self._queued.extendleft(reversed(written))

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
        """Write what is still queued (one try), fsync and close."""
        with self._lock:
            if self._queued:
                try:
                    self._write_queued(durable=True)
                except OSError as exc:
                    # Their frames were not acknowledged: folder files are scored again at the next start.
                    log.error("journal_closed_with_unwritten_records count=%d error=%s", len(self._queued),
                              describe(exc))
            try:
                self._file.close()
            except OSError as exc:  # closed anyway; what the last fsync did not keep, the ledger does not say
                log.error("journal_close_failed path=%s error=%s", self.path, describe(exc))


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _line(record: dict) -> str:
    return _ENCODER.encode(record) + "\n"


_text = json.encoder.encode_basestring_ascii  # the encoder's own (C) string writer: ensure_ascii, as above


def _number(value: Any) -> str:
    # What the encoder writes for a number: repr of a plain float or int; anything else (a NaN, which it
    # refuses, a numpy scalar, a bool) through the encoder itself.
    kind = type(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    return _ENCODER.encode(value)


def verdict_line(verdict: Verdict) -> str:
    """`_line(verdict.to_json())`, made by hand for a primary verdict without a region (a normal image).

    Once per scored image: the dict and the encoder's pass cost the scorer's thread a few µs per file, which a
    line whose model is nearly free (a GPU) feels. Any other verdict goes through `to_json`.
    """
    v = verdict
    if v.region is not None or v.shadow:
        return _line(v.to_json())
    t, ft, score, threshold = v.scored_at, v.frame_time, v.score, v.threshold
    if (type(t) is float and type(ft) is float and type(score) is float and type(threshold) is float
            and math.isfinite(t + ft + score + threshold)):  # the usual case: repr is what the encoder writes
        t, ft, score, threshold = repr(t), repr(ft), repr(score), repr(threshold)
    else:
        t, ft, score, threshold = _number(t), _number(ft), _number(score), _number(threshold)
    path = "null" if v.path is None else _text(str(v.path))
    evidence = "null" if v.evidence is None else _text(str(v.evidence))
    anomaly = "true" if v.anomaly is True else "false" if v.anomaly is False else _ENCODER.encode(v.anomaly)
    line = (f'{{"id":{_text(v.id)},"time":{t},"frame_time":{ft},"source":{_text(v.source)},"path":{path},'
            f'"score":{score},"threshold":{threshold},"anomaly":{anomaly},"evidence":{evidence}')
    if v.original is not None:
        line += f',"original":{_text(str(v.original))}'
    if v.model is not None:
        line += f',"model":{_text(v.model)},"model_id":{_ENCODER.encode(v.model_id)}'
    if v.file_key is not None:
        key = v.file_key
        line += f',"file":{{"name":{_text(key.name)},"size":{_number(key.size)},"mtime_ns":{_number(key.mtime_ns)}}}'
    return line + "}\n"


def read_journal(path: Path) -> list[dict]:
    """All records of a journal file (not its rotated backups), in order."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_journal_tail(path: Path, max_bytes: int = 4 * 2**20) -> list[dict]:
    """The last records of a journal file, at most `max_bytes` of it, each a validated JSON object.

    A line that is not one (cut by a crash, not UTF-8, not an object, Infinity, a bad `file`) is skipped and
    counted; a journal that cannot be read gives no records. Never raises: the daemon must start either way,
    and the journal's tail only saves rescoring a few files.
    """
    path = Path(path)
    try:
        # O_NONBLOCK and regular files only: a FIFO at the journal's path would block a plain open for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFile(path, mode)
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        metrics.STATE_FILES_UNREADABLE.labels("journal").inc()
        log.warning("journal_unreadable path=%s error=%s action=start_without_tail", path,
                    (exc.strerror or type(exc).__name__).replace(" ", "_"))
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line is probably cut by the seek: not a bad record, just a partial one
    rejected = Rejections("journal", path)
    records: list[dict] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_journal_record(line)
        except RecordRejected as exc:
            rejected.add(lineno, exc.reason)
            continue
        records.append(record)
    # Line numbers count from the start of what was read; `from_byte` says where that was.
    rejected.report(from_byte=start)
    return records
