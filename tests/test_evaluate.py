"""`monitor evaluate`: figures that agree with `monitor score`, and the report folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from imagegen import anomalous_image, normal_image, write_images

from monitor.cli import main


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rng = np.random.default_rng(2024)
    root = tmp_path_factory.mktemp("labelled")
    write_images(root / "normal", [normal_image(rng, 32) for _ in range(12)], prefix="n")
    write_images(root / "anomaly", [anomalous_image(rng, 32) for _ in range(6)], prefix="a")
    return root / "normal", root / "anomaly"


@pytest.fixture(scope="module")
def evaluation(tiny_bundle, labelled, tmp_path_factory) -> dict:  # noqa: ANN001
    report = tmp_path_factory.mktemp("eval") / "report"
    with pytest.MonkeyPatch.context():
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["evaluate", str(tiny_bundle), "--normal", str(labelled[0]), "--anomaly",
                         str(labelled[1]), "--json", "--report", str(report)]) == 0
    return json.loads(buf.getvalue())


def test_evaluate_json_has_the_figures(evaluation: dict) -> None:
    for key in ("auroc", "average_precision", "precision", "recall", "f1", "best_f1", "threshold",
                "images_per_second"):
        assert key in evaluation
    assert evaluation["counts"] == {"normal": 12, "anomaly": 6}
    assert evaluation["auroc"] == 1.0 and evaluation["recall"] == 1.0


def test_evaluate_scores_agree_with_monitor_score(evaluation, tiny_bundle, labelled, capsys) -> None:  # noqa: ANN001
    assert main(["score", str(tiny_bundle), str(labelled[0]), str(labelled[1]), "--json"]) == 0
    scored = {r["path"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert len(scored) == len(evaluation["images"]) == 18
    for img in evaluation["images"]:
        assert img["score"] == pytest.approx(scored[img["path"]]["score"], rel=1e-5)
        assert scored[img["path"]]["threshold"] == evaluation["threshold"]


def test_evaluate_counts_match_its_scores(evaluation: dict) -> None:
    thr = evaluation["threshold"]
    tp = sum(1 for i in evaluation["images"] if i["label"] == "anomaly" and i["score"] > thr)
    fp = sum(1 for i in evaluation["images"] if i["label"] == "normal" and i["score"] > thr)
    assert (evaluation["at_threshold"]["tp"], evaluation["at_threshold"]["fp"]) == (tp, fp)


def test_evaluate_report_has_plots_and_figures(evaluation: dict) -> None:
    report = Path(evaluation["report"])
    for name in ("scores.png", "roc_pr.png", "figures.json"):
        assert (report / name).is_file(), name


def test_evaluate_text_output_names_the_figures(tiny_bundle, labelled, capsys) -> None:  # noqa: ANN001
    assert main(["evaluate", str(tiny_bundle), "--normal", str(labelled[0]), "--anomaly", str(labelled[1])]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "best F1" in out and "images/s" in out


def test_evaluate_missing_folder_exits_2(tiny_bundle, labelled, tmp_path, capsys) -> None:  # noqa: ANN001
    assert main(["evaluate", str(tiny_bundle), "--normal", str(tmp_path / "none"), "--anomaly",
                 str(labelled[1])]) == 2
    assert "normal folder does not exist" in capsys.readouterr().err


def test_evaluate_with_a_report_folder_under_a_file_exits_2_before_scoring(tiny_bundle, labelled, tmp_path,  # noqa: ANN001
                                                                            capsys) -> None:  # noqa: ANN001
    blocker = tmp_path / "reports"
    blocker.write_text("not a folder")
    assert main(["evaluate", str(tiny_bundle), "--normal", str(labelled[0]), "--anomaly", str(labelled[1]),
                 "--report", str(blocker / "run1")]) == 2
    captured = capsys.readouterr()
    assert f"report folder {blocker / 'run1'}: cannot write there: not a folder (its {blocker} is a file)" \
        in captured.err
    assert captured.out == ""  # no figures: nothing was scored
