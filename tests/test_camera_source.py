"""The camera source alone, against real streams: ffmpeg HTTP MJPEG, GStreamer RTSP, video files."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from streams import (
    MjpegServer,
    RtspServer,
    counter_value,
    free_port,
    have_ffmpeg,
    have_rtsp_server,
    write_video,
)

from monitor import metrics
from monitor.batching import FrameQueue
from monitor.config import CameraSourceConfig
from monitor.records import Frame, SourceEvent
from monitor.sources.camera import CameraSource, camera_kind, crop, redact

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not have_ffmpeg(), reason="ffmpeg is not installed (scripts/install-system-deps.sh)"),
]

FAST = {"read_timeout_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.4}


def sample(name: str, metric: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(f"anomaly_monitor_{metric}", {"source": name})


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


class Harness:
    """A camera source with its queue, the drops it counted and the events it raised."""

    def __init__(self, name: str, camera: int | str, **options: object) -> None:
        self.drops: list[str] = []
        self.events: list[SourceEvent] = []
        self.queue = FrameQueue(64, on_camera_drop=self.drops.append)
        self.config = CameraSourceConfig(name=name, camera=camera, **options)
        self.source = CameraSource(self.config, self.queue, self.events.append)

    def frames(self, count: int, timeout: float) -> list[Frame]:
        """Collect `count` frames as they come (each one before the next replaces it)."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got.extend(self.queue.collect(64, 0.0, poll_s=0.05))
        assert len(got) >= count, f"only {len(got)} of {count} frames within {timeout} s"
        return got

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def camera() -> Iterator[Callable[..., Harness]]:
    """Factory of started camera sources; every one is stopped (and must stop) at teardown."""
    made: list[Harness] = []

    def make(name: str, camera: int | str, **options: object) -> Harness:
        harness = Harness(name, camera, **options)
        made.append(harness)
        harness.source.start()
        return harness

    yield make
    for harness in made:
        harness.source.stop()
    for harness in made:
        harness.source.join(10)
        assert not harness.source.alive, f"camera {harness.config.name} did not stop"


@pytest.fixture
def mjpeg() -> Iterator[MjpegServer]:
    server = MjpegServer(pattern="testsrc").start()
    yield server
    server.stop()


@pytest.fixture
def mjpeg_counter() -> Iterator[MjpegServer]:
    """An MJPEG stream at 10 fps whose frames show their own frame number."""
    server = MjpegServer(pattern="counter").start()
    yield server
    server.stop()


