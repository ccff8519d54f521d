"""What the review page and its API ask of the journal: anomalies, recent normal verdicts and labels, by id.

The index reads `output.journal` and its rotated files (`journal.jsonl.1` .. `.N`) incrementally: it remembers
how far it read each file by inode (rotation renames a file and keeps its inode), so a refresh reads only the
lines written since the last one, and never a line twice. Only whole lines are read; a line being written is
read at the next refresh.

Memory is bounded: at most `max_anomalies` anomalies (oldest forgotten first), at most `max_normals` recent
normal verdicts (enough to label a missed defect seen lately), a normal verdict that has a label kept beside
them, and per-source minute counts for the last `COUNT_WINDOW_S`. Entries are slotted objects, not the
journal's dicts: 100,000 anomalies take tens of megabytes, not hundreds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor import labels as labelling
from monitor.records import Region

log = logging.getLogger(__name__)

MAX_ANOMALIES = 100_000
MAX_NORMALS = 50_000
MAX_SHADOWS = 50_000  # shadow verdict ids remembered only to say why one cannot be labelled
COUNT_WINDOW_S = 8 * 3600  # the longest span the overview counts (a shift)
BUCKET_S = 60
READ_CHUNK = 1 << 20


def _region(value: Any) -> tuple[int, int, int, int] | None:
    region = Region.from_json(value)
    return None if region is None else (region.x, region.y, region.w, region.h)


@dataclass(slots=True)
class Entry:
    """One verdict as the index keeps it (the journal line's fields, strings interned)."""

    seq: int  # order of reading: journal order, used for paging
    id: str
    time: float
    frame_time: float | None
    source: str
    path: str | None
    score: float
    threshold: float
    anomaly: bool
    evidence: str | None
    model: str | None
    model_id: str | None
    file: tuple[str, int, int] | None
    region: tuple[int, int, int, int] | None = None  # x, y, w, h of the hottest region (anomalies)
    original: str | None = None  # the kept copy of the input (output.originals), when one was kept

    def record(self) -> dict[str, Any]:
        """The verdict's journal line (the same keys, in the journal's order)."""
        out: dict[str, Any] = {"id": self.id, "time": self.time, "frame_time": self.frame_time, "source": self.source,
                               "path": self.path, "score": self.score, "threshold": self.threshold,
                               "anomaly": self.anomaly, "evidence": self.evidence}
        if self.model is not None:
            out["model"] = self.model
            out["model_id"] = self.model_id
        if self.region is not None:
            out["region"] = dict(zip(("x", "y", "w", "h"), self.region, strict=True))
        if self.original is not None:
            out["original"] = self.original
        if self.file is not None:
            out["file"] = {"name": self.file[0], "size": self.file[1], "mtime_ns": self.file[2]}
        return out


@dataclass(slots=True)
class Label:
    """The latest label of one verdict, and how many it had."""

    label: str
    note: str
    by: str
    time: float
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "note": self.note, "by": self.by, "time": self.time, "count": self.count}


@dataclass
class Query:
    """Filters and paging of `JournalIndex.anomalies`; None means no filter."""

    source: str | None = None
    since: float | None = None
    until: float | None = None
    label: str | None = None  # "none" (unlabelled), or one of monitor.labels.LABELS
    min_score: float | None = None
    max_score: float | None = None
    limit: int = 50
    offset: int = 0
    before: str | None = None  # a verdict id: only verdicts read before it (newest first paging)


@dataclass
class Page:
    """One page of verdicts, newest first, with their labels; `more` when another page follows."""

    entries: list[Entry]
    labels: dict[str, Label]
    total: int  # verdicts matching the filters (all pages)
    more: bool


@dataclass
class _SourceCounts:
    buckets: deque[list[int]] = field(default_factory=deque)  # [minute, scored, anomalies], oldest first


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return sys.intern(value) if isinstance(value, str) else None


