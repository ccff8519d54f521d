"""Operator labels: `defect` or `false_alarm` for an anomaly, `missed_defect` for a normal verdict.

A label is one journal line, appended beside the verdicts it names (the journal stays the one source of
truth; `monitor replay` and retraining read labels from it):

    {"time": 1795614900.1, "label": "false_alarm", "verdict": "<verdict id>", "note": "dust", "by": "local"}

A verdict may be labelled again: the latest label of a verdict wins, so a wrong click is corrected by a later
one, and a retried request only repeats the latest label.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from monitor import metrics

DEFECT = "defect"
FALSE_ALARM = "false_alarm"
MISSED_DEFECT = "missed_defect"
LABELS = (DEFECT, FALSE_ALARM, MISSED_DEFECT)
ANOMALY_LABELS = frozenset({DEFECT, FALSE_ALARM})  # what an operator may say of a flagged image
NORMAL_LABELS = frozenset({MISSED_DEFECT})  # ... and of one the model passed

MAX_NOTE_CHARS = 2000  # a sentence or two: the journal is not a ticket system
MAX_BY_CHARS = 64
VERDICT_ID = re.compile(r"[0-9a-f]{32}")

LABELS_TOTAL = metrics.LABELS_TOTAL
LABELLED_PRECISION = metrics.LABELLED_PRECISION


class LabelRefused(ValueError):
    """A label that does not fit its verdict (HTTP 400); the message says why."""


def is_verdict_id(value: Any) -> bool:
    """True for a verdict id as the journal writes it: 32 lower-case hex digits."""
    return isinstance(value, str) and VERDICT_ID.fullmatch(value) is not None


def check_label(label: Any, anomaly: bool) -> str:
    """`label` when it may be given to a verdict that is (`anomaly`) or is not an anomaly; LabelRefused if not."""
    if label not in LABELS:
        raise LabelRefused(f"label must be one of {', '.join(LABELS)}")
    if anomaly and label not in ANOMALY_LABELS:
        raise LabelRefused(f"an anomaly is labelled {DEFECT} or {FALSE_ALARM}, not {label}")
    if not anomaly and label not in NORMAL_LABELS:
        raise LabelRefused(f"a normal verdict can only be labelled {MISSED_DEFECT}, not {label}")
    return label


def clean_note(note: Any) -> str:
    """The note as the journal keeps it: a string, at most MAX_NOTE_CHARS, surrounding space removed."""
    if note is None:
        return ""
    if not isinstance(note, str):
        raise LabelRefused("note must be a string")
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise LabelRefused(f"note is longer than {MAX_NOTE_CHARS} characters")
    return note


def label_record(verdict: str, label: str, note: str = "", by: str = "local", at: float | None = None) -> dict:
    """The journal line of a label, in exactly the shape readers of the journal expect."""
    return {"time": time.time() if at is None else at, "label": label, "verdict": verdict, "note": note,
            "by": by[:MAX_BY_CHARS]}


def is_label_line(record: Any) -> bool:
    """True for a journal record that is a well-formed label line (verdicts and events are not)."""
    if not isinstance(record, dict):
        return False
    when = record.get("time")
    return (record.get("label") in LABELS and is_verdict_id(record.get("verdict"))
            and isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when)
            and isinstance(record.get("note", ""), str) and isinstance(record.get("by", ""), str))


def precision(defects: int, false_alarms: int) -> float | None:
    """defect / (defect + false_alarm), None before any anomaly is labelled."""
    total = defects + false_alarms
    return defects / total if total else None
