"""Retraining with operator feedback: false alarms join training, defects never do, old vs new is reported.

The "false alarms" are normal parts of a kind the base model never saw: the normal gradient running along
the other diagonal. The base model (`tiny_bundle`, trained on `normal_dir`) scores them 20-30x its threshold;
after retraining with them labelled `false_alarm` they sit near it, while the defects stay far above.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SIZE
from imagegen import anomalous_image, write_images

from monitor.cli import main
from monitor.images import read_image
from monitor.labels import DEFECT, FALSE_ALARM, MISSED_DEFECT, label_record
from monitor.model.bundle import META_FILE, load_bundle
from monitor.training.compare import FEEDBACK_JSON, FEEDBACK_MD, compare_feedback
from monitor.training.feedback import (
    EXPORT_INDEX,
    Feedback,
    FeedbackError,
    Fingerprints,
    LabelledVerdict,
    export_labels,
    false_alarm_images,
    read_feedback,
    repeats_for,
)
from monitor.training.train import TileCrops, calibration_scores, load_training_images

N_FALSE_ALARMS = 8
N_DEFECTS = 3


def other_diagonal(rng: np.random.Generator, size: int = TINY_SIZE) -> np.ndarray:
    """imagegen.normal_image mirrored in kind: the same soft gradient along x - y instead of x + y."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (x - y) * 0.75 + rng.uniform(0, 2 * np.pi))
    base = base * rng.uniform(0.8, 1.0) + rng.normal(0, 0.01, base.shape)
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def _vid(n: int) -> str:
    return f"{n:032x}"


def _verdict(n: int, *, original: Path | None, path: str | None, anomaly: bool = True, **extra: object) -> dict:
    return {"id": _vid(n), "time": 1795614845.0 + n, "frame_time": 1795614845.0 + n, "source": "line1",
            "path": path, "score": 0.05 if anomaly else 0.001, "threshold": 0.01, "anomaly": anomaly,
            "evidence": None, "model": "default", "model_id": "3be2a0c41f9d",
            "original": None if original is None else str(original), **extra}


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


class Case:
    """A labelled journal (rotated once) over false-alarm and defect images, and a normal folder to retrain."""

    def __init__(self, root: Path, normal_dir: Path) -> None:
        rng = np.random.default_rng(77)
        self.false_alarms = write_images(root / "originals" / "fa",
                                         [other_diagonal(rng) for _ in range(N_FALSE_ALARMS)], prefix="fa")
        self.defects = write_images(root / "originals" / "de", [anomalous_image(rng) for _ in range(N_DEFECTS)],
                                    prefix="de")
        self.missed = write_images(root / "inbox", [anomalous_image(rng)], prefix="missed")[0]
        # Retraining reads a copy of the normal folder plus a stray copy of a defect: it must be left out.
        self.normal = root / "normal"
        shutil.copytree(normal_dir, self.normal)
        shutil.copyfile(self.defects[0], self.normal / "zz_defect_copy.png")
        self.journal = root / "var" / "journal.jsonl"
        self.journal.parent.mkdir(parents=True)
        fa_ids = list(range(1, N_FALSE_ALARMS + 1))
        de_ids = list(range(20, 20 + N_DEFECTS))
        verdicts = [_verdict(n, original=p, path=f"/gone/inbox/fa{n}.png")
                    for n, p in zip(fa_ids, self.false_alarms, strict=True)]
        verdicts += [_verdict(n, original=p, path=None) for n, p in zip(de_ids, self.defects, strict=True)]
        # The kept original has expired but the scored file is still there: that one is used.
        verdicts.append(_verdict(30, original=root / "expired.png", path=str(self.missed), anomaly=False))
        # Nothing left of this one (camera frame, original expired): reported, not fatal.
        verdicts.append(_verdict(40, original=root / "expired2.png", path=None))
        # A shadow model's verdict on the same id would point at a defect: never read.
        shadow = _verdict(1, original=self.defects[1], path=None, shadow=True)
        _write(self.journal.with_name("journal.jsonl.1"), verdicts[:5])  # rotation: the oldest lines
        labels = [label_record(_vid(1), DEFECT, "misclick", at=1.0)]  # corrected below: the latest label wins
        labels += [label_record(_vid(n), FALSE_ALARM, "other diagonal", at=2.0 + n) for n in fa_ids]
        labels += [label_record(_vid(n), DEFECT, "blob", at=3.0 + n) for n in de_ids]
        labels += [label_record(_vid(30), MISSED_DEFECT, "", at=50.0), label_record(_vid(40), FALSE_ALARM, at=60.0)]
        _write(self.journal, verdicts[5:] + [shadow, {"time": 1.0, "event": "daemon_start", "source": None,
                                                      "detail": ""}] + labels + [{"not": "a record"}])
        self.fa_ids = {_vid(n) for n in fa_ids}
        self.de_ids = {_vid(n) for n in de_ids} | {_vid(30)}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, normal_dir: Path) -> Case:
    return Case(tmp_path_factory.mktemp("feedback"), normal_dir)