def numbered_frames(count: int, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """Gray frames whose brightness is 8 x their index, so a frame says which one it is."""
    return [np.full(size, 8 * i, np.uint8) for i in range(count)]


def frame_index(frame: Frame) -> int:
    return int(round(float(frame.image.mean()) / 8))


# --- helpers ---------------------------------------------------------------------------------------

def test_camera_kind_tells_devices_streams_and_files_apart() -> None:
    assert camera_kind(0) == "device"
    assert camera_kind("/dev/video2") == "device"
    assert camera_kind("rtsp://10.0.0.5/stream1") == "stream"
    assert camera_kind("http://cam/video.mjpg") == "stream"
    assert camera_kind("/data/replay.avi") == "file"


def test_redact_hides_the_password_of_a_camera_url() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"


def test_crop_clips_the_region_to_the_frame_and_refuses_one_outside_it() -> None:
    image = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    assert crop(image, (60, 40, 20, 20)).shape == (8, 4)
    assert np.array_equal(crop(image, (2, 3, 4, 5)), image[3:8, 2:6])
    assert crop(image, (64, 0, 5, 5)) is None


# --- HTTP MJPEG ------------------------------------------------------------------------------------

def test_mjpeg_frames_reach_the_queue_with_capture_time_and_no_path(camera, mjpeg) -> None:
    cam = camera("mjpeg_basic", mjpeg.url, fps=5, **FAST)
    before = time.time()
    frames = cam.frames(3, timeout=10)
    assert all(f.source == "mjpeg_basic" and f.path is None for f in frames)
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(before <= f.frame_time <= time.time() for f in frames)
    assert sample("mjpeg_basic", "source_up") == 1
    assert sample("mjpeg_basic", "frames_read_total") >= 3


def test_a_slow_consumer_gets_the_newest_frame_not_a_buffered_one(camera, mjpeg_counter) -> None:
    # The stream makes 10 frames a second; the consumer looks only every 0.7 s. A reader that decoded
    # one buffered frame per sample would fall further behind the stream at every look.
    cam = camera("mjpeg_fresh", mjpeg_counter.url, fps=4, **FAST)
    first = cam.frames(1, timeout=10)[-1]
    seen: list[Frame] = []
    for _ in range(5):
        time.sleep(0.7)
        seen.append(cam.frames(1, timeout=5)[-1])
    last = seen[-1]
    stream_s = ((counter_value(last.image) - counter_value(first.image)) % 128) / 10.0
    wall_s = last.frame_time - first.frame_time
    assert wall_s > 3.0
    assert abs(stream_s - wall_s) < 0.5, f"stream advanced {stream_s} s in {wall_s} s of wall time"


def test_at_most_fps_frames_per_second_are_handed_over(camera, mjpeg) -> None:
    cam = camera("mjpeg_fps", mjpeg.url, fps=2, **FAST)
    cam.frames(1, timeout=10)
    start = cam.source.frames_read
    time.sleep(3.0)
    handed = cam.source.frames_read - start
    assert 4 <= handed <= 7, f"{handed} frames in 3 s at fps=2 from a 10 fps stream"


def test_unconsumed_frames_are_replaced_by_newer_ones_and_the_drops_counted(camera, mjpeg) -> None:
    cam = camera("mjpeg_latest", mjpeg.url, fps=5, **FAST)
    wait_for(lambda: cam.source.frames_read >= 6, 10, "six frames read")
    read = cam.source.frames_read
    assert len(cam.queue) == 1  # one slot per camera, however many frames were read
    assert len(cam.drops) >= read - 1 - 1  # the reader may have read one more since
    assert set(cam.drops) == {"mjpeg_latest"}
    newest = cam.queue.collect(8, 0.0)[0]
    assert time.time() - newest.frame_time < 0.5


def test_a_killed_server_takes_the_source_down_and_raises_camera_lost_after_the_grace_period(
        camera, mjpeg) -> None:
    cam = camera("mjpeg_lost", mjpeg.url, fps=5, lost_after_s=1.0, **FAST)
    cam.frames(2, timeout=10)
    mjpeg.down()
    wait_for(lambda: sample("mjpeg_lost", "source_up") == 0, 5, "source_up 0")
    assert cam.kinds() == []  # still within the grace period
    wait_for(lambda: cam.kinds() == ["camera_lost"], 5, "camera_lost")
    assert sample("mjpeg_lost", "seconds_since_last_frame") >= 1.0
    assert sample("mjpeg_lost", "reconnects_total") >= 1


def test_a_restarted_server_is_found_again_by_itself(camera, mjpeg) -> None:
    cam = camera("mjpeg_found", mjpeg.url, fps=5, lost_after_s=0.5, **FAST)
    cam.frames(1, timeout=10)
    mjpeg.down()
    wait_for(lambda: "camera_lost" in cam.kinds(), 5, "camera_lost")
    mjpeg.up()
    wait_for(lambda: cam.kinds() == ["camera_lost", "camera_found"], 10, "camera_found")
    assert sample("mjpeg_found", "source_up") == 1
    cam.queue.collect(8, 0.0)
    after = time.time()
    assert all(f.frame_time >= after for f in cam.frames(2, timeout=5))
    assert sample("mjpeg_found", "seconds_since_last_frame") < 1.0


def test_a_short_blip_raises_no_event(camera, mjpeg) -> None:
    cam = camera("mjpeg_blip", mjpeg.url, fps=5, lost_after_s=5.0, **FAST)
    cam.frames(1, timeout=10)
    mjpeg.down()
    wait_for(lambda: sample("mjpeg_blip", "source_up") == 0, 5, "source_up 0")
    mjpeg.up()
    wait_for(lambda: sample("mjpeg_blip", "source_up") == 1, 10, "source_up 1 again")
    cam.frames(1, timeout=5)
    assert cam.events == []


def test_a_stalled_stream_is_closed_after_the_read_timeout_and_reopened(camera, mjpeg) -> None:
    cam = camera("mjpeg_stall", mjpeg.url, fps=5, lost_after_s=30, **FAST)
    cam.frames(1, timeout=10)
    mjpeg.suspend()  # connection open, no more bytes: only the read timeout can notice
    try:
        wait_for(lambda: sample("mjpeg_stall", "source_up") == 0, 5, "source_up 0 after the read timeout")
    finally:
        mjpeg.resume()
    wait_for(lambda: sample("mjpeg_stall", "source_up") == 1, 10, "source back up")
    assert sample("mjpeg_stall", "reconnects_total") >= 1


def test_a_camera_down_at_start_is_retried_reported_lost_then_found(camera) -> None:
    port = free_port()
    server = MjpegServer(port=port)
    cam = camera("mjpeg_late", server.url, fps=5, lost_after_s=0.5, **FAST)
    try:
        wait_for(lambda: cam.kinds() == ["camera_lost"], 5, "camera_lost for a camera never seen")
        assert cam.source.alive
        assert sample("mjpeg_late", "source_up") == 0
        server.start()
        wait_for(lambda: cam.kinds() == ["camera_lost", "camera_found"], 10, "camera_found")
        cam.frames(1, timeout=5)
    finally:
        server.stop()


def test_stop_is_honoured_while_connected(mjpeg) -> None:
    harness = Harness("mjpeg_stop", mjpeg.url, fps=5, **FAST)
    harness.source.start()
    harness.frames(1, timeout=10)
    harness.source.stop()
    harness.source.join(5)
    assert not harness.source.alive


def test_stop_is_honoured_while_a_silent_server_holds_the_connection_open() -> None:
    # A listening socket that never answers: opening the capture would hang without a timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cam.mjpg"
        harness = Harness("silent_stop", url, fps=5, read_timeout_s=1.0, backoff_initial_s=0.1)
        harness.source.start()
        time.sleep(0.5)  # inside the open call now
        t0 = time.monotonic()
        harness.source.stop()
        harness.source.join(5)
        assert not harness.source.alive, "the reader hung in open"
        assert time.monotonic() - t0 < 3.0
        assert sample("silent_stop", "source_up") == 0


def test_a_missing_video_device_is_retried_not_fatal(camera) -> None:
    cam = camera("usb_missing", "/dev/video99", fps=2, lost_after_s=0.3, **FAST)
    wait_for(lambda: cam.kinds() == ["camera_lost"], 5, "camera_lost for a missing device")
    assert cam.source.alive
    assert sample("usb_missing", "source_up") == 0
    assert sample("usb_missing", "seconds_since_last_frame") > 0.3


# --- RTSP ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rtsp() -> Iterator[RtspServer]:
    if not have_rtsp_server():
        pytest.skip("the system Python lacks GStreamer's RTSP server (scripts/install-system-deps.sh)")
    server = RtspServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_frames_reach_the_queue(camera, rtsp, transport) -> None:
    cam = camera(f"rtsp_{transport}", rtsp.url, fps=5, rtsp_transport=transport, read_timeout_s=5.0,
                 backoff_initial_s=0.2, backoff_max_s=1.0)
    frames = cam.frames(3, timeout=15)
    assert all(f.image.shape == (48, 64, 3) and f.path is None for f in frames)
    assert sample(f"rtsp_{transport}", "source_up") == 1


def test_an_rtsp_camera_comes_back_after_its_server_restarts(camera) -> None:
    if not have_rtsp_server():
        pytest.skip("the system Python lacks GStreamer's RTSP server (scripts/install-system-deps.sh)")
    server = RtspServer().start()
    try:
        # The grace period is longer than an RTSP open (about 2 s of stream probing).
        cam = camera("rtsp_restart", server.url, fps=5, rtsp_transport="tcp", lost_after_s=3.0,
                     read_timeout_s=5.0, backoff_initial_s=0.2, backoff_max_s=0.5)
        cam.frames(1, timeout=15)
        assert cam.events == []
        server.stop()
        wait_for(lambda: cam.kinds() == ["camera_lost"], 10, "camera_lost")
        server = RtspServer(port=server.port).start()
        wait_for(lambda: cam.kinds() == ["camera_lost", "camera_found"], 15, "camera_found")
        assert sample("rtsp_restart", "source_up") == 1
    finally:
        server.stop()


# --- video files -----------------------------------------------------------------------------------

def test_a_video_file_is_replayed_at_its_own_frame_rate(camera, tmp_path: Path) -> None:
    video = write_video(tmp_path / "ten.avi", numbered_frames(10), fps=10)
    cam = camera("file_rate", str(video), fps=10, lost_after_s=0.2, **FAST)
    frames = cam.frames(10, timeout=10)
    assert [frame_index(f) for f in frames] == list(range(10))
    assert frames[-1].frame_time - frames[0].frame_time >= 0.8  # 10 frames at 10 fps, not all at once


def test_a_video_file_is_sampled_at_fps(camera, tmp_path: Path) -> None:
    video = write_video(tmp_path / "twenty.avi", numbered_frames(20), fps=10)
    cam = camera("file_sampled", str(video), fps=2, **FAST)
    wait_for(lambda: cam.source.finished, 10, "end of file")
    frames = cam.queue.collect(64, 0.0)
    read = cam.source.frames_read
    assert read == 4  # media times 0, 0.5, 1.0, 1.5 s
    assert frame_index(frames[-1]) == 15


def test_a_finished_video_file_is_not_lost(camera, tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", numbered_frames(3), fps=10)
    cam = camera("file_end", str(video), fps=10, lost_after_s=0.2, **FAST)
    wait_for(lambda: cam.source.finished, 5, "end of file")
    time.sleep(0.5)
    assert cam.events == []
    assert sample("file_end", "source_up") == 0
    assert not cam.source.alive


def test_a_looped_video_file_starts_again(camera, tmp_path: Path) -> None:
    video = write_video(tmp_path / "loop.avi", numbered_frames(4), fps=20)
    cam = camera("file_loop", str(video), fps=20, loop=True, **FAST)
    indices = [frame_index(f) for f in cam.frames(10, timeout=10)]
    assert indices[:10] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert sample("file_loop", "reconnects_total") == 0  # a rewind is no reconnect
    assert cam.events == []


def test_the_region_of_interest_is_cropped(camera, tmp_path: Path) -> None:
    image = np.zeros((48, 64), np.uint8)
    image[:, 32:] = 255
    video = write_video(tmp_path / "halves.avi", [image] * 3, fps=10)
    cam = camera("file_roi", str(video), fps=10, roi=(40, 8, 16, 24), **FAST)
    frame = cam.frames(1, timeout=5)[0]
    assert frame.image.shape == (24, 16, 3)
    assert frame.image.mean() > 240  # inside the white half only


def test_a_region_outside_the_frame_hands_over_nothing_and_counts_an_error(camera, tmp_path: Path) -> None:
    errors = metrics.REGISTRY.get_sample_value("anomaly_monitor_errors_total", {"stage": "camera"}) or 0
    video = write_video(tmp_path / "small.avi", numbered_frames(3), fps=10)
    cam = camera("file_bad_roi", str(video), fps=10, roi=(100, 100, 10, 10), **FAST)
    wait_for(lambda: cam.source.finished, 5, "end of file")
    assert len(cam.queue) == 0
    after = metrics.REGISTRY.get_sample_value("anomaly_monitor_errors_total", {"stage": "camera"})
    assert after == errors + 1


def test_a_missing_video_file_is_retried_and_reported_lost(camera, tmp_path: Path) -> None:
    cam = camera("file_missing", str(tmp_path / "nope.avi"), fps=2, lost_after_s=0.3, **FAST)
    wait_for(lambda: cam.kinds() == ["camera_lost"], 5, "camera_lost")
    assert cam.source.alive
