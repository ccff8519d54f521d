"""A camera with an ROI: its evidence leads with the whole frame, the ROI framed in amber, and the journal's
region is in whole-frame pixels (inside the ROI)."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
from imagegen import anomalous_image
from streams import have_ffmpeg, write_video

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.evidence import ROI_COLOUR
from monitor.model.bundle import load_bundle

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg is not installed (scripts/install-system-deps.sh)")]

ROI = (16, 8, 32, 32)  # x, y, w, h inside a 64x48 frame


def test_camera_evidence_shows_the_whole_frame_with_the_roi_and_a_region_inside_it(tmp_path, tiny_bundle):
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(12):
        frame = np.full((48, 64), 90, np.uint8)
        x, y, w, h = ROI
        frame[y:y + h, x:x + w] = anomalous_image(rng, 32)
        frames.append(frame)
    video = write_video(tmp_path / "line.avi", frames, fps=10)
    config = parse_config({
        "model": str(tiny_bundle),
        "sources": [{"name": "cam", "camera": str(video), "fps": 10, "roi": list(ROI)}],
        "threshold": {"fixed": 1e-9},  # every frame is an anomaly: each gets evidence
        "metrics": {"enabled": False}, "logging": {"summary_interval_s": 0},
    }, tmp_path / "config.yaml")
    daemon = Daemon(config, load_bundle(tiny_bundle))
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    try:
        deadline = time.monotonic() + 60
        records = []
        while time.monotonic() < deadline and not records:
            if config.output.journal.exists():
                lines = [json.loads(x) for x in config.output.journal.read_text().splitlines() if x.strip()]
                records = [r for r in lines if r.get("anomaly") and r.get("evidence")]
            time.sleep(0.1)
        assert records, "no camera anomaly with evidence was journaled"
        record = records[0]
        region = record["region"]
        x, y, w, h = ROI
        assert x <= region["x"] and region["x"] + region["w"] <= x + w
        assert y <= region["y"] and region["y"] + region["h"] <= y + h
        evidence = cv2.imread(record["evidence"])
        amber = np.all(evidence == np.array(ROI_COLOUR, np.uint8), axis=2)
        assert amber.sum() > 20, "the ROI is not framed on the whole frame"
        # The kept original is the ROI the model scored, at the camera's resolution: what retraining learns.
        original = cv2.imread(record["original"], cv2.IMREAD_UNCHANGED)
        assert original.shape[:2] == (h, w)
    finally:
        daemon.stop()
        waiter.join(30)
