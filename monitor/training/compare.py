"""The feedback section of a training report: the old and the new model on every labelled verdict.

Each labelled verdict that still has an image is scored by the new bundle, and by the old one when
`--compare-with OLD_BUNDLE` is given, through BatchScorer.score, the path of `monitor score` and the
daemon (tiled bundles included), each against its own calibrated threshold. Without an old bundle the
"old" column is the verdict as the journal recorded it (the score and threshold the daemon used then).

Per label: false alarms still flagged, defects still caught, missed defects now caught, and the labelled
precision (flagged defects / all flagged labelled verdicts) and recall. The false alarms were in the new
model's training set, so their new scores are training scores: optimistic. The defects never were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.images import read_image
from monitor.labels import DEFECT, FALSE_ALARM, LABELS, MISSED_DEFECT
from monitor.model.bundle import Bundle
from monitor.training.feedback import Feedback, LabelledVerdict

log = logging.getLogger(__name__)

FEEDBACK_JSON = "feedback.json"
FEEDBACK_MD = "feedback.md"
RECORDED = "journal (as recorded)"


@dataclass(frozen=True)
class Verdict:
    """One model's score on one image, its threshold and what it decides."""

    score: float
    threshold: float

    @property
    def anomaly(self) -> bool:
        return self.score > self.threshold  # the daemon's rule: strictly above

    @property
    def ratio(self) -> float:
        """score / threshold: above 1 is flagged; comparable across models with different score scales."""
        return self.score / self.threshold if self.threshold > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "anomaly": self.anomaly,
                "ratio": round(self.ratio, 6)}


@dataclass(frozen=True)
class ComparedVerdict:
    """A labelled verdict, scored by the old model (or as recorded) and by the new one."""

    verdict: LabelledVerdict
    old: Verdict | None  # None: no old bundle and nothing recorded (an export without scores)
    new: Verdict
    trained_on: bool  # a false alarm the new model was trained on

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        return {"id": v.id, "label": v.label, "note": v.note, "source": v.source, "original": v.original_name,
                "image": str(v.image), "trained_on": self.trained_on,
                "old": None if self.old is None else self.old.to_json(), "new": self.new.to_json()}


@dataclass
class Comparison:
    """The feedback section: every labelled verdict with an image, old vs new, and the counts per label."""

    old: str  # the old bundle's path, or RECORDED
    new: str
    rows: list[ComparedVerdict]
    missing: list[LabelledVerdict] = field(default_factory=list)

    def _flagged(self, labels: tuple[str, ...]) -> tuple[int, int, int]:
        """Among rows with one of `labels`: how many, flagged by the old model, flagged by the new."""
        rows = [r for r in self.rows if r.verdict.label in labels]
        old = sum(1 for r in rows if r.old is not None and r.old.anomaly)
        new = sum(1 for r in rows if r.new.anomaly)
        return len(rows), old, new

    def summary(self) -> dict[str, Any]:
        """Per label counts, labelled precision and recall of the old and the new model."""
        fa, fa_old, fa_new = self._flagged((FALSE_ALARM,))
        de, de_old, de_new = self._flagged((DEFECT,))
        md, md_old, md_new = self._flagged((MISSED_DEFECT,))
        all_defects = de + md

        def precision(tp: int, fp: int) -> float | None:
            return tp / (tp + fp) if tp + fp else None

        return {
            "false_alarm": {"verdicts": fa, "still_flagged_old": fa_old, "still_flagged_new": fa_new},
            "defect": {"verdicts": de, "caught_old": de_old, "caught_new": de_new},
            "missed_defect": {"verdicts": md, "caught_old": md_old, "caught_new": md_new},
            "labelled_precision": {"old": precision(de_old + md_old, fa_old),
                                   "new": precision(de_new + md_new, fa_new)},
            "labelled_recall": {"old": (de_old + md_old) / all_defects if all_defects else None,
                                "new": (de_new + md_new) / all_defects if all_defects else None},
            "missing_images": len(self.missing),
        }

    def to_json(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "summary": self.summary(),
                "verdicts": [r.to_json() for r in self.rows],
                "missing": [{"id": v.id, "label": v.label, "problem": v.problem} for v in self.missing],
                "note": "false alarms marked trained_on were in the new model's training set: their new scores "
                        "are training scores"}


def _scores(bundle: Bundle, images: list[np.ndarray]) -> list[Verdict]:
    from monitor.training.train import calibration_scores

    scores = calibration_scores(bundle, images)  # BatchScorer.score: as `monitor score` and the daemon
    threshold = bundle.default_threshold
    return [Verdict(float(s), threshold) for s in scores]


