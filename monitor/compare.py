"""Shadow against primary: how a candidate model running in shadow (`shadow:` of a source) would have done.

The daemon journals a shadow model's verdict beside the primary verdict of the same frame, marked
`"shadow": true` and naming the primary by `"shadow_of": "<id>"`. This module pairs them and reports, per
(source, primary model, shadow model): frames paired, agreement (both flag or both pass), each model's alert
volume (in all and per hour over the span), the disagreements both ways, and on labelled frames each model's
precision and recall. Labels are put on primary verdicts; a label says what the frame was, so it judges both
models: `defect` and `missed_defect` mean a defect, `false_alarm` none (the latest label of a verdict wins).

`monitor compare` (the command line) and the review page's `/compare` and `GET /api/compare` use the same
`read_journal` and `compare`, so they give the same figures. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.commands import fail, finite, parse_time
from monitor.config import ConfigError, load_config
from monitor.journal import RecordRejected, parse_journal_record
from monitor.replay import LABEL_TRUTH, Counts, ReplayError, existing_journal_files, journal_lines

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class ShadowRow:
    """What the comparison needs of one verdict line (a primary's or a shadow's)."""

    id: str
    time: float
    source: str
    anomaly: bool
    model: str
    model_id: str | None
    shadow_of: str | None = None  # a shadow verdict's primary; None for a primary verdict


@dataclass
class ShadowJournal:
    """A journal and its rotated files, read oldest line first: the verdicts a shadow names, every shadow
    verdict, and the latest label of each verdict."""

    files: list[Path]
    primaries: dict[str, ShadowRow] = field(default_factory=dict)  # id -> the line's own verdict
    shadows: list[ShadowRow] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    bad_lines: int = 0

    def counts(self) -> dict[str, int]:
        """How much was read, as the API answers it (never a path)."""
        return {"files": len(self.files), "verdicts": len(self.primaries), "shadows": len(self.shadows),
                "labels": len(self.labels), "bad_lines": self.bad_lines}


def read_journal(journal: str | Path) -> ShadowJournal:
    """The verdicts, shadow verdicts and labels of a journal and its rotated files; ReplayError without one.

    A line that is not a valid record is skipped and counted, with the journal module's strict parsing (as
    `monitor replay` reads it).
    """
    files = existing_journal_files(journal)
    out = ShadowJournal(files=files)
    for _path, _lineno, line in journal_lines(files):
        _read_line(out, line)
    return out


def _read_line(out: ShadowJournal, line: bytes) -> None:
    try:
        record = parse_journal_record(line)
    except RecordRejected:
        out.bad_lines += 1
        return
    if "score" in record:
        row = _row(record)
        if row is None:
            out.bad_lines += 1
        elif row.shadow_of is not None:
            out.shadows.append(row)
        else:
            out.primaries[row.id] = row
    elif "label" in record:
        label, target = record.get("label"), record.get("verdict")
        if label in LABEL_TRUTH and isinstance(target, str):
            out.labels[target] = label  # later lines overwrite earlier ones: the latest label wins


def _row(record: dict) -> ShadowRow | None:
    vid, source, anomaly, when = record.get("id"), record.get("source"), record.get("anomaly"), record.get("time")
    model, model_id = record.get("model"), record.get("model_id")
    if not (isinstance(vid, str) and isinstance(source, str) and isinstance(anomaly, bool)
            and isinstance(when, (int, float)) and not isinstance(when, bool)):  # finite: parse_journal_record
        return None
    shadow_of = None
    if record.get("shadow") is True:
        shadow_of = record.get("shadow_of")
        if not isinstance(shadow_of, str):
            return None
    return ShadowRow(id=vid, time=float(when), source=source, anomaly=anomaly,
                     model=model if isinstance(model, str) else "default",
                     model_id=model_id if isinstance(model_id, str) else None, shadow_of=shadow_of)


# --- the comparison -----------------------------------------------------------------------------------


@dataclass
class Pairing:
    """One (source, primary model, shadow model): their verdicts on the same frames."""

    source: str
    model: str
    shadow_model: str
    frames: int = 0
    agree: int = 0
    primary_only: int = 0  # flagged by the primary alone
    shadow_only: int = 0  # flagged by the shadow alone
    defects: int = 0  # labelled defects among the frames (defect or missed_defect)
    labelled: int = 0
    first: float = math.inf
    last: float = -math.inf
    # Each side's alerts and, on the labelled frames, its confusion matrix: replay's Counts, so precision and
    # recall mean here what they mean in `monitor replay`.
    primary: Counts = field(default_factory=Counts)
    shadow: Counts = field(default_factory=Counts)
    model_ids: set[str] = field(default_factory=set)
    shadow_model_ids: set[str] = field(default_factory=set)

    @property
    def agreement(self) -> float | None:
        return self.agree / self.frames if self.frames else None

    @property
    def span_hours(self) -> float:
        """Hours from the first to the last paired frame (0 for one frame)."""
        return (self.last - self.first) / HOUR_S if self.frames else 0.0

    def per_hour(self, alerts: int) -> float | None:
        """Alerts per hour over the span; None when the span is empty (one frame, or none)."""
        span = self.span_hours
        return alerts / span if span > 0 else None

    def add(self, primary: ShadowRow, shadow: ShadowRow, label: str | None) -> None:
        self.frames += 1
        self.first = min(self.first, primary.time)
        self.last = max(self.last, primary.time)
        if primary.model_id:
            self.model_ids.add(primary.model_id)
        if shadow.model_id:
            self.shadow_model_ids.add(shadow.model_id)
        if primary.anomaly == shadow.anomaly:
            self.agree += 1
        elif primary.anomaly:
            self.primary_only += 1
        else:
            self.shadow_only += 1
        truth = LABEL_TRUTH.get(label) if label is not None else None
        if truth is not None:
            self.labelled += 1
            self.defects += truth
        self.primary.add(primary.anomaly, truth)
        self.shadow.add(shadow.anomaly, truth)

    def _side(self, side: Counts, model: str, ids: set[str]) -> dict[str, Any]:
        return {"model": model, "model_ids": sorted(ids), "alerts": side.alerts,
                "alerts_per_hour": self.per_hour(side.alerts), "labelled_flagged": side.tp + side.fp,
                "tp": side.tp, "fp": side.fp, "precision": side.precision, "recall": side.recall}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "model": self.model, "shadow_model": self.shadow_model,
                "frames": self.frames, "agree": self.agree, "agreement": self.agreement,
                "primary_only": self.primary_only, "shadow_only": self.shadow_only,
                "labelled": self.labelled, "defects": self.defects,
                "first": self.first if self.frames else None, "last": self.last if self.frames else None,
                "span_hours": self.span_hours,
                "primary": self._side(self.primary, self.model, self.model_ids),
                "shadow": self._side(self.shadow, self.shadow_model, self.shadow_model_ids)}


@dataclass
class Comparison:
    """Every pairing of a journal (sorted by source, then models), and the shadow lines left unpaired."""

    pairings: list[Pairing]
    unpaired: int  # shadow verdicts whose primary is not in the journal (rotated away, or cut by a crash)
    source: str | None = None
    since: float | None = None
    until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "since": self.since, "until": self.until, "unpaired": self.unpaired,
                "pairings": [p.to_json() for p in self.pairings]}


def compare(journal: ShadowJournal, *, source: str | None = None, since: float | None = None,
            until: float | None = None) -> Comparison:
    """Pair each shadow verdict with its primary (`shadow_of`) and count, per (source, primary model, shadow
    model), the frames whose primary verdict was made in since <= time < until."""
    lo = -math.inf if since is None else since
    hi = math.inf if until is None else until
    pairings: dict[tuple[str, str, str], Pairing] = {}
    unpaired = 0
    for shadow in journal.shadows:
        primary = journal.primaries.get(shadow.shadow_of or "")
        if primary is None:
            unpaired += 1
            continue
        if (source is not None and primary.source != source) or not lo <= primary.time < hi:
            continue
        key = (primary.source, primary.model, shadow.model)
        pairing = pairings.get(key) or pairings.setdefault(key, Pairing(*key))
        pairing.add(primary, shadow, journal.labels.get(primary.id))
    return Comparison([pairings[k] for k in sorted(pairings)], unpaired, source, since, until)


# --- the table ----------------------------------------------------------------------------------------

_COLUMNS = ("source", "model", "role", "frames", "agree", "agreement", "alerts", "per hour", "only this",
            "labelled", "TP", "FP", "precision", "recall")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_rows(comparison: Comparison) -> list[list[str]]:
    """The table's rows (header first): a primary and a shadow row per pairing; the page shows the same."""
    rows = [list(_COLUMNS)]
    for p in comparison.pairings:
        for role, model, side, only in (("primary", p.model, p.primary, p.primary_only),
                                        ("shadow", p.shadow_model, p.shadow, p.shadow_only)):
            per_hour = p.per_hour(side.alerts)
            rows.append([p.source, model, role, str(p.frames), str(p.agree), _ratio(p.agreement), str(side.alerts),
                         "-" if per_hour is None else f"{per_hour:.2f}", str(only), str(side.tp + side.fp),
                         str(side.tp), str(side.fp), _ratio(side.precision), _ratio(side.recall)])
    return rows


