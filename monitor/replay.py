"""What-if threshold: replay a journal's scores through another threshold setting, compare the outcome with
what the daemon decided and with the operators' labels, and apply a chosen setting to the config file.

The replay judges each source's scores in journal order with `monitor.threshold.Threshold`, the very class the
daemon judges with, warm-started the way the daemon starts it (from the bundle's calibration scores), so a
replay with the config's own settings reproduces the journal's `anomaly` flags. Reading is separate from
replaying (`read_records`, then `replay`): the review page reads once and replays each setting a person tries.

No TensorFlow here: `monitor.model.bundle` imports it (through the score functions), so the few sidecar keys
the threshold needs are read from `bundle.json` directly; `monitor check-config` validates the whole sidecar.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import signal
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from monitor.commands import fail, parse_time
from monitor.config import Config, ConfigError, ThresholdConfig, load_config, parse_config
from monitor.files import atomic_write
from monitor.journal import RecordRejected, parse_journal_record
from monitor.threshold import Threshold

# Without a bundle there is no calibrated quantile or margin: these are Threshold's own defaults.
DEFAULT_QUANTILE = 0.999
DEFAULT_MARGIN = 1.0

# label -> is the verdict truly a defect. `missed_defect` marks a verdict the daemon called normal.
LABEL_TRUTH: dict[str, bool] = {"defect": True, "missed_defect": True, "false_alarm": False}

THRESHOLD_KEYS: tuple[str, ...] = tuple(ThresholdConfig.model_fields)
SIDECAR = "bundle.json"


class ReplayError(Exception):
    """A journal, a bundle or a config that the replay cannot use; the message is one line."""


# --- reading the journal ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """What the replay needs of one verdict line."""

    id: str | None  # None in journals written before verdicts had ids: such a verdict cannot be labelled
    time: float
    source: str
    score: float
    threshold: float | None
    anomaly: bool
    model_id: str | None


@dataclass
class JournalRecords:
    """A journal and its rotated files, read oldest line first."""

    files: list[Path]
    verdicts: list[VerdictRow] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # verdict id -> its latest label
    events: int = 0
    threshold_changes: int = 0  # `threshold_changed` events: the recorded flags before one used other settings
    shadows: int = 0  # shadow models' verdicts: not the line's decisions, left to `monitor compare`
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> bad lines skipped
    first_rejected: str | None = None  # "FILE:LINE reason" of the first bad line, for a person to look at

    @property
    def bad_lines(self) -> int:
        return sum(self.rejected.values())

    def _reject(self, path: Path, lineno: int, reason: str) -> None:
        if self.first_rejected is None:
            self.first_rejected = f"{path}:{lineno} {reason}"
        self.rejected[reason] += 1


def journal_files(journal: str | Path) -> list[Path]:
    """`journal.jsonl.N` ... `.1`, then `journal.jsonl`: the order they were written in (rotation renames
    the current file to `.1` and shifts older ones up). Only the regular files that are there."""
    journal = Path(journal)
    pattern = re.compile(re.escape(journal.name) + r"\.([0-9]{1,6})")
    rotated: list[tuple[int, Path]] = []
    if journal.parent.is_dir():
        for entry in journal.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                rotated.append((int(match.group(1)), entry))
    ordered = [p for _, p in sorted(rotated, reverse=True)] + [journal]
    return [p for p in ordered if p.is_file()]  # is_file: a FIFO there would block the read for ever


def read_records(journal: str | Path) -> JournalRecords:
    """Every verdict and label of a journal and its rotated files, in the order they were written.

    A line that is not a valid record (cut by a crash, not JSON, NaN, a wrong shape) is skipped and counted by
    reason, with the journal module's own strict parsing and validation, as the daemon does at start.
    ReplayError when there is no journal at all.
    """
    files = existing_journal_files(journal)
    records = JournalRecords(files=files)
    for path, lineno, line in journal_lines(files):
        _read_line(records, path, lineno, line)
    return records


def existing_journal_files(journal: str | Path) -> list[Path]:
    """`journal_files`, or ReplayError when there are none: a command given no journal says so."""
    files = journal_files(journal)
    if not files:
        raise ReplayError(f"{journal}: no journal there (nor rotated files beside it)")
    return files


def journal_lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number, line without its newline) of every non-blank line of `files`, in order; ReplayError
    on a refused read. Streamed: a journal of 100,000s of lines is never held whole."""
    for path in files:
        try:
            with open(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield path, lineno, line.rstrip(b"\n")
        except OSError as exc:
            raise ReplayError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None


def _read_line(records: JournalRecords, path: Path, lineno: int, line: bytes) -> None:
    try:
        record = parse_journal_record(line)
    except RecordRejected as exc:
        records._reject(path, lineno, exc.reason)
        return
    if "score" in record and record.get("shadow") is True:
        records.shadows += 1
    elif "score" in record:
        verdict = _verdict(record)
        if verdict is None:
            records._reject(path, lineno, "verdict_shape")
        else:
            records.verdicts.append(verdict)
    elif "label" in record:
        label, target = record.get("label"), record.get("verdict")
        if label not in LABEL_TRUTH or not isinstance(target, str):
            records._reject(path, lineno, "label_shape")
        else:
            # Later lines overwrite earlier ones: the latest label of a verdict wins (journal order is the
            # order they were made in; a clock stepped back does not reorder them).
            records.labels[target] = label
    elif "event" in record:
        records.events += 1
        records.threshold_changes += record.get("event") == "threshold_changed"
    else:
        records._reject(path, lineno, "unknown_record")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _verdict(record: dict) -> VerdictRow | None:
    vid, source, score = record.get("id"), record.get("source"), record.get("score")
    threshold, anomaly, when = record.get("threshold"), record.get("anomaly"), record.get("time")
    model_id = record.get("model_id")
    if not (isinstance(source, str) and _number(score) and isinstance(anomaly, bool) and _number(when)):
        return None
    if (vid is not None and not isinstance(vid, str)) or (threshold is not None and not _number(threshold)):
        return None
    return VerdictRow(id=vid, time=float(when), source=source, score=float(score),
                      threshold=None if threshold is None else float(threshold), anomaly=anomaly,
                      model_id=model_id if isinstance(model_id, str) else None)


# --- calibration: where a rolling threshold starts ----------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What the threshold needs of a bundle's sidecar: its calibration scores, quantile and margin."""

    scores: tuple[float, ...]
    quantile: float
    margin: float
    bundle: str  # the bundle folder, to say where the window started


def read_calibration(bundle: str | Path) -> Calibration:
    """The calibration of a bundle, from its `bundle.json` alone (no TensorFlow); ReplayError when the keys
    the threshold needs are missing or out of range."""
    path = Path(bundle) / SIDECAR
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    except (ValueError, RecursionError):
        raise ReplayError(f"{path}: not valid JSON") from None
    cal = meta.get("calibration") if isinstance(meta, dict) else None
    thr = meta.get("threshold") if isinstance(meta, dict) else None
    scores = cal.get("scores") if isinstance(cal, dict) else None
    if not isinstance(scores, list) or not scores or not all(_number(s) and math.isfinite(s) for s in scores):
        raise ReplayError(f"{path}: calibration.scores: must be a non-empty list of finite numbers")
    quantile = thr.get("quantile") if isinstance(thr, dict) else None
    margin = thr.get("margin", 1.0) if isinstance(thr, dict) else None
    if not (_number(quantile) and 0 < quantile < 1):
        raise ReplayError(f"{path}: threshold.quantile: must be a number between 0 and 1")
    if not (_number(margin) and 0 < margin < math.inf):
        raise ReplayError(f"{path}: threshold.margin: must be a positive number")
    return Calibration(tuple(float(s) for s in scores), float(quantile), float(margin), str(Path(bundle)))


def calibrations_for(config: Config) -> tuple[dict[str, Calibration], dict[str, str]]:
    """Each configured source's calibration (its model's bundle), and why a source has none.

    A bundle that cannot be read is not an error here: the replay is an analysis, often run away from the
    line's machine, and that source then starts from the journal's first scores (and says so).
    """
    found: dict[str, Calibration] = {}
    missing: dict[str, str] = {}
    by_model: dict[str, Calibration | str] = {}
    for source in config.sources:
        if source.model not in by_model:
            try:
                by_model[source.model] = read_calibration(config.models[source.model])
            except ReplayError as exc:
                by_model[source.model] = str(exc)
        entry = by_model[source.model]
        if isinstance(entry, Calibration):
            found[source.name] = entry
        else:
            missing[source.name] = entry
    return found, missing


# --- the replay ---------------------------------------------------------------------------------------


@dataclass
class Counts:
    """Alerts and, on labelled verdicts, the confusion matrix of one threshold over some verdicts."""

    verdicts: int = 0
    alerts: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, anomaly: bool, defect: bool | None) -> None:
        """Count one verdict; `defect` is its label's truth, None when unlabelled."""
        self.verdicts += 1
        self.alerts += anomaly
        if defect is not None:
            if anomaly:
                self.tp += defect
                self.fp += not defect
            else:
                self.fn += defect
                self.tn += not defect

    def merge(self, other: Counts) -> None:
        for name in ("verdicts", "alerts", "tp", "fp", "fn", "tn"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def labelled(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def alert_rate(self) -> float | None:
        return self.alerts / self.verdicts if self.verdicts else None

    @property
    def precision(self) -> float | None:
        """Of the labelled alerts, the share that are defects; None without a labelled alert."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """Of the labelled defects, the share alerted; None without a labelled defect."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def to_json(self) -> dict[str, Any]:
        return {"verdicts": self.verdicts, "alerts": self.alerts, "alert_rate": self.alert_rate,
                "labelled": self.labelled, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": self.precision, "recall": self.recall}


@dataclass(frozen=True, slots=True)
class ChangedVerdict:
    """A verdict whose what-if outcome differs from the journal's."""

    id: str | None
    source: str
    time: float
    score: float
    recorded_threshold: float | None
    threshold: float  # the what-if threshold it was judged against
    anomaly: bool  # the what-if outcome (the journal's is the opposite)


@dataclass
class SourceReplay:
    """One source: the journal's outcome and the what-if outcome over the same verdicts."""

    source: str
    start: str  # where the what-if window started: "fixed", "bundle PATH", "journal: first N verdicts"
    quantile: float | None  # the effective what-if setting (None for a fixed threshold)
    margin: float | None
    fixed: float | None
    warmup: int = 0  # verdicts used to start the window from the journal: judged by neither row
    recorded: Counts = field(default_factory=Counts)
    what_if: Counts = field(default_factory=Counts)
    to_anomaly: int = 0  # normal in the journal, anomaly in the what-if
    to_normal: int = 0
    last_threshold: float | None = None  # the what-if threshold after the last verdict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "start": self.start, "quantile": self.quantile, "margin": self.margin,
                "fixed": self.fixed, "warmup": self.warmup, "recorded": self.recorded.to_json(),
                "what_if": self.what_if.to_json(), "to_anomaly": self.to_anomaly, "to_normal": self.to_normal,
                "last_threshold": self.last_threshold, "notes": self.notes}


@dataclass
class ReplayResult:
    """Per source and overall: the journal's thresholds against the what-if setting."""

    settings: ThresholdConfig
    sources: dict[str, SourceReplay]
    recorded: Counts
    what_if: Counts
    to_anomaly: int
    to_normal: int
    changed: list[ChangedVerdict]  # not in to_json: the review page lists them, the CLI counts them
    since: float | None = None
    until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings.model_dump(), "since": self.since, "until": self.until,
                "recorded": self.recorded.to_json(), "what_if": self.what_if.to_json(),
                "to_anomaly": self.to_anomaly, "to_normal": self.to_normal,
                "sources": {name: s.to_json() for name, s in self.sources.items()}}


def replay(
    records: JournalRecords,
    settings: ThresholdConfig,
    calibration: Mapping[str, Calibration] | None = None,
    *,
    source: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> ReplayResult:
    """Judge every source's scores, in journal order, with a `Threshold` of `settings`.

    `calibration` (by source) starts a rolling window the way the daemon starts it, with the bundle's
    quantile and margin where `settings` leaves them unset. A source without one starts from its first
    `window` verdicts in the journal (their normal scores, or all with learn_from_anomalies), which are then
    counted in neither row: nothing judged them with a window of their own.

    All verdicts pass through the threshold, so its window at `since` is what it would have been; only those
    with since <= time < until are counted. A verdict's label is its latest one.
    """
    calibration = calibration or {}
    by_source: dict[str, list[VerdictRow]] = {}
    for row in records.verdicts:
        if source is None or row.source == source:
            by_source.setdefault(row.source, []).append(row)
    result = ReplayResult(settings=settings, sources={}, recorded=Counts(), what_if=Counts(), to_anomaly=0,
                          to_normal=0, changed=[], since=since, until=until)
    for name, rows in by_source.items():
        item = _replay_source(name, rows, settings, calibration.get(name), records.labels, since, until,
                              result.changed)
        result.sources[name] = item
        result.recorded.merge(item.recorded)
        result.what_if.merge(item.what_if)
        result.to_anomaly += item.to_anomaly
        result.to_normal += item.to_normal
    return result


def _replay_source(name: str, rows: list[VerdictRow], settings: ThresholdConfig, cal: Calibration | None,
                   labels: Mapping[str, str], since: float | None, until: float | None,
                   changed: list[ChangedVerdict]) -> SourceReplay:
    threshold, item = _start(name, rows, settings, cal)
    models = {r.model_id for r in rows if r.model_id is not None}
    if len(models) > 1:
        item.notes.append(f"{len(models)} models scored these verdicts: the replay keeps one window across them "
                          "(the daemon started again from each new bundle's calibration)")
    lo = -math.inf if since is None else since
    hi = math.inf if until is None else until
    for row in rows[item.warmup:]:
        anomaly, used = threshold.judge(row.score)
        if not lo <= row.time < hi:
            continue
        label = labels.get(row.id) if row.id is not None else None
        defect = LABEL_TRUTH[label] if label is not None else None
        item.recorded.add(row.anomaly, defect)
        item.what_if.add(anomaly, defect)
        if anomaly != row.anomaly:
            if anomaly:
                item.to_anomaly += 1
            else:
                item.to_normal += 1
            changed.append(ChangedVerdict(row.id, name, row.time, row.score, row.threshold, used, anomaly))
    item.last_threshold = threshold.value
    return item


def _start(name: str, rows: list[VerdictRow], settings: ThresholdConfig,
           cal: Calibration | None) -> tuple[Threshold, SourceReplay]:
    """The source's what-if threshold, ready for its first counted verdict, and its (empty) report."""
    if settings.fixed is not None:
        item = SourceReplay(name, "fixed", None, None, settings.fixed)
        return Threshold(fixed=settings.fixed), item
    if cal is not None:
        quantile = settings.quantile if settings.quantile is not None else cal.quantile
        margin = settings.margin if settings.margin is not None else cal.margin
        item = SourceReplay(name, f"bundle {cal.bundle}", quantile, margin, None)
        scores: Iterable[float] = cal.scores
    else:
        quantile = settings.quantile if settings.quantile is not None else DEFAULT_QUANTILE
        margin = settings.margin if settings.margin is not None else DEFAULT_MARGIN
        warm = rows[:settings.window]
        # The daemon's window holds normal scores only (unless learn_from_anomalies): the journal's own flags
        # say which those were. All of them when every one was an anomaly, rather than no start at all.
        scores = [r.score for r in warm if settings.learn_from_anomalies or not r.anomaly] or [r.score for r in warm]
        item = SourceReplay(name, f"journal: first {len(warm)} verdicts", quantile, margin, None, warmup=len(warm))
        item.notes.append(f"no bundle: the window started from the journal's first {len(warm)} verdicts, "
                          "which are not counted")
        if not scores:
            return Threshold(fixed=math.inf), item  # no verdicts: nothing is judged
    threshold = Threshold(quantile=quantile, window=settings.window, margin=margin, calibration=scores,
                          learn_from_anomalies=settings.learn_from_anomalies)
    return threshold, item


# --- applying a setting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChange:
    """A threshold section before and after an edit (every key of ThresholdConfig; None: unset), and who."""

    old: dict[str, Any]
    new: dict[str, Any]
    by: str

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        """key -> (old, new) for the keys whose value changed."""
        return {k: (self.old.get(k), self.new.get(k)) for k in THRESHOLD_KEYS if self.old.get(k) != self.new.get(k)}


def apply_threshold(config_path: str | Path, changes: Mapping[str, Any], by: str) -> ThresholdChange:
    """Set keys of the config file's `threshold:` section (a value of None removes the key: the bundle's or
    the default applies), validate the whole new config, and write the file atomically.

    A minimal text edit, not a YAML round trip: only the changed keys' values (or lines) change, so the
    file's comments, order and quoting stay as the person wrote them. The edit is checked by reading it back:
    the threshold section must hold the new values and every other key must be as before, else nothing is
    written (ReplayError). ConfigError when the file, or the config it would become, is not valid.
    """
    unknown = sorted(set(changes) - set(THRESHOLD_KEYS))
    if unknown:
        raise ValueError(f"not threshold keys: {', '.join(unknown)} (known: {', '.join(THRESHOLD_KEYS)})")
    # The link's target is edited: replacing a symlinked config with a plain file would cut it off its origin.
    path = Path(config_path).resolve()
    old_config = load_config(path)  # a working config is edited, never a broken one repaired blindly
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    raw = data.get("threshold")
    section: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    for key, value in changes.items():
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value
    new_config = parse_config({**data, "threshold": section}, path)
    # The values as the schema read them: "0.99" from a command line or a form is written as 0.99, not '0.99'.
    section = {k: (getattr(new_config.threshold, k) if k in THRESHOLD_KEYS else v) for k, v in section.items()}
    change = ThresholdChange(old=old_config.threshold.model_dump(), new=new_config.threshold.model_dump(), by=by)
    if section == (raw if isinstance(raw, dict) else {}):
        return change  # nothing to write
    new_text = _edit_threshold(text, section)
    expected = {**data, "threshold": section} if section else {k: v for k, v in data.items() if k != "threshold"}
    if yaml.safe_load(new_text) != expected:
        raise ReplayError(f"{path}: threshold: cannot edit this section in place (anchors, merge keys, an "
                          "unusual layout?); edit the file by hand")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    atomic_write(path, new_text.encode("utf-8"), durable=True, mode=mode)
    return change


def _scalar(value: Any) -> str:
    # PyYAML's own spelling, so that what is written reads back as the same value: 1e-05 would read back
    # as a string, 1.0e-05 is a float.
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _flow(section: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in section.items()) + "}"


def _line_end(text: str, index: int) -> int:
    """The index just past the newline ending the line that holds `index` (len(text) on the last line)."""
    end = text.find("\n", index)
    return len(text) if end < 0 else end + 1


def _edit_threshold(text: str, section: Mapping[str, Any]) -> str:
    """`text` with its top-level `threshold:` section holding exactly `section`; the rest untouched."""
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise ReplayError("the config's top level is not a mapping")
    found = None
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "threshold":
            found = (key_node, value_node)  # the last one: YAML's later duplicate key wins
    if found is None:
        if not section:
            return text
        sep = "\n" if text and not text.endswith("\n") else ""
        body = "".join(f"  {k}: {_scalar(v)}\n" for k, v in section.items())
        return f"{text}{sep}threshold:\n{body}"
    key_node, value_node = found
    if not section:  # nothing left to set: the section goes, comments inside it with it
        start = text.rfind("\n", 0, key_node.start_mark.index) + 1
        return text[:start] + text[_line_end(text, max(value_node.end_mark.index - 1, key_node.end_mark.index)):]
    if isinstance(value_node, yaml.MappingNode) and not value_node.flow_style and value_node.value:
        return _edit_block(text, value_node, section)
    # An inline `{...}` (an empty `threshold:` is not a valid config, refused before this): rewritten inline.
    return text[:value_node.start_mark.index] + _flow(section) + text[value_node.end_mark.index:]


def _edit_block(text: str, node: yaml.MappingNode, section: Mapping[str, Any]) -> str:
    """A block mapping edited key by key: values replaced in place, keys removed with their line, new keys
    added as lines after the last one, at the same indentation."""
    edits: list[tuple[int, int, str]] = []
    present: set[str] = set()
    for key_node, value_node in node.value:
        key = key_node.value
        present.add(key)
        if key not in section:
            start = text.rfind("\n", 0, key_node.start_mark.index) + 1
            edits.append((start, _line_end(text, value_node.end_mark.index), ""))
        elif yaml.safe_load(text[value_node.start_mark.index:value_node.end_mark.index]) != section[key]:
            edits.append((value_node.start_mark.index, value_node.end_mark.index, _scalar(section[key])))
    added = [k for k in section if k not in present]
    if added:
        indent = " " * node.value[0][0].start_mark.column
        at = _line_end(text, node.value[-1][1].end_mark.index)
        lead = "\n" if at == len(text) and not text.endswith("\n") else ""
        edits.append((at, at, lead + "".join(f"{indent}{k}: {_scalar(section[k])}\n" for k in added)))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def threshold_changed_event(change: ThresholdChange, now: float | None = None) -> dict[str, Any]:
    """The journal line that records an applied threshold: who, and the old and new values."""
    detail = "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in change.changed.items())
    return {"time": time.time() if now is None else now, "event": "threshold_changed", "source": "daemon",
            "detail": detail or "unchanged", "by": change.by, "old": change.old, "new": change.new}


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def append_journal_line(journal: str | Path, record: Mapping[str, Any]) -> None:
    """Append one record to a journal from outside the daemon: one write() on an O_APPEND descriptor, so it
    never interleaves with the daemon's lines. In the daemon's process use its `Journal.append` instead.

    The daemon counts the bytes it wrote itself, so it rotates one line later than it would have; on a full
    disk its cut-back could take this line with it. A cut last line (a crash) is ended first.
    """
    line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(journal, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{journal}: not a regular file")
        if st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
            line = b"\n" + line
        if os.write(fd, line) != len(line):
            raise OSError(f"{journal}: short write (disk full?)")
    finally:
        os.close(fd)


# --- the command line ---------------------------------------------------------------------------------

RELOAD_HINT = "reload the daemon: systemctl reload anomaly-monitor"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `replay` to the `monitor` command line."""
    p = subparsers.add_parser(
        "replay", help="what-if threshold: replay the journal's scores through another setting",
        description="Replay the journal's scores through a threshold setting and compare alerts, precision and "
                    "recall (on labelled verdicts) with what the daemon decided. Values are read as text and "
                    "checked like the config's threshold section.")
    p.add_argument("--config", metavar="FILE", help="YAML config: its journal, threshold section and bundles")
    p.add_argument("--journal", metavar="FILE", help="a journal file without a config (window starts from it)")
    p.add_argument("--source", metavar="NAME", help="this source only")
    p.add_argument("--quantile", metavar="Q", help="what-if quantile (drops fixed)")
    p.add_argument("--margin", metavar="M", help="what-if margin")
    p.add_argument("--window", metavar="N", help="what-if window")
    p.add_argument("--fixed", metavar="T", help="what-if fixed threshold (drops quantile)")
    p.add_argument("--learn-from-anomalies", dest="learn_from_anomalies", action=argparse.BooleanOptionalAction,
                   default=None, help="let anomalous scores into the window")
    p.add_argument("--since", metavar="T", help="count verdicts from this time (Unix seconds or ISO 8601)")
    p.add_argument("--until", metavar="T", help="count verdicts before this time")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--apply", action="store_true",
                   help="write the what-if setting into the config's threshold section, record it in the "
                        "journal and reload the daemon (--pid/--pidfile) or say how")
    p.add_argument("--by", metavar="NAME", help="who applies it (default: the login name)")
    p.add_argument("--pid", metavar="PID", help="with --apply: send SIGHUP to this process")
    p.add_argument("--pidfile", metavar="FILE", help="with --apply: send SIGHUP to the process named in it")
    p.set_defaults(func=_cmd_replay)


def _flag_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The threshold keys the flags set (as text; ThresholdConfig converts and checks them)."""
    changes: dict[str, Any] = {}
    if args.fixed is not None:
        changes.update(fixed=args.fixed, quantile=None)
    if args.quantile is not None:
        changes.update(quantile=args.quantile, fixed=None)
    for key in ("margin", "window", "learn_from_anomalies"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    return changes


def _settings(base: ThresholdConfig, changes: Mapping[str, Any]) -> ThresholdConfig:
    try:
        return ThresholdConfig.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        flag = f"--{key.replace('_', '-')}" if key else "--quantile/--fixed"
        raise ValueError(f"{flag}: {err['msg']}") from None


def _cmd_replay(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.journal is None):
        return fail("replay: give either --config FILE or --journal FILE")
    if args.fixed is not None and args.quantile is not None:
        return fail("replay: set either --fixed or --quantile, not both")
    if args.apply and args.config is None:
        return fail("replay: --apply needs --config (the file it writes)")
    if (args.pid or args.pidfile) and not args.apply:
        return fail("replay: --pid and --pidfile go with --apply")
    if args.pid and args.pidfile:
        return fail("replay: give either --pid or --pidfile")
    changes = _flag_changes(args)
    if args.apply and not changes:
        return fail("replay: --apply needs a setting to apply (--quantile, --margin, --window, --fixed, "
                    "--learn-from-anomalies)")
    config: Config | None = None
    calibration: dict[str, Calibration] = {}
    missing: dict[str, str] = {}
    try:
        since = None if args.since is None else parse_time(args.since, "--since")
        until = None if args.until is None else parse_time(args.until, "--until")
        if args.config is not None:
            config = load_config(args.config)
            calibration, missing = calibrations_for(config)
            journal: Path = config.output.journal
            base = config.threshold
        else:
            journal, base = Path(args.journal), ThresholdConfig()
        settings = _settings(base, changes)
        records = read_records(journal)
    except (ConfigError, ReplayError, ValueError) as exc:
        return fail(str(exc))
    known = {r.source for r in records.verdicts} | ({s.name for s in config.sources} if config else set())
    if args.source is not None and args.source not in known:
        return fail(f"replay: no source {args.source!r} in the journal or the config")
    result = replay(records, settings, calibration, source=args.source, since=since, until=until)
    for name, why in missing.items():
        if name in result.sources and settings.fixed is None:
            result.sources[name].notes.append(f"bundle unreadable: {why}")
    if args.json:
        print(json.dumps({"journal": _journal_json(records), **result.to_json()}))
    else:
        print(format_table(records, result))
    if not args.apply:
        return 0
    return _apply(args, config, changes)


def _apply(args: argparse.Namespace, config: Config, changes: Mapping[str, Any]) -> int:
    by = args.by or _login()
    try:
        pid = _target_pid(args)
        change = apply_threshold(args.config, changes, by)
    except (ConfigError, ReplayError, ValueError, OSError) as exc:
        return fail(str(exc))
    if not change.changed:
        print(f"{args.config}: threshold unchanged, nothing written", file=sys.stderr)
        return 0
    print(f"{args.config}: threshold written: {threshold_changed_event(change)['detail']} (by {by})",
          file=sys.stderr)
    try:
        append_journal_line(config.output.journal, threshold_changed_event(change))
    except OSError as exc:  # the config is written: a journal that refuses the line must not hide that
        print(f"warning: the change is not in the journal: {exc}", file=sys.stderr)
    if pid is None:
        print(RELOAD_HINT, file=sys.stderr)
        return 0
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"error: cannot signal process {pid}: {exc.strerror or exc}; {RELOAD_HINT}", file=sys.stderr)
        return 1
    print(f"reload requested: SIGHUP sent to process {pid}", file=sys.stderr)
    return 0


def _target_pid(args: argparse.Namespace) -> int | None:
    """The daemon's process id from --pid or --pidfile, checked before anything is written."""
    text, where = (args.pid, "--pid") if args.pid else (None, "--pidfile")
    if args.pidfile:
        try:
            text = Path(args.pidfile).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--pidfile: cannot read {args.pidfile}: {getattr(exc, 'strerror', None) or exc}") \
                from None
    if text is None:
        return None
    if not text.isdigit() or int(text) < 2:  # 0 and 1 would signal a process group or init
        raise ValueError(f"{where}: not a process id: {text!r}")
    return int(text)


def _login() -> str:
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a container)
        return f"uid {os.getuid()}"


def _journal_json(records: JournalRecords) -> dict[str, Any]:
    return {"files": [str(p) for p in records.files], "verdicts": len(records.verdicts),
            "labels": len(records.labels), "events": records.events,
            "threshold_changes": records.threshold_changes, "bad_lines": records.bad_lines,
            "bad_reasons": dict(records.rejected), "first_bad_line": records.first_rejected}


# --- the table ----------------------------------------------------------------------------------------

_COLUMNS = ("source", "threshold", "verdicts", "alerts", "rate", "TP", "FP", "FN", "TN", "precision", "recall",
            "->anomaly", "->normal")


def _ratio(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if percent else f"{value:.3f}"


def _row(source: str, which: str, counts: Counts, changes: tuple[int, int] | None) -> list[str]:
    return [source, which, str(counts.verdicts), str(counts.alerts), _ratio(counts.alert_rate, True),
            str(counts.tp), str(counts.fp), str(counts.fn), str(counts.tn), _ratio(counts.precision),
            _ratio(counts.recall), *(map(str, changes) if changes else ("", ""))]


def format_table(records: JournalRecords, result: ReplayResult) -> str:
    """The replay for a person: where it read, the setting, then a recorded and a what-if row per source."""
    s = result.settings
    rotated = len(records.files) - 1
    head = f"journal: {records.files[-1] if records.files else '-'}"
    if rotated > 0:
        head += f" (+{rotated} rotated)"
    head += f", {len(records.verdicts)} verdicts, {len(records.labels)} labelled"
    if records.bad_lines:
        reasons = ", ".join(f"{r}: {n}" for r, n in records.rejected.most_common())
        head += f", {records.bad_lines} bad lines skipped ({reasons})"
    lines = [head]
    setting = (f"fixed {s.fixed:g}" if s.fixed is not None else
               f"quantile {_opt(s.quantile, DEFAULT_QUANTILE)}, margin {_opt(s.margin, DEFAULT_MARGIN)}, "
               f"window {s.window}, learn_from_anomalies {'yes' if s.learn_from_anomalies else 'no'}")
    lines.append(f"what-if: {setting}")
    table = [list(_COLUMNS)]
    notes: list[str] = []
    for name, item in result.sources.items():
        table.append(_row(name, "recorded", item.recorded, None))
        table.append(_row(name, "what-if", item.what_if, (item.to_anomaly, item.to_normal)))
        effective = "fixed" if item.fixed is not None else f"q {item.quantile:g} x {item.margin:g}"
        notes.append(f"{name}: {effective}, window from {item.start}"
                     + (f", now {item.last_threshold:.6g}" if item.last_threshold is not None
                        and math.isfinite(item.last_threshold) else ""))
        notes.extend(f"{name}: {note}" for note in item.notes)
    if len(result.sources) > 1:
        table.append(_row("all", "recorded", result.recorded, None))
        table.append(_row("all", "what-if", result.what_if, (result.to_anomaly, result.to_normal)))
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    lines.append("")
    for row in table:  # names left-aligned, numbers right-aligned
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    if not result.sources:
        lines.append("(no verdicts to replay)")
    lines.append("")
    lines.extend(notes)
    if records.threshold_changes:
        lines.append(f"the journal records {records.threshold_changes} threshold change(s): its recorded row mixes "
                     "the settings in force at each time")
    return "\n".join(lines)


def _opt(value: float | None, default: float) -> str:
    return f"bundle's (else {default:g})" if value is None else f"{value:g}"