def compare_feedback(new: Bundle, feedback: Feedback, old: Bundle | None = None,
                     trained_on: frozenset[str] = frozenset()) -> Comparison:
    """Score every labelled verdict with an image by the new bundle and the old one (else as recorded)."""
    labelled = sorted(feedback.with_image, key=lambda v: (LABELS.index(v.label), v.id))
    # Decoded once, for both models. An image that was readable when the feedback was read and is not now
    # (deleted or rewritten during training) joins the verdicts without an image, as it would have then: the
    # bundle is saved by now, and its report must not end in a traceback.
    scored, images, gone = [], [], []
    for v in labelled:
        image = read_image(v.image) if v.image is not None else None
        if image is None:
            gone.append(dataclasses.replace(v, image=None, problem=f"{v.image}: no longer a readable image"))
            log.warning("feedback_image_gone verdict=%s path=%s", v.id, v.image)
        else:
            scored.append(v)
            images.append(image)
    new_verdicts = _scores(new, images) if images else []
    if old is not None:
        old_verdicts: list[Verdict | None] = list(_scores(old, images)) if images else []
    else:
        old_verdicts = [Verdict(v.score, v.threshold) if v.score is not None and v.threshold is not None else None
                        for v in scored]
    rows = [ComparedVerdict(v, o, n, v.id in trained_on)
            for v, o, n in zip(scored, old_verdicts, new_verdicts, strict=True)]
    return Comparison(old=str(old.path) if old is not None else RECORDED, new=str(new.path), rows=rows,
                      missing=feedback.missing + gone)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def format_summary(comparison: Comparison) -> str:
    """The summary a person reads at the end of `monitor train` (markdown, also the report's head)."""
    s = comparison.summary()
    fa, de, md = s["false_alarm"], s["defect"], s["missed_defect"]
    lines = [
        f"old: {comparison.old}", f"new: {comparison.new}", "",
        "| labelled verdicts | count | old | new |", "|---|---|---|---|",
        f"| false alarms still flagged | {fa['verdicts']} | {fa['still_flagged_old']} | {fa['still_flagged_new']} |",
        f"| defects still caught | {de['verdicts']} | {de['caught_old']} | {de['caught_new']} |",
        f"| missed defects now caught | {md['verdicts']} | {md['caught_old']} | {md['caught_new']} |",
        f"| labelled precision | | {_pct(s['labelled_precision']['old'])} | {_pct(s['labelled_precision']['new'])} |",
        f"| labelled recall | | {_pct(s['labelled_recall']['old'])} | {_pct(s['labelled_recall']['new'])} |",
    ]
    if comparison.missing:
        lines += ["", f"{len(comparison.missing)} labelled verdicts have no image left and were not scored."]
    return "\n".join(lines) + "\n"


def format_markdown(comparison: Comparison) -> str:
    """The whole feedback section: the summary, then one row per labelled verdict, then those without image."""
    lines = ["# Feedback: old vs new model on the labelled verdicts", "", format_summary(comparison),
             "Scores are each model's own score against its own calibrated threshold; `ratio` = score / "
             "threshold (above 1: flagged). False alarms marked *trained* were in the new model's training "
             "set (their new scores are training scores); defects never are.", "",
             "| verdict | label | source | old score | old threshold | old ratio | new score | new threshold | "
             "new ratio | old → new |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparison.rows:
        v, o, n = r.verdict, r.old, r.new
        old_cells = ["-", "-", "-"] if o is None else [f"{o.score:.6g}", f"{o.threshold:.6g}", f"{o.ratio:.3f}"]
        flip = f"{_word(o)} → {_word(n)}"
        label = v.label + (" (trained)" if r.trained_on else "")
        lines.append(f"| {v.id} | {label} | {v.source or '-'} | " + " | ".join(old_cells)
                     + f" | {n.score:.6g} | {n.threshold:.6g} | {n.ratio:.3f} | {flip} |")
    if comparison.missing:
        lines += ["", "## Labelled verdicts without an image", "", "| verdict | label | why |", "|---|---|---|"]
        lines += [f"| {v.id} | {v.label} | {v.problem} |" for v in comparison.missing]
    return "\n".join(lines) + "\n"


def _word(v: Verdict | None) -> str:
    return "-" if v is None else ("flagged" if v.anomaly else "passed")


def write_feedback_report(folder: Path, comparison: Comparison) -> tuple[Path, Path]:
    """Write feedback.md and feedback.json into the report folder; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / FEEDBACK_MD, folder / FEEDBACK_JSON
    md.write_text(format_markdown(comparison), encoding="utf-8")
    js.write_text(json.dumps(comparison.to_json(), indent=2) + "\n", encoding="utf-8")
    log.info("feedback_report folder=%s verdicts=%d missing=%d", folder, len(comparison.rows),
             len(comparison.missing))
    return md, js
