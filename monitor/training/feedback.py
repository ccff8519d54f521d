"""Operator feedback for retraining: labelled verdicts and their images, from journals or a label export.

An operator labels flagged images on the review page (`false_alarm`, `defect`) and passed ones
(`missed_defect`); each label is a journal line beside the verdict it names (monitor/labels.py). Retraining
(`monitor train DIR --feedback ...`) takes the normal images in DIR plus the images labelled `false_alarm`:
normal parts the model wrongly flagged. Defect-labelled images (`defect`, `missed_defect`) never enter
training; they are what the old and the new model are compared on (monitor/training/compare.py).

A verdict's image is the full-resolution copy the daemon kept (`original`) when it is there and decodes,
else the scored file (`path`) if it still exists. A labelled verdict with neither is reported (logged and
counted), never fatal: originals expire with their retention, inbox files are moved away.

`monitor labels export --journal J --out DIR` writes the labelled images as `DIR/<label>/<verdict id><ext>`
plus an index `DIR/labels.jsonl`, one record per labelled verdict, so that feedback can be moved to the
training machine without the daemon's folders. `--feedback` reads a journal or such a folder alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.files import atomic_write
from monitor.images import read_image
from monitor.journal import RecordRejected, parse_journal_record, parse_object_line
from monitor.labels import DEFECT, FALSE_ALARM, LABELS, MISSED_DEFECT, is_label_line, is_verdict_id
from monitor.replay import ReplayError, existing_journal_files, journal_lines

log = logging.getLogger(__name__)

EXPORT_INDEX = "labels.jsonl"

# False alarms are a mode of the normal population that the first model saw too rarely (else it would not
# have flagged them), and an operator labels a handful among hundreds of normal images. Each is repeated so
# that false alarms make up FALSE_ALARM_SHARE of every epoch's training samples: enough weight to move the
# model, yet the normal images still dominate what it learns. Never under-sampled (at least one copy), and
# at most MAX_REPEATS copies, so a single labelled image cannot become a fifth of the training set alone.
FALSE_ALARM_SHARE = 0.2
MAX_REPEATS = 25

# The verdict keys an export keeps (plus the label, its note and time, and the copy's file name).
_VERDICT_KEYS = ("source", "score", "threshold", "anomaly", "model", "model_id")


class FeedbackError(Exception):
    """Feedback that cannot be read at all (no journal, no export index); the message is one line."""


@dataclass(frozen=True)
class LabelledVerdict:
    """One labelled verdict (its latest label) and the image it can be retrained or evaluated on."""

    id: str
    label: str
    note: str
    labelled_at: float
    source: str | None = None
    score: float | None = None
    threshold: float | None = None
    anomaly: bool | None = None
    model: str | None = None
    model_id: str | None = None
    image: Path | None = None  # the file to read, None when no image is left
    original_name: str | None = None  # the file name the image had where it was kept or scored
    origin: str = ""  # the journal or export it was read from
    problem: str = ""  # why there is no image

    @property
    def is_defect(self) -> bool:
        """True when the operator says the part is defective (flagged or missed)."""
        return self.label in (DEFECT, MISSED_DEFECT)

    def to_json(self) -> dict[str, Any]:
        """The verdict as the reports and the export index write it."""
        return {"id": self.id, "label": self.label, "note": self.note, "time": self.labelled_at,
                "source": self.source, "score": self.score, "threshold": self.threshold, "anomaly": self.anomaly,
                "model": self.model, "model_id": self.model_id, "original": self.original_name,
                "image": None if self.image is None else str(self.image), "origin": self.origin,
                **({"problem": self.problem} if self.problem else {})}


@dataclass
class Feedback:
    """Every labelled verdict read from the journals and exports given, the latest label of each."""

    verdicts: list[LabelledVerdict]
    origins: list[str] = field(default_factory=list)
    bad_lines: int = 0  # lines skipped as not valid records (cut by a crash, not JSON, a wrong shape)

    @property
    def with_image(self) -> list[LabelledVerdict]:
        return [v for v in self.verdicts if v.image is not None]

    @property
    def missing(self) -> list[LabelledVerdict]:
        """Labelled verdicts whose image is gone (or whose verdict line was rotated away)."""
        return [v for v in self.verdicts if v.image is None]

    def labelled(self, *labels: str) -> list[LabelledVerdict]:
        """Verdicts with an image and one of `labels`."""
        return [v for v in self.with_image if v.label in labels]

    @property
    def false_alarms(self) -> list[LabelledVerdict]:
        """What retraining adds to the normal images: flagged parts the operator called normal."""
        return self.labelled(FALSE_ALARM)

    @property
    def defects(self) -> list[LabelledVerdict]:
        """Defective parts (caught or missed): never trained on, only evaluated."""
        return self.labelled(DEFECT, MISSED_DEFECT)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per label: verdicts labelled, of them with an image, and without."""
        out = {}
        for label in LABELS:
            of_label = [v for v in self.verdicts if v.label == label]
            with_image = sum(v.image is not None for v in of_label)
            out[label] = {"labelled": len(of_label), "with_image": with_image, "missing": len(of_label) - with_image}
        return out


