"""A tiled bundle end to end: the daemon scores large images in tiles, writes whole-image evidence, and
`monitor score` / `monitor evaluate` give the journal's scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import LARGE_SIZE
from daemon_proc import DaemonProcess, free_port
from imagegen import normal_image, write_images

from monitor.cli import main
from monitor.evidence import GAP, HEADER_HEIGHT

pytestmark = pytest.mark.slow


def _with_defect(image: np.ndarray, y: int, x: int) -> np.ndarray:
    out = image.copy()
    out[y:y + 4, x:x + 4] = 0 if image[y, x] > 128 else 255
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Normal 256x256 images, and ones with a 4x4 px defect (a dark or bright speck)."""
    rng = np.random.default_rng(808)
    root = tmp_path_factory.mktemp("tiled_samples")
    write_images(root / "normal", [normal_image(rng, LARGE_SIZE) for _ in range(4)], prefix="good")
    write_images(root / "anomaly", [_with_defect(normal_image(rng, LARGE_SIZE), 60 + 50 * i, 200 - 70 * i)
                                    for i in range(3)], prefix="bad")
    return root / "normal", root / "anomaly"


@pytest.fixture(scope="module")
def journal(tmp_path_factory, tiled_bundle, subprocess_env, labelled) -> dict[str, dict]:  # noqa: ANN001
    """The verdicts of a `monitor run` daemon that scored every labelled image, by file name."""
    config = {
        "model": str(tiled_bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 50, "stable_s": 0.3}],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "INFO"},
    }
    daemon = DaemonProcess(tmp_path_factory.mktemp("tiled_daemon"), config, subprocess_env)
    daemon.start()
    try:
        files = sorted(labelled[0].iterdir()) + sorted(labelled[1].iterdir())
        for src in files:
            shutil.copy(src, daemon.workdir / "inbox" / src.name)
        verdicts = daemon.wait_for_verdicts(len(files), timeout=60)
        assert "tiling=scale:1,stride:16x16" in daemon.log()
    finally:
        daemon.kill()
    return {Path(v["path"]).name: v for v in verdicts}


def test_the_daemon_flags_4px_defects_on_large_images(journal: dict[str, dict]) -> None:
    assert all(v["anomaly"] for name, v in journal.items() if name.startswith("bad"))
    assert max(v["score"] for n, v in journal.items() if n.startswith("good")) < \
        min(v["score"] for n, v in journal.items() if n.startswith("bad"))


def test_the_evidence_shows_the_whole_image(journal: dict[str, dict]) -> None:
    anomalies = [v for v in journal.values() if v["anomaly"]]
    assert anomalies
    for v in anomalies:
        image = cv2.imread(v["evidence"])
        # Four panels of the whole 256x256 image at working resolution, not one 32x32 tile.
        assert image.shape[:2] == (HEADER_HEIGHT + LARGE_SIZE, 4 * LARGE_SIZE + 3 * GAP)


def test_the_journal_says_where_each_defect_is_in_image_pixels(journal: dict[str, dict]) -> None:
    for i in range(3):
        region = journal[f"bad{i:04d}.png"]["region"]
        y, x = 60 + 50 * i, 200 - 70 * i  # the 4x4 defect's corner (see `labelled`)
        assert region["x"] <= x + 2 and region["x"] + region["w"] >= x + 2
        assert region["y"] <= y + 2 and region["y"] + region["h"] >= y + 2
        assert region["w"] <= 12 and region["h"] <= 12  # the speck, not the tile around it


def test_monitor_score_gives_the_journal_scores(journal, tiled_bundle, labelled, capsys) -> None:  # noqa: ANN001
    assert main(["score", str(tiled_bundle), str(labelled[0]), str(labelled[1]), "--json"]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(scored) == len(journal)
    for row in scored:
        assert row["score"] == pytest.approx(journal[Path(row["path"]).name]["score"], rel=1e-6)
        assert row["anomaly"] == journal[Path(row["path"]).name]["anomaly"]


def test_monitor_evaluate_gives_the_journal_scores(journal, tiled_bundle, labelled, capsys) -> None:  # noqa: ANN001
    assert main(["evaluate", str(tiled_bundle), "--normal", str(labelled[0]), "--anomaly", str(labelled[1]),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auroc"] == 1.0 and len(result["images"]) == len(journal)
    for row in result["images"]:
        assert row["score"] == pytest.approx(journal[Path(row["path"]).name]["score"], rel=1e-6)
    assert result["tiles_per_second"] > result["images_per_second"]  # 225 tiles an image