@pytest.fixture(scope="module")
def retrained(case: Case, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`monitor train` with --feedback and --compare-with, the options of `tiny_bundle` (the base model)."""
    out = tmp_path_factory.mktemp("retrained") / "bundle"
    rc = main(["train", str(case.normal), "--out", str(out), "--feedback", str(case.journal), "--compare-with",
               str(tiny_bundle), "--size", "32x32", "--channels", "1", "--epochs", "15", "--seed", "0", "--no-auto",
               "--quiet"])
    assert rc == 0
    return out


def _ratios(bundle_dir: Path, paths: list[Path]) -> np.ndarray:
    bundle = load_bundle(bundle_dir)
    return calibration_scores(bundle, [read_image(p) for p in paths]) / bundle.default_threshold


def test_retraining_with_false_alarms_lowers_their_scores(case: Case, tiny_bundle: Path, retrained: Path) -> None:
    before, after = _ratios(tiny_bundle, case.false_alarms), _ratios(retrained, case.false_alarms)
    print("false alarms score/threshold before", np.round(before, 2), "after", np.round(after, 2))
    assert (before > 1).all()  # the base model flags every one of them
    assert (after < before / 5).all()
    assert (after <= 1).sum() >= N_FALSE_ALARMS // 2  # most no longer flagged
    assert (_ratios(retrained, case.defects) > 5).all()  # and the defects are still caught, by far


def test_defect_labels_never_enter_training(case: Case, retrained: Path) -> None:
    meta = json.loads((retrained / META_FILE).read_text())
    record = meta["data"]["feedback"]
    assert set(record["false_alarms_trained"]) == case.fa_ids
    assert not set(record["false_alarms_trained"]) & case.de_ids
    # The stray copy of a defect in the normal folder was recognised by its content and left out.
    assert meta["data"]["excluded_labelled_defects"] == ["zz_defect_copy.png"]
    assert record["excluded_from_normals"] == ["zz_defect_copy.png"]
    n_val = meta["training"]["validation_images"]
    assert meta["training"]["train_images"] == 160 - n_val + record["repeats"] * N_FALSE_ALARMS
    assert record["repeats"] == repeats_for(160 - n_val, N_FALSE_ALARMS)
    assert len(meta["calibration"]["scores"]) == n_val  # calibrated on held-out normal images only


def test_report_lists_every_labelled_verdict_with_both_scores(case: Case, tiny_bundle: Path, retrained: Path) -> None:
    data = json.loads((retrained / "report" / FEEDBACK_JSON).read_text())
    assert data["old"] == str(tiny_bundle)
    rows = {r["id"]: r for r in data["verdicts"]}
    assert set(rows) == case.fa_ids | case.de_ids
    for row in rows.values():
        assert row["old"]["score"] > 0 and row["new"]["score"] > 0
        assert row["old"]["threshold"] > 0 and row["new"]["threshold"] > 0
        assert row["trained_on"] == (row["label"] == FALSE_ALARM)
    assert rows[_vid(30)]["label"] == MISSED_DEFECT and rows[_vid(1)]["label"] == FALSE_ALARM
    summary = data["summary"]
    assert summary["false_alarm"]["verdicts"] == N_FALSE_ALARMS
    assert summary["false_alarm"]["still_flagged_old"] == N_FALSE_ALARMS
    assert summary["false_alarm"]["still_flagged_new"] < N_FALSE_ALARMS
    assert summary["defect"] == {"verdicts": N_DEFECTS, "caught_old": N_DEFECTS, "caught_new": N_DEFECTS}
    assert summary["labelled_precision"]["new"] > summary["labelled_precision"]["old"]
    assert summary["missing_images"] == 1 and data["missing"][0]["id"] == _vid(40)
    markdown = (retrained / "report" / FEEDBACK_MD).read_text()
    assert all(vid in markdown for vid in rows) and "false alarms still flagged" in markdown


def test_missing_original_is_reported_not_fatal(case: Case) -> None:
    feedback = read_feedback([case.journal])
    assert [v.id for v in feedback.missing] == [_vid(40)]
    assert "expired2.png missing" in feedback.missing[0].problem
    fallback = next(v for v in feedback.verdicts if v.id == _vid(30))
    assert fallback.image == case.missed  # the original expired; the scored file was used
    assert feedback.bad_lines == 1  # the line that is not a record


def test_an_image_gone_during_training_is_reported_missing_not_a_traceback(case: Case, tiny_bundle: Path,
                                                                          tmp_path: Path) -> None:
    # Readable when the feedback was read, deleted before the report scores it (the bundle is saved by then).
    feedback = read_feedback([case.journal])
    victim = next(v for v in feedback.verdicts if v.id == _vid(20))
    copy = tmp_path / "copy.png"
    shutil.copyfile(victim.image, copy)
    feedback.verdicts[feedback.verdicts.index(victim)] = dataclasses.replace(victim, image=copy)
    copy.unlink()
    comparison = compare_feedback(load_bundle(tiny_bundle), feedback)
    assert _vid(20) not in {r.verdict.id for r in comparison.rows}
    gone = next(v for v in comparison.missing if v.id == _vid(20))
    assert gone.image is None and "no longer a readable image" in gone.problem
    assert comparison.summary()["missing_images"] == 2  # with the one whose original had expired


def test_export_round_trip_gives_the_same_selection(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["labels", "export", "--journal", str(case.journal), "--out", str(out)]) == 0
    index = [json.loads(line) for line in (out / EXPORT_INDEX).read_text().splitlines()]
    assert len(index) == N_FALSE_ALARMS + N_DEFECTS + 2  # one record per labelled verdict, the missing one too
    assert {"id", "label", "note", "source", "score", "threshold", "model", "model_id", "original"} <= set(index[0])
    assert sorted(p.relative_to(out).as_posix() for p in (out / FALSE_ALARM).iterdir()) == sorted(
        f"{FALSE_ALARM}/{vid}.png" for vid in case.fa_ids)
    journal, export = read_feedback([case.journal]), read_feedback([out])
    for a, b in ((journal.false_alarms, export.false_alarms), (journal.defects, export.defects)):
        assert sorted(v.id for v in a) == sorted(v.id for v in b)
    assert [v.id for v in export.missing] == [_vid(40)]
    fa_j, fa_e = false_alarm_images(journal, 128), false_alarm_images(export, 128)
    order = np.argsort(fa_e.verdicts)
    assert sorted(fa_j.verdicts) == [fa_e.verdicts[i] for i in order] and fa_j.repeats == fa_e.repeats
    by_id = dict(zip(fa_e.verdicts, fa_e.images, strict=True))
    assert all(np.array_equal(im, by_id[vid]) for vid, im in zip(fa_j.verdicts, fa_j.images, strict=True))
    # Exporting again replaces the earlier export; any other non-empty folder is refused.
    assert main(["labels", "export", "--journal", str(case.journal), "--out", str(out)]) == 0
    with pytest.raises(FeedbackError, match="not empty"):
        export_labels([case.journal], case.normal)


def test_copies_of_defects_are_left_out_of_the_normal_images(case: Case) -> None:
    data = load_training_images(case.normal, exclude=Fingerprints(case.defects))
    assert data.summary["images"] == 160 and data.summary["excluded_labelled_defects"] == ["zz_defect_copy.png"]
    assert load_training_images(case.normal).summary["images"] == 161


def test_false_alarms_are_a_fixed_share_of_each_epoch() -> None:
    assert repeats_for(128, 8) == 4  # 32 of 160 samples: 20%
    assert repeats_for(128, 0) == 0
    assert repeats_for(128, 200) == 1  # never under-sampled
    assert repeats_for(10_000, 1) == 25  # capped: one image does not become a fifth of the data


def test_only_false_alarms_are_decoded_for_training(case: Case) -> None:
    verdicts = [LabelledVerdict(id=_vid(n), label=label, note="", labelled_at=0.0, image=path)
                for n, (label, path) in enumerate([(FALSE_ALARM, case.false_alarms[0]), (DEFECT, case.defects[0]),
                                                   (MISSED_DEFECT, case.missed)])]
    extra = false_alarm_images(Feedback(verdicts), 16)
    assert extra.verdicts == [_vid(0)] and len(extra.images) == 1


def test_tiled_training_adds_false_alarms_as_repeated_crops() -> None:
    rng = np.random.default_rng(0)
    crops = TileCrops([rng.random((48, 48, 1), np.float32) for _ in range(3)], (32, 32), per_image=2)
    crops.add([rng.random((40, 40, 1), np.float32)], times=4)
    assert len(crops) == (3 + 4) * 2 and crops.draw(rng).shape == (14, 32, 32, 1)


def test_compare_with_needs_feedback(tiny_bundle: Path, normal_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(normal_dir), "--out", str(tmp_path / "x"), "--compare-with", str(tiny_bundle)]) == 2
    assert "--feedback" in capsys.readouterr().err


def test_unreadable_feedback_is_an_error_before_training(normal_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(normal_dir), "--out", str(tmp_path / "x"), "--feedback", str(tmp_path / "nope")]) == 2
    assert "no journal there" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