# --- reading a journal ---------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            yield from f
    except OSError as exc:
        raise FeedbackError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _records(journal: Path) -> tuple[dict[str, dict], dict[str, dict], int]:
    """The verdict lines by id (the keys feedback needs), the latest label line per verdict, and the bad lines.

    The journal and its rotated files are read as `monitor replay` reads them (`journal_lines`), each line
    parsed and validated by the journal module's one rule (`parse_journal_record`). Shadow models'
    verdicts are not what the operator saw: skipped.
    """
    verdicts: dict[str, dict] = {}
    labels: dict[str, dict] = {}
    bad = 0
    try:
        for _path, _lineno, line in journal_lines(existing_journal_files(journal)):
            try:
                record = parse_journal_record(line.rstrip(b"\r"))
            except RecordRejected:
                bad += 1
                continue
            if "score" in record:
                if record.get("shadow") is True or not is_verdict_id(record.get("id")):
                    continue  # a shadow model's verdict, or one from before verdicts had ids: never labelled
                # Only what feedback needs: a journal holds 100,000s of verdicts, few of them labelled.
                verdicts[record["id"]] = {k: record.get(k) for k in (*_VERDICT_KEYS, "path", "original")}
            elif "label" in record:
                if is_label_line(record):
                    labels[record["verdict"]] = record  # journal order: the latest label of a verdict wins
                else:
                    bad += 1
            elif "event" not in record:
                bad += 1  # neither verdict, label nor event: as `monitor replay` counts it
    except ReplayError as exc:  # no journal there, or a file that cannot be read
        raise FeedbackError(str(exc)) from None
    return verdicts, labels, bad


def resolve_image(original: Any, path: Any) -> tuple[Path | None, str]:
    """The kept original when it decodes, else the scored file when it does; else None and why not."""
    why = []
    for key, value in (("original", original), ("path", path)):
        if not isinstance(value, str) or not value:
            continue
        candidate = Path(value)
        if read_image(candidate) is not None:
            return candidate, ""
        why.append(f"{key} {value} {'unreadable' if candidate.exists() else 'missing'}")
    return None, "; ".join(why) or "no original and no file path (a camera frame not kept)"


def read_journal(journal: Path) -> Feedback:
    """Every labelled verdict of a journal (and its rotated files), its image resolved."""
    verdicts, labels, bad = _records(Path(journal))
    out = []
    for vid, label in labels.items():
        verdict = verdicts.get(vid)
        if verdict is None:
            out.append(LabelledVerdict(id=vid, label=label["label"], note=label.get("note", ""),
                                       labelled_at=float(label["time"]), origin=str(journal),
                                       problem="verdict not in the journal (rotated away?)"))
            continue
        image, problem = resolve_image(verdict.get("original"), verdict.get("path"))
        out.append(_labelled(vid, label["label"], label.get("note", ""), float(label["time"]), verdict, image,
                             _name(verdict.get("original")) or _name(verdict.get("path")), str(journal), problem))
    return Feedback(verdicts=out, origins=[str(journal)], bad_lines=bad)


def _name(value: Any) -> str | None:
    return Path(value).name if isinstance(value, str) and value else None


