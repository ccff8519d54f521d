"""Rolling thresholds survive restarts: each source's window saved in the state folder, restored when its
model is unchanged; a bad state file is set aside and counted, never stops a start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess
from reload_util import Streamer

from monitor import metrics
from monitor.threshold import RollingQuantile, SavedWindow, Threshold, ThresholdState


def rejected(file: str) -> float:
    return metrics.STATE_FILES_UNREADABLE.labels(file)._value.get()


def test_windows_round_trip_through_the_state_file(tmp_path):
    state = ThresholdState(tmp_path)
    assert state.load() == {}
    assert state.save({"a": SavedWindow("id1", [0.1, 0.2, 0.3])}, force=True)
    assert ThresholdState(tmp_path).load() == {"a": SavedWindow("id1", [0.1, 0.2, 0.3])}


def test_saves_are_spaced_unless_forced(tmp_path):
    state = ThresholdState(tmp_path, min_interval_s=60)
    assert state.save({"a": SavedWindow("x", [1.0])})
    assert not state.save({"a": SavedWindow("x", [2.0])})
    assert state.save({"a": SavedWindow("x", [3.0])}, force=True)
    assert state.load()["a"].values == [3.0]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": "other", "version": 1}'])
def test_a_corrupt_state_file_is_set_aside_and_counted(tmp_path, content):
    (tmp_path / ThresholdState.FILE).write_bytes(content)
    before = rejected("thresholds")
    assert ThresholdState(tmp_path).load() == {}
    assert rejected("thresholds") == before + 1
    assert not (tmp_path / ThresholdState.FILE).exists()
    (aside,) = tmp_path.glob(f"{ThresholdState.FILE}.corrupt-*")
    assert aside.read_bytes() == content


def test_a_bad_entry_is_dropped_alone(tmp_path):
    data = {"format": "anomaly-monitor-thresholds", "version": 1, "sources": {
        "good": {"model_id": "m", "values": [0.1, 0.2]},
        "nan": {"model_id": "m", "values": [0.1, float("nan")]},
        "shape": {"values": [0.1]},
    }}
    (tmp_path / ThresholdState.FILE).write_text(json.dumps(data))
    assert ThresholdState(tmp_path).load() == {"good": SavedWindow("m", [0.1, 0.2])}


def test_restore_replaces_the_window_with_the_newest_values():
    threshold = Threshold(quantile=0.5, window=10, calibration=[1.0] * 10)
    assert threshold.restore([float(i) for i in range(20)])
    assert threshold.window_values() == [float(i) for i in range(10, 20)]
    assert threshold.value == pytest.approx(14.5)
    assert not Threshold(fixed=1.0).restore([1.0])


@pytest.mark.slow
def test_the_threshold_window_is_restored_after_a_restart(tmp_path, tiny_bundle, subprocess_env):
    config = {"model": str(tiny_bundle), "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20}],
              "threshold": {"window": 10}, "metrics": {"enabled": False}}
    proc = DaemonProcess(tmp_path, config, subprocess_env).start()
    try:
        streamer = Streamer(tmp_path / "inbox", 15, "r", interval=0.01).start()
        streamer.join()
        proc.wait_for_verdicts(15)
        assert proc.terminate() == 0
        first_run = proc.verdicts()
        saved = json.loads((tmp_path / "var/state/thresholds.json").read_text())["sources"]["line1"]
        normal = [v["score"] for v in first_run if not v["anomaly"]]
        assert saved["values"] == normal[-10:]  # the window: the last normal scores, oldest first
        assert saved["model_id"] == first_run[-1]["model_id"]

        proc.start()
        Streamer(tmp_path / "inbox", 1, "after", seed=9).start().join()
        verdicts = proc.wait_for_verdicts(16)
        # Judged against the restored window, not the bundle's calibration.
        margin = json.loads((Path(tiny_bundle) / "bundle.json").read_text())["threshold"]
        expected = margin["margin"] * RollingQuantile(10, margin["quantile"], saved["values"]).value()
        assert verdicts[-1]["threshold"] == pytest.approx(expected)
        assert verdicts[-1]["threshold"] != pytest.approx(first_run[0]["threshold"])
        assert "threshold_restored source=line1" in proc.log()
    finally:
        proc.kill()


def test_a_changed_model_starts_from_its_calibration_not_the_saved_window(tmp_path):
    # build_thresholds, the daemon's rule, without TensorFlow: models stand in with their identity and bundle.
    from types import SimpleNamespace

    from monitor.config import parse_config
    from monitor.daemon import build_thresholds

    config = parse_config({"sources": [{"name": "a", "folder": "in"}], "threshold": {"window": 10}},
                          tmp_path / "c.yaml")
    bundle = SimpleNamespace(calibration_scores=np.full(20, 0.5), threshold_quantile=0.5, threshold_margin=1.0,
                             path=tmp_path)
    model = SimpleNamespace(name="default", identity="new", bundle=bundle)
    saved = {"a": SavedWindow("old", [9.0] * 10)}
    assert build_thresholds(config, {"default": model}, saved)["a"].value == pytest.approx(0.5)
    saved = {"a": SavedWindow("new", [9.0] * 10)}
    assert build_thresholds(config, {"default": model}, saved)["a"].value == pytest.approx(9.0)
