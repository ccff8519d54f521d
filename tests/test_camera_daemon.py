"""Cameras in the running daemon: a replayed video with an injected defect, a camera that is down at
start-up, and a folder source scored alongside them (a real `monitor run` subprocess)."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess, wait_until
from imagegen import anomalous_image, normal_image, write_images
from streams import MjpegServer, free_port, have_ffmpeg, write_video

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg is not installed (scripts/install-system-deps.sh)"),
]

VIDEO_FRAMES = 40
VIDEO_FPS = 10
DEFECT_FRAMES = range(20, 23)  # three consecutive defective parts pass the camera


@pytest.fixture(scope="module")
def replay_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s video of normal 32x32 parts with a defective part injected at frames 20-22."""
    rng = np.random.default_rng(7)
    frames = [anomalous_image(rng) if i in DEFECT_FRAMES else normal_image(rng) for i in range(VIDEO_FRAMES)]
    return write_video(tmp_path_factory.mktemp("video") / "line.avi", frames, fps=VIDEO_FPS)


@pytest.fixture(scope="module")
def door_port() -> int:
    """The port of a network camera that is not there when the daemon starts."""
    return free_port()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_bundle, subprocess_env, replay_video, door_port) -> Iterator[DaemonProcess]:
    fast = {"read_timeout_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}
    config = {
        "model": str(tiny_bundle),
        "sources": [
            {"name": "line1", "folder": "inbox", "settle_ms": 50, "stable_s": 0.5},
            {"name": "replay", "camera": str(replay_video), "fps": VIDEO_FPS, **fast},
            {"name": "door", "camera": f"http://127.0.0.1:{door_port}/cam.mjpg", "fps": 2,
             "lost_after_s": 1.0, **fast},
        ],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "INFO"},
    }
    proc = DaemonProcess(tmp_path_factory.mktemp("camdaemon"), config, subprocess_env)
    proc.start()
    yield proc
    code = proc.terminate()
    assert code == 0, proc.log()


def camera_verdicts(daemon: DaemonProcess, source: str) -> list[dict]:
    return [v for v in daemon.verdicts() if v["source"] == source]


def events(daemon: DaemonProcess, source: str) -> list[str]:
    return [r["event"] for r in daemon.records() if r.get("source") == source and "event" in r]


def scrape(daemon: DaemonProcess) -> str:
    port = daemon.config["metrics"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_an_injected_defect_in_a_replayed_video_is_flagged_with_evidence(daemon) -> None:
    # The replay is finished once its last frame went through: 4 s of video at 10 fps.
    wait_until(lambda: "camera_finished source=replay" in daemon.log(), 20)
    wait_until(lambda: len(camera_verdicts(daemon, "replay")) >= VIDEO_FRAMES - 5, 10)
    verdicts = camera_verdicts(daemon, "replay")
    # Frames are replayed at 10 fps, so a verdict's frame time says which frame of the video it was.
    first = min(v["frame_time"] for v in verdicts)
    by_index = {round((v["frame_time"] - first) * VIDEO_FPS): v for v in verdicts}
    defects = [v for i, v in by_index.items() if i in DEFECT_FRAMES]
    normal = [v for i, v in by_index.items() if i not in DEFECT_FRAMES]
    assert defects, f"no defect frame among the scored frames {sorted(by_index)}"
    for verdict in defects:
        assert verdict["anomaly"] is True, verdict
        assert verdict["path"] is None
        assert verdict["frame_time"] <= verdict["time"]
        assert verdict["evidence"] and Path(verdict["evidence"]).is_file()
    assert min(v["score"] for v in defects) > max(v["score"] for v in normal)


def test_a_folder_is_scored_beside_the_cameras(daemon, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    files = write_images(tmp_path, [normal_image(rng), anomalous_image(rng)], prefix="part")
    for path in files:
        shutil.copy(path, daemon.workdir / "inbox")
    wait_until(lambda: len(camera_verdicts(daemon, "line1")) >= 2, 15)
    by_name = {Path(v["path"]).name: v for v in camera_verdicts(daemon, "line1")}
    assert by_name["part0001.png"]["anomaly"] is True
    assert by_name["part0000.png"]["anomaly"] is False


def test_a_camera_down_at_start_up_is_reported_lost_and_found_when_it_comes(daemon, door_port) -> None:
    wait_until(lambda: "camera_lost" in events(daemon, "door"), 10)
    assert 'anomaly_monitor_source_up{source="door"} 0.0' in scrape(daemon)
    server = MjpegServer(port=door_port).start()
    try:
        wait_until(lambda: events(daemon, "door") == ["camera_lost", "camera_found"], 15)
        wait_until(lambda: camera_verdicts(daemon, "door"), 10)
        text = scrape(daemon)
        assert 'anomaly_monitor_source_up{source="door"} 1.0' in text
        assert all(v["path"] is None for v in camera_verdicts(daemon, "door"))
    finally:
        server.stop()