def _labelled(vid: str, label: str, note: str, at: float, verdict: dict, image: Path | None, name: str | None,
              origin: str, problem: str) -> LabelledVerdict:
    anomaly = verdict.get("anomaly")
    return LabelledVerdict(id=vid, label=label, note=note, labelled_at=at, source=_text(verdict.get("source")),
                           score=_number(verdict.get("score")), threshold=_number(verdict.get("threshold")),
                           anomaly=anomaly if isinstance(anomaly, bool) else None,
                           model=_text(verdict.get("model")), model_id=_text(verdict.get("model_id")),
                           image=image, original_name=name, origin=origin, problem=problem)


# --- reading an export -----------------------------------------------------------------------------------


def _inside(folder: Path, relative: Any) -> Path | None:
    """folder/relative when it names a file inside `folder` (an index must not point elsewhere), else None."""
    if not isinstance(relative, str) or not relative:
        return None
    candidate = (folder / relative).resolve()
    return candidate if candidate.is_relative_to(folder.resolve()) else None


def read_export(folder: Path) -> Feedback:
    """The labelled verdicts of a `monitor labels export` folder (its labels.jsonl and the copies)."""
    folder = Path(folder)
    index = folder / EXPORT_INDEX
    if not index.is_file():
        raise FeedbackError(f"{folder}: not a label export (no {EXPORT_INDEX})")
    out, bad = [], 0
    for line in _lines(index):
        if not line.strip():
            continue
        try:
            record = parse_object_line(line.rstrip(b"\r\n"))
        except RecordRejected:
            bad += 1
            continue
        vid, label, when = record.get("id"), record.get("label"), _number(record.get("time"))
        if not is_verdict_id(vid) or label not in LABELS:
            bad += 1
            continue
        path = _inside(folder, record.get("file"))
        image = path if path is not None and read_image(path) is not None else None
        problem = str(record.get("problem") or "") if image is None else ""
        if image is None and not problem:
            problem = f"{record.get('file')}: not a readable image in {folder}"
        out.append(_labelled(vid, label, _text(record.get("note")) or "", when or 0.0, record, image,
                             _text(record.get("original")), str(folder), problem))
    return Feedback(verdicts=out, origins=[str(folder)], bad_lines=bad)


# --- either, several -------------------------------------------------------------------------------------


def read_feedback(sources: Sequence[str | Path]) -> Feedback:
    """Labelled verdicts from journals and export folders; where two name one verdict the later label wins.

    Every verdict with no image is logged (`feedback_image_missing`) and counted in `Feedback.missing`.
    """
    merged: dict[str, LabelledVerdict] = {}
    origins, bad = [], 0
    for source in sources:
        part = read_export(Path(source)) if Path(source).is_dir() else read_journal(Path(source))
        origins += part.origins
        bad += part.bad_lines
        for verdict in part.verdicts:
            kept = merged.get(verdict.id)
            if kept is None or verdict.labelled_at >= kept.labelled_at:
                merged[verdict.id] = verdict
    feedback = Feedback(verdicts=list(merged.values()), origins=origins, bad_lines=bad)
    for v in feedback.missing:
        log.warning("feedback_image_missing verdict=%s label=%s reason=%r", v.id, v.label, v.problem)
    if bad:
        log.warning("feedback_bad_lines count=%d origins=%s", bad, ",".join(origins))
    log.info("feedback_read origins=%s %s", ",".join(origins),
             " ".join(f"{k}={c['with_image']}/{c['labelled']}" for k, c in feedback.counts().items()))
    return feedback


# --- training ------------------------------------------------------------------------------------------


def repeats_for(n_normal: int, n_false_alarms: int, share: float = FALSE_ALARM_SHARE,
                max_repeats: int = MAX_REPEATS) -> int:
    """Copies of each false alarm so that they make up `share` of an epoch's samples (see FALSE_ALARM_SHARE).

    k false alarms repeated r times among n normal images are r*k / (n + r*k) of the samples; solved for r
    and rounded, at least 1, at most `max_repeats`. 0 without false alarms.
    """
    if n_false_alarms <= 0:
        return 0
    exact = share * n_normal / ((1.0 - share) * n_false_alarms)
    return int(min(max_repeats, max(1, round(exact))))


