"""Pause and resume at the source level: a paused folder reads nothing and loses nothing; a paused camera is
not read (a stream's connection is released) and goes on after resume."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagegen import encode, normal_image
from streams import MjpegServer, have_ffmpeg, write_video

from monitor import metrics
from monitor.batching import FrameQueue
from monitor.config import CameraSourceConfig, FolderSourceConfig
from monitor.records import Frame
from monitor.sources.base import NotPausable
from monitor.sources.camera import CameraSource
from monitor.sources.folder import FolderSource
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine

pytestmark = pytest.mark.timeout(60)


def png(seed: int) -> bytes:
    return encode(normal_image(np.random.default_rng(seed), 32))


def paused_gauge(name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("anomaly_monitor_source_paused", {"source": name})


def collect(queue: FrameQueue, seconds: float, want: int | None = None) -> list[Frame]:
    """Frames taken from `queue` for `seconds` (or until `want` arrived)."""
    got: list[Frame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (want is None or len(got) < want):
        got.extend(queue.collect(max_batch=64, max_wait_s=0.0, poll_s=0.02))
    return got


# --- folder sources ------------------------------------------------------------------------------

class FolderHarness:
    """A folder source with its own queue, ledger and quarantine under `tmp_path`."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.inbox = tmp_path / "inbox"
        self.quarantine_dir = tmp_path / "quarantine"
        config = FolderSourceConfig(name=name, folder=self.inbox, settle_ms=20, stable_s=0.5,
                                    incomplete_timeout_s=0.5)
        self.queue = FrameQueue(64)
        self.source = FolderSource(config, self.queue, Ledger(tmp_path / "state" / f"ledger-{name}.jsonl"),
                                   Quarantine(self.quarantine_dir))

    def scored(self, frames: list[Frame]) -> list[str]:
        """Acknowledge `frames` as the daemon does after the journal; their file names."""
        for frame in frames:
            self.source.acknowledge(frame)
        return sorted(f.path.name for f in frames)


@pytest.fixture
def folder(tmp_path, request) -> Iterator[FolderHarness]:
    harness = FolderHarness(tmp_path, request.node.name[:50])
    harness.source.start()
    yield harness
    harness.source.stop()
    harness.queue.close()
    harness.source.join(5)
    harness.source.close()


def test_a_paused_folder_queues_no_new_file_and_queues_each_once_after_resume(folder):
    folder.source.pause()
    for i in range(3):
        (folder.inbox / f"p{i}.png").write_bytes(png(i))
    assert collect(folder.queue, 1.0) == []
    assert sorted(p.name for p in folder.inbox.iterdir()) == ["p0.png", "p1.png", "p2.png"]  # left on disk
    folder.source.resume()
    assert folder.scored(collect(folder.queue, 10.0, want=3)) == ["p0.png", "p1.png", "p2.png"]
    assert collect(folder.queue, 0.8) == []  # the rescan on resume offers nothing a second time


def test_a_file_pending_when_paused_waits_for_resume(folder):
    # Written first, paused before its settle time can pass: it is pending, not read.
    folder.source.pause()
    (folder.inbox / "pending.png").write_bytes(png(7))
    assert collect(folder.queue, 0.6) == []
    folder.source.resume()
    assert folder.scored(collect(folder.queue, 10.0, want=1)) == ["pending.png"]


def test_an_incomplete_file_is_not_quarantined_while_paused(folder):
    # Unpaused, a truncated PNG is quarantined `incomplete_timeout_s` (0.5 s) after its last change.
    folder.source.pause()
    (folder.inbox / "cut.png").write_bytes(png(3)[:60])
    time.sleep(1.5)
    assert (folder.inbox / "cut.png").exists()
    assert not folder.quarantine_dir.exists() or list(folder.quarantine_dir.iterdir()) == []
    folder.source.resume()
    deadline = time.monotonic() + 10
    while (folder.inbox / "cut.png").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (folder.inbox / "cut.png").exists()  # judged after resume: still cut, so quarantined
    assert collect(folder.queue, 0.2) == []


def test_resume_rescans_the_folder_for_files_whose_events_were_missed(folder):
    folder.source.pause()
    (folder.inbox / "missed.png").write_bytes(png(4))
    time.sleep(0.3)
    folder.source.forget(folder.inbox / "missed.png")  # as if its events never came (a queue overflow)
    folder.source.resume()
    assert folder.scored(collect(folder.queue, 10.0, want=1)) == ["missed.png"]


