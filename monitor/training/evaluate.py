"""`monitor evaluate`: how well a bundle separates labelled normal and anomalous images."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from monitor.evidence import render_evidence
from monitor.files import FolderNotWritable, check_writable_folder
from monitor.images import UnreadableImage, list_images, load_image
from monitor.model.bundle import Bundle
from monitor.model.scorer import BatchScorer
from monitor.training.quality import (
    Detection,
    auroc,
    average_precision,
    best_f1,
    detection_at,
    pr_curve,
    roc_curve,
)

log = logging.getLogger(__name__)


class EvaluationError(Exception):
    """Labelled data that cannot be evaluated (missing folder, no images)."""


@dataclass
class Evaluation:
    """Figures of one evaluation; `scores`/`paths` per image, normal first."""

    bundle: str
    score_name: str
    threshold: float
    auroc: float
    average_precision: float
    at_threshold: Detection
    best: Detection
    n_normal: int
    n_anomaly: int
    seconds: float
    images_per_second: float
    tiles_per_second: float = 0.0  # model inputs per second: images/s without tiling
    unreadable: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    report: str | None = None

    def to_json(self, per_image: bool = True) -> dict:
        """The `--json` object (per-image scores included, so they can be checked against `score`)."""
        out = {
            "bundle": self.bundle, "score_name": self.score_name, "threshold": self.threshold,
            "auroc": self.auroc, "average_precision": self.average_precision,
            "precision": self.at_threshold.precision, "recall": self.at_threshold.recall,
            "f1": self.at_threshold.f1, "at_threshold": self.at_threshold.to_json(),
            "best_f1": self.best.to_json(), "counts": {"normal": self.n_normal, "anomaly": self.n_anomaly},
            "unreadable": self.unreadable, "seconds": self.seconds,
            "images_per_second": self.images_per_second, "tiles_per_second": self.tiles_per_second,
            "report": self.report,
        }
        if per_image:
            out["images"] = [{"path": p, "score": s, "label": "anomaly" if y else "normal"}
                             for p, s, y in zip(self.paths, self.scores, self.labels, strict=True)]
        return out


def _read_folder(folder: Path, what: str) -> tuple[list[Path], list[np.ndarray], list[str]]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {what} folder does not exist")
    paths = list_images(folder)
    if not paths:
        raise EvaluationError(f"{folder}: no image files in the {what} folder")
    ok, images, bad = [], [], []
    for p in paths:
        try:
            image = load_image(p)
        except UnreadableImage as exc:
            bad.append(str(p))
            log.warning("evaluate_file_unreadable path=%s reason=%s", p, exc)
        else:
            ok.append(p)
            images.append(image)
    if not ok:
        raise EvaluationError(f"{folder}: none of the {len(paths)} files in the {what} folder is readable")
    return ok, images, bad


def evaluate_folders(bundle: Bundle, normal_dir: Path, anomaly_dir: Path, max_batch: int = 32,
                     report_dir: Path | None = None, worst: int = 5) -> Evaluation:
    """Score both folders, compute the figures, optionally write the report folder."""
    if report_dir is not None:
        try:  # before the scoring: a report folder that cannot be written must not cost the whole run
            check_writable_folder(Path(report_dir))
        except FolderNotWritable as exc:
            raise EvaluationError(f"report folder {exc}") from exc
    n_paths, n_images, n_bad = _read_folder(Path(normal_dir), "normal")
    a_paths, a_images, a_bad = _read_folder(Path(anomaly_dir), "anomaly")
    scorer = BatchScorer(bundle, max_batch=max_batch)
    images = n_images + a_images
    scorer.score(n_images[:1])  # trace the graph outside the timed part
    start = time.monotonic()
    # BatchScorer.score, as the daemon and `monitor score`, in calls of bounded memory: only the scores are
    # kept (a tiled call's stitched maps are large); the report re-scores the few images it shows.
    outs = [scorer.score(images[part]) for part in scorer.call_groups(images)]
    seconds = time.monotonic() - start
    scores = np.concatenate([o.scores for o in outs])
    tiles = int(sum(int(np.sum(o.tiles)) for o in outs))
    del outs
    labels = np.r_[np.zeros(len(n_images), int), np.ones(len(a_images), int)]
    threshold = bundle.default_threshold
    result = Evaluation(
        bundle=str(bundle.path), score_name=bundle.score_label, threshold=threshold,
        auroc=auroc(scores, labels), average_precision=average_precision(scores, labels),
        at_threshold=detection_at(scores, labels, threshold), best=best_f1(scores, labels),
        n_normal=len(n_images), n_anomaly=len(a_images), seconds=round(seconds, 4),
        images_per_second=round(len(labels) / seconds, 1) if seconds > 0 else float("inf"),
        tiles_per_second=round(tiles / seconds, 1) if seconds > 0 else float("inf"),
        unreadable=n_bad + a_bad, paths=[str(p) for p in n_paths + a_paths],
        scores=[float(s) for s in scores], labels=[int(v) for v in labels])
    if report_dir is not None:
        write_evaluation_report(result, scorer, images, Path(report_dir), worst)
        result.report = str(report_dir)
    return result


def _render(scorer: BatchScorer, image: np.ndarray, threshold: float, title: str) -> np.ndarray:
    out = scorer.score([image])
    return render_evidence(out.inputs[0], out.reconstructions[0], out.error_maps[0], float(out.scores[0]),
                           threshold, title)


def write_evaluation_report(result: Evaluation, scorer: BatchScorer, images: list[np.ndarray], folder: Path,
                            worst: int = 5) -> None:
    """Histogram, ROC and PR curves, worst false positives/negatives as evidence images, figures.json.

    `images` are the decoded images in `result.paths` order; the evidence images re-score the few shown.
    """
    from monitor.training.report import plot_roc_pr, plot_score_histogram

    folder.mkdir(parents=True, exist_ok=True)
    scores, labels = np.asarray(result.scores), np.asarray(result.labels)
    plot_score_histogram(folder / "scores.png", result.threshold, scores[labels == 0], scores[labels == 1],
                         result.score_name, "Scores: normal vs anomaly")
    fpr, tpr = roc_curve(scores, labels)
    precision, recall, _ = pr_curve(scores, labels)
    plot_roc_pr(fpr, tpr, precision, recall, result.auroc, result.average_precision, folder / "roc_pr.png")
    fp = [i for i in np.argsort(-scores) if labels[i] == 0 and scores[i] > result.threshold][:worst]
    fn = [i for i in np.argsort(scores) if labels[i] == 1 and scores[i] <= result.threshold][:worst]
    for kind, idx in (("false_positive", fp), ("false_negative", fn)):
        for rank, i in enumerate(idx, 1):
            name = Path(result.paths[i]).name
            image = _render(scorer, images[int(i)], result.threshold, f"{kind.replace('_', ' ')}: {name}")
            cv2.imwrite(str(folder / f"{kind}_{rank:02d}_{Path(name).stem}.png"), image)
    (folder / "figures.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")


def format_evaluation(r: Evaluation) -> str:
    """The human-readable evaluation summary."""
    d, b = r.at_threshold, r.best
    lines = [
        f"bundle     {r.bundle} (score {r.score_name})",
        f"images     {r.n_normal} normal, {r.n_anomaly} anomaly"
        + (f", {len(r.unreadable)} unreadable (skipped)" if r.unreadable else ""),
        f"AUROC      {r.auroc:.4f}",
        f"AP         {r.average_precision:.4f}",
        f"threshold  {r.threshold:.6g} (bundle): precision {d.precision:.3f}, recall {d.recall:.3f}, "
        f"F1 {d.f1:.3f}  [TP {d.tp}, FP {d.fp}, TN {d.tn}, FN {d.fn}]",
        f"best F1    {b.f1:.3f} at threshold {b.threshold:.6g}: precision {b.precision:.3f}, "
        f"recall {b.recall:.3f}  (chosen with the labels; for comparison only)",
        f"throughput {r.images_per_second:.1f} images/s ({r.seconds:.3f} s for {r.n_normal + r.n_anomaly})"
        + (f", {r.tiles_per_second:.1f} tiles/s" if r.tiles_per_second != r.images_per_second else ""),
    ]
    if r.report:
        lines.append(f"report     {r.report}")
    return "\n".join(lines)