class JournalIndex:
    """Anomalies, recent normal verdicts and labels of one journal; thread-safe; `refresh()` reads new lines."""

    def __init__(self, journal: Path, max_anomalies: int = MAX_ANOMALIES, max_normals: int = MAX_NORMALS) -> None:
        self.journal = Path(journal)
        self.max_anomalies = max_anomalies
        self.max_normals = max_normals
        self._lock = threading.Lock()
        self._offsets: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> bytes read (whole lines only)
        self._seq = 0
        self._anomalies: OrderedDict[str, Entry] = OrderedDict()
        self._normals: OrderedDict[str, Entry] = OrderedDict()
        self._kept: dict[str, Entry] = {}  # labelled normal verdicts, kept beyond max_normals
        # Shadow verdict id -> its primary's id. Shadow lines are a candidate model's opinion, not the line's
        # verdicts: never listed, counted or labelled (see `shadow_of`).
        self._shadows: OrderedDict[str, str] = OrderedDict()
        self._labels: dict[str, Label] = {}
        self._precision: dict[str, list[int]] = {}  # source -> [defects, false alarms], latest label per verdict
        self._counts: dict[str, _SourceCounts] = {}
        self.lines_read = 0
        self.lines_skipped = 0

    # --- reading ---------------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        """The journal's files, oldest first: `.N` .. `.1`, then the journal itself."""
        name = self.journal.name
        pattern = re.compile(re.escape(name) + r"\.([0-9]{1,4})")
        rotated: list[tuple[int, Path]] = []
        try:
            with os.scandir(self.journal.parent) as entries:
                for item in entries:
                    match = pattern.fullmatch(item.name)
                    if match:
                        rotated.append((int(match.group(1)), Path(item.path)))
        except OSError:
            return []
        return [p for _, p in sorted(rotated, reverse=True)] + [self.journal]

    def refresh(self) -> int:
        """Read the lines written since the last refresh; returns how many were read."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> int:
        before = self.lines_read
        seen: set[tuple[int, int]] = set()
        for path in self._files():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # rotated away between the listing and the open: read under its new name next time
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = (st.st_dev, st.st_ino)
                seen.add(key)
                offset = self._offsets.get(key, 0)
                if st.st_size < offset:  # cut back (a failed write undone) or a new file on an old inode
                    offset = 0
                if st.st_size == offset:
                    self._offsets[key] = offset
                    continue
                f.seek(offset)
                self._offsets[key] = self._read_lines(f, offset)
        # Files removed by rotation are forgotten, so a later file on a reused inode is read from its start.
        for key in set(self._offsets) - seen:
            del self._offsets[key]
        return self.lines_read - before

    def _read_lines(self, f: Any, offset: int) -> int:
        pending = b""
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                break
            data = pending + chunk
            end = data.rfind(b"\n")
            if end < 0:
                pending = data
                continue
            for line in data[:end].split(b"\n"):
                self._add_line(line)
            offset += end + 1
            pending = data[end + 1:]
        return offset  # a line without its newline yet is read again, whole, next time

    def _add_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a crash, or not UTF-8: the journal's own start-up check counts it
            self.lines_skipped += 1
            return
        if not isinstance(record, dict):
            self.lines_skipped += 1
            return
        self.lines_read += 1
        if "label" in record:
            if labelling.is_label_line(record):
                self._add_label(record)
            else:
                self.lines_skipped += 1
        elif "score" in record and labelling.is_verdict_id(record.get("id")):
            if record.get("shadow") is True:
                self._add_shadow(record)
            else:
                self._add_verdict(record)

    def _add_shadow(self, record: dict[str, Any]) -> None:
        primary = record.get("shadow_of")
        self._shadows[sys.intern(record["id"])] = primary if isinstance(primary, str) else ""
        while len(self._shadows) > MAX_SHADOWS:
            self._shadows.popitem(last=False)

    def _add_verdict(self, record: dict[str, Any]) -> None:
        score, threshold, when = _num(record.get("score")), _num(record.get("threshold")), _num(record.get("time"))
        source = _str(record.get("source"))
        if score is None or threshold is None or when is None or source is None:
            self.lines_skipped += 1
            return
        file = record.get("file")
        file_key = None
        if isinstance(file, dict) and isinstance(file.get("name"), str):
            file_key = (file["name"], int(file.get("size") or 0), int(file.get("mtime_ns") or 0))
        anomaly = record.get("anomaly") is True
        self._seq += 1
        entry = Entry(seq=self._seq, id=sys.intern(record["id"]), time=when, frame_time=_num(record.get("frame_time")),
                      source=source, path=record.get("path") if isinstance(record.get("path"), str) else None,
                      score=score, threshold=threshold, anomaly=anomaly, evidence=_str(record.get("evidence")),
                      model=_str(record.get("model")), model_id=_str(record.get("model_id")), file=file_key,
                      region=_region(record.get("region")), original=_str(record.get("original")))
        self._count(entry)
        if anomaly:
            self._anomalies[entry.id] = entry
            while len(self._anomalies) > self.max_anomalies:
                self._anomalies.popitem(last=False)
        else:
            self._normals[entry.id] = entry
            while len(self._normals) > self.max_normals:
                self._normals.popitem(last=False)

    def _count(self, entry: Entry) -> None:
        counts = self._counts.setdefault(entry.source, _SourceCounts())
        minute = int(entry.time // BUCKET_S)
        buckets = counts.buckets
        if buckets and buckets[-1][0] >= minute:
            bucket = buckets[-1]  # a line a few ms out of order counts in the newest minute
        else:
            bucket = [minute, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += int(entry.anomaly)
        while buckets and buckets[0][0] < minute - COUNT_WINDOW_S // BUCKET_S:
            buckets.popleft()

    def _add_label(self, record: dict[str, Any]) -> None:
        verdict = record["verdict"]
        previous = self._labels.get(verdict)
        label = Label(label=record["label"], note=record.get("note", ""), by=record.get("by", ""),
                      time=float(record["time"]), count=(previous.count + 1) if previous else 1)
        self._labels[verdict] = label
        normal = self._normals.get(verdict)
        if normal is not None:
            self._kept[verdict] = normal  # a labelled normal verdict outlives the window of recent ones
        entry = self._anomalies.get(verdict)
        if entry is not None:
            counts = self._precision.setdefault(entry.source, [0, 0])
            for change, which in ((-1, previous), (1, label)):
                if which is not None and which.label == labelling.DEFECT:
                    counts[0] += change
                elif which is not None and which.label == labelling.FALSE_ALARM:
                    counts[1] += change

    # --- asking ----------------------------------------------------------------------------------------
    def verdict(self, verdict_id: str) -> tuple[Entry, Label | None] | None:
        """The verdict called `verdict_id` and its latest label, or None when the index does not hold it."""
        with self._lock:
            entry = self._anomalies.get(verdict_id) or self._normals.get(verdict_id) or self._kept.get(verdict_id)
            if entry is None:
                return None
            return entry, self._labels.get(verdict_id)

    def shadow_of(self, verdict_id: str) -> str | None:
        """The primary verdict's id when `verdict_id` is a shadow verdict the index saw ("" if it names none),
        else None."""
        with self._lock:
            return self._shadows.get(verdict_id)

    def precision(self) -> dict[str, float]:
        """Labelled precision per source (latest label per verdict), for sources with a labelled anomaly."""
        with self._lock:
            out = {}
            for source, (defects, false_alarms) in self._precision.items():
                value = labelling.precision(defects, false_alarms)
                if value is not None:
                    out[source] = value
            return out

    def counts(self, now: float | None = None, rate_window_s: float = 300.0) -> dict[str, dict[str, float]]:
        """Per source: images a minute over the last `rate_window_s`, anomalies in the last hour and shift."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for source, counts in self._counts.items():
                scored = hour = shift = 0
                for minute, n, anomalies in counts.buckets:
                    start = minute * BUCKET_S
                    if start >= now - rate_window_s - BUCKET_S:
                        scored += n
                    if start >= now - 3600 - BUCKET_S:
                        hour += anomalies
                    if start >= now - COUNT_WINDOW_S - BUCKET_S:
                        shift += anomalies
                out[source] = {"per_minute": scored * 60.0 / (rate_window_s + BUCKET_S),
                               "anomalies_hour": hour, "anomalies_shift": shift}
        return out

    def sources(self) -> list[str]:
        """Names of the sources the journal has verdicts of (the index's window)."""
        with self._lock:
            return sorted(self._counts)

    def anomalies(self, query: Query) -> Page:
        """Verdicts matching `query`, newest first: anomalies, or with `label=missed_defect` the normal verdicts
        so labelled."""
        with self._lock:
            candidates = self._candidates(query.label)
            matched = list(self._matching(candidates, query))
            start = query.offset
            if query.before is not None:
                cursor = self._find(query.before)
                start = 0
                if cursor is not None:
                    matched = [e for e in matched if e.seq < cursor.seq]
            page = matched[start:start + query.limit]
            return Page(entries=page, labels={e.id: self._labels[e.id] for e in page if e.id in self._labels},
                        total=len(matched), more=start + query.limit < len(matched))

    def _find(self, verdict_id: str) -> Entry | None:
        return self._anomalies.get(verdict_id) or self._normals.get(verdict_id) or self._kept.get(verdict_id)

    def _candidates(self, label: str | None) -> Iterator[Entry]:
        if label in labelling.LABELS:
            # A specific label: walk the labels (a few thousand a year), not 100,000 anomalies.
            found = [e for v, lab in self._labels.items() if lab.label == label
                     and (e := self._find(v)) is not None]
            return iter(sorted(found, key=lambda e: e.seq, reverse=True))
        return reversed(self._anomalies.values())

    def _matching(self, candidates: Iterator[Entry], q: Query) -> Iterator[Entry]:
        for e in candidates:
            if q.source is not None and e.source != q.source:
                continue
            if q.since is not None and e.time < q.since:
                continue
            if q.until is not None and e.time > q.until:
                continue
            if q.min_score is not None and e.score < q.min_score:
                continue
            if q.max_score is not None and e.score > q.max_score:
                continue
            if q.label == "none" and e.id in self._labels:
                continue
            yield e