def test_pause_and_resume_set_the_paused_gauge_and_state_and_repeat_harmlessly(folder):
    name = folder.source.name
    assert folder.source.state == "running" and paused_gauge(name) == 0
    folder.source.pause()
    folder.source.pause()
    assert folder.source.paused and folder.source.state == "paused" and paused_gauge(name) == 1
    folder.source.resume()
    folder.source.resume()
    assert not folder.source.paused and folder.source.state == "running" and paused_gauge(name) == 0


def test_a_source_that_is_not_running_cannot_be_paused(tmp_path):
    harness = FolderHarness(tmp_path, "never-started")
    with pytest.raises(NotPausable, match="stopped"):
        harness.source.pause()
    harness.source.start()
    harness.source.stop()
    harness.source.join(5)
    with pytest.raises(NotPausable):
        harness.source.resume()
    harness.source.close()


# --- camera sources ------------------------------------------------------------------------------

needs_ffmpeg = pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg is not installed (scripts/install-system-deps.sh)")


def frame_index(frame: Frame) -> int:
    return int(round(float(frame.image.mean()) / 8))


@pytest.fixture
def camera_sources() -> Iterator[list[CameraSource]]:
    made: list[CameraSource] = []
    yield made
    for source in made:
        source.stop()
    for source in made:
        source.join(10)
        assert not source.alive


@needs_ffmpeg
def test_a_paused_video_file_is_not_read_and_goes_on_from_where_it_stopped(tmp_path, camera_sources):
    # 30 frames at 10 fps whose brightness says their index; each frame is sampled (fps 10).
    video = write_video(tmp_path / "n.avi", [np.full((24, 32), 8 * i, np.uint8) for i in range(30)], fps=10)
    queue = FrameQueue(8)
    source = CameraSource(CameraSourceConfig(name="pausecam", camera=str(video), fps=10), queue, lambda e: None)
    camera_sources.append(source)
    source.start()
    before = collect(queue, 10.0, want=5)
    source.pause()
    time.sleep(0.2)  # a frame handed over just before the pause may still be in the slot
    collect(queue, 0.05)
    assert collect(queue, 1.0) == []
    assert source.state == "paused" and not source.up and paused_gauge("pausecam") == 1
    last = frame_index(before[-1])
    source.resume()
    after = collect(queue, 10.0, want=3)
    # Not started over at frame 0: the file goes on near where it was paused.
    assert last <= frame_index(after[0]) <= last + 4
    deadline = time.monotonic() + 10
    while not source.finished and time.monotonic() < deadline:
        collect(queue, 0.1)
    assert source.finished and source.state == "finished"
    with pytest.raises(NotPausable):
        source.pause()


@needs_ffmpeg
def test_a_paused_stream_releases_its_connection_and_reconnects_on_resume_uncounted(camera_sources):
    server = MjpegServer().start()
    try:
        queue = FrameQueue(8)
        config = CameraSourceConfig(name="pausestream", camera=server.url, fps=5, read_timeout_s=2.0,
                                    backoff_initial_s=0.1, backoff_max_s=0.4)
        source = CameraSource(config, queue, lambda e: None)
        camera_sources.append(source)
        source.start()
        collect(queue, 15.0, want=2)
        reconnects = metrics.REGISTRY.get_sample_value("anomaly_monitor_reconnects_total",
                                                       {"source": "pausestream"}) or 0.0
        starts = server.starts
        source.pause()
        # ffmpeg -listen 1 exits when its one client leaves; the test server then starts a fresh one.
        deadline = time.monotonic() + 10
        while server.starts == starts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.starts > starts, "the paused camera kept its connection open"
        collect(queue, 0.3)
        assert collect(queue, 1.0) == []
        source.resume()
        assert len(collect(queue, 15.0, want=2)) >= 2
        assert source.up
        assert (metrics.REGISTRY.get_sample_value("anomaly_monitor_reconnects_total",
                                                  {"source": "pausestream"}) or 0.0) == reconnects
    finally:
        for source in camera_sources:
            source.stop()
        server.stop()