@dataclass
class FeedbackImages:
    """The decoded false-alarm images that join the training split, and how often each is repeated."""

    images: list[np.ndarray]
    verdicts: list[str]
    repeats: int
    n_normal: int  # normal images in the training split
    unreadable: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        """The false alarms' share of an epoch's training samples."""
        added = self.repeats * len(self.images)
        return added / (self.n_normal + added) if added else 0.0

    def to_json(self, feedback: Feedback, excluded: Sequence[str] = ()) -> dict[str, Any]:
        """The record kept in the sidecar's data summary: what was trained on and what was not."""
        return {
            "origins": feedback.origins,
            "counts": feedback.counts(),
            "false_alarms_trained": self.verdicts,
            "repeats": self.repeats,
            "rule": (f"each false alarm repeated so that they are {FALSE_ALARM_SHARE:.0%} of an epoch's training "
                     f"samples (1 to {MAX_REPEATS} copies); defect and missed_defect images never trained on; "
                     "calibration on held-out normal images only"),
            "share": round(self.share, 4),
            "missing": [v.id for v in feedback.missing],
            "unreadable": self.unreadable,
            "excluded_from_normals": list(excluded),
        }


def false_alarm_images(feedback: Feedback, n_normal_train: int) -> FeedbackImages:
    """The false alarms' images, decoded, and the repeat count for `n_normal_train` normal training images."""
    images, ids, unreadable = [], [], []
    for v in feedback.false_alarms:
        assert v.label == FALSE_ALARM and v.image is not None  # defects never reach this list
        image = read_image(v.image)
        if image is None:  # it decoded when the feedback was read: removed or rewritten since
            log.warning("feedback_image_unreadable verdict=%s path=%s", v.id, v.image)
            unreadable.append(v.id)
            continue
        images.append(image)
        ids.append(v.id)
    return FeedbackImages(images=images, verdicts=ids, repeats=repeats_for(n_normal_train, len(images)),
                          n_normal=n_normal_train, unreadable=unreadable)


class Fingerprints:
    """File contents (size, SHA-256) of the defect-labelled images: a copy of one in the normal folder is
    excluded from training, so a defect can never be learnt as normal. Sizes first: most files hash never."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.by_size: dict[int, set[str]] = {}
        for p in paths:
            try:
                self.by_size.setdefault(os.stat(p).st_size, set()).add(_sha256(p))
            except OSError:
                continue

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, Path)):
            return False
        try:
            hashes = self.by_size.get(os.stat(path).st_size)
            return bool(hashes) and _sha256(Path(path)) in hashes
        except OSError:
            return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- export --------------------------------------------------------------------------------------------


@dataclass
class Export:
    """What `export_labels` wrote: the folder, the verdicts copied and those without an image."""

    folder: Path
    copied: int
    missing: int
    counts: dict[str, dict[str, int]]


def export_labels(journals: Sequence[str | Path], out: Path) -> Export:
    """Copy every labelled verdict's image to out/<label>/<id><ext> and write out/labels.jsonl.

    A folder that holds an earlier export is replaced (the files its index lists are removed first, so a
    verdict relabelled since does not stay under its old label); any other non-empty folder is refused.
    """
    out = Path(out)
    feedback = read_feedback(journals)
    _clear(out)
    lines, copied = [], 0
    for v in sorted(feedback.verdicts, key=lambda v: (v.label, v.id)):
        record = {k: v for k, v in v.to_json().items() if k not in ("image", "origin")}
        record["file"] = None
        if v.image is not None:
            relative = f"{v.label}/{v.id}{v.image.suffix.lower() or '.png'}"
            (out / v.label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(v.image, out / relative)
            record["file"] = relative
            copied += 1
        lines.append(json.dumps(record, allow_nan=False))
    # The index last and whole: a reader sees the old export's index or the complete new one.
    atomic_write(out / EXPORT_INDEX, ("\n".join(lines) + "\n" if lines else "").encode())
    log.info("labels_exported folder=%s copied=%d missing=%d", out, copied, len(feedback.missing))
    return Export(folder=out, copied=copied, missing=len(feedback.missing), counts=feedback.counts())


def _clear(out: Path) -> None:
    """Make `out` an empty folder or one holding only an earlier export's files (removed here)."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / EXPORT_INDEX
    if not index.is_file():
        if any(out.iterdir()):
            raise FeedbackError(f"{out}: not empty and not an earlier label export; choose a new folder")
        return
    for line in _lines(index):
        try:
            path = _inside(out, parse_object_line(line.rstrip(b"\r\n")).get("file"))
        except RecordRejected:
            continue
        if path is not None and path.is_file():
            path.unlink()
    index.unlink()