def format_table(journal: ShadowJournal, comparison: Comparison) -> str:
    """The comparison for a person: where it read, then a primary and a shadow row per pairing."""
    rotated = len(journal.files) - 1
    head = f"journal: {journal.files[-1] if journal.files else '-'}"
    if rotated > 0:
        head += f" (+{rotated} rotated)"
    head += (f", {len(journal.primaries)} verdicts, {len(journal.shadows)} shadow verdicts, "
             f"{len(journal.labels)} labelled")
    if journal.bad_lines:
        head += f", {journal.bad_lines} bad lines skipped"
    lines = [head, ""]
    rows = table_rows(comparison)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:  # names left-aligned, numbers right-aligned
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    if not comparison.pairings:
        lines.append("(no shadow verdicts to compare: set `shadow: MODEL` on a source)")
    if comparison.unpaired:
        lines.append(f"{comparison.unpaired} shadow verdict(s) without their primary in the journal, not counted")
    lines.append("")
    lines.append("agree: both flagged or both passed; only this: flagged by this model alone; precision: defect / "
                 "(defect + false_alarm) among the labelled frames it flagged; recall: labelled defects it "
                 "flagged / all labelled defects")
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `compare` to the `monitor` command line."""
    p = subparsers.add_parser(
        "compare", help="shadow models against the models they shadow, from the journal",
        description="Pair each shadow verdict of the journal with its primary verdict and report, per source "
                    "and pair of models: agreement, alert volume, disagreements, labelled precision and recall.")
    p.add_argument("--config", metavar="FILE", help="YAML config: its journal")
    p.add_argument("--journal", metavar="FILE", help="a journal file (its rotated files are read too)")
    p.add_argument("--source", metavar="NAME", help="this source only")
    p.add_argument("--since", metavar="T", help="count frames from this time (Unix seconds or ISO 8601)")
    p.add_argument("--until", metavar="T", help="count frames before this time")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.journal is None):
        return fail("compare: give either --config FILE or --journal FILE")
    try:
        since = None if args.since is None else parse_time(args.since, "--since")
        until = None if args.until is None else parse_time(args.until, "--until")
        path = load_config(args.config).output.journal if args.config is not None else Path(args.journal)
        journal = read_journal(path)
    except (ConfigError, ReplayError, ValueError) as exc:
        return fail(str(exc))
    result = compare(journal, source=args.source, since=since, until=until)
    if args.json:
        print(json.dumps(finite({"journal": {**journal.counts(), "paths": [str(p) for p in journal.files]},
                                 **result.to_json()})))
    else:
        print(format_table(journal, result))
    return 0
