"""A daemon whose source, scorer or commit thread dies stops with exit code 1, so systemd restarts it; a source that
finished by design (a video file played to its end) is not a death."""

import threading
import time

import numpy as np
import pytest
from imagegen import normal_image
from streams import have_ffmpeg, write_video

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.model.bundle import load_bundle


def _wait_in_thread(daemon: Daemon, seconds: float) -> list[int]:
    """daemon.wait() in a thread for at most `seconds`; then stop it. Returns [exit code]."""
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(daemon.wait()), name="waiter")
    waiter.start()
    waiter.join(seconds)
    if waiter.is_alive():
        daemon.stop()
        waiter.join(30)
    return result


def _daemon(tmp_path, tiny_bundle, sources: list[dict]) -> Daemon:
    config = parse_config({"model": str(tiny_bundle), "sources": sources, "metrics": {"enabled": False}},
                          tmp_path / "config.yaml")
    return Daemon(config, load_bundle(tiny_bundle))


def test_a_dead_folder_thread_ends_the_daemon_with_exit_code_1(tmp_path, tiny_bundle, monkeypatch):
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "a", "folder": "inbox"}])

    # A fault no real component shows on demand: the settle loop itself crashes.
    def broken(*_args):
        raise RuntimeError("injected fault")

    monkeypatch.setattr("monitor.sources.folder.FolderSource._due_at", broken)
    daemon.start()
    (tmp_path / "inbox" / "x.png").write_bytes(b"\x89PNG")
    assert _wait_in_thread(daemon, 30) == [1]


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> object:
    if not have_ffmpeg():
        pytest.skip("ffmpeg is not installed (scripts/install-system-deps.sh)")
    rng = np.random.default_rng(3)
    return write_video(tmp_path_factory.mktemp("video") / "short.avi", [normal_image(rng) for _ in range(10)],
                       fps=20)


def test_a_dead_camera_reader_ends_the_daemon_with_exit_code_1(tmp_path, tiny_bundle, short_video, monkeypatch):
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "cam", "camera": str(short_video), "loop": True}])

    # A fault no real camera shows on demand: the reader thread itself crashes on its first frame.
    def broken(*_args):
        raise RuntimeError("injected fault")

    monkeypatch.setattr("monitor.sources.camera.CameraSource._hand_over", broken)
    daemon.start()
    assert _wait_in_thread(daemon, 30) == [1]


def test_a_video_file_played_to_its_end_is_finished_not_dead(tmp_path, tiny_bundle, short_video):
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "cam", "camera": str(short_video), "fps": 20}])
    daemon.start()
    camera = daemon.sources.sources["cam"]
    deadline = time.monotonic() + 20
    while not camera.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert camera.finished and not camera.alive
    assert daemon.sources.dead() == []
    assert _wait_in_thread(daemon, 1.0) == [0]  # still running after the end: only stop() ends it


def test_a_dead_scorer_thread_ends_the_daemon_with_exit_code_1(tmp_path, tiny_bundle, monkeypatch):
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "a", "folder": "inbox"}])

    # A fault no real component shows on demand: the collector under the scorer loop crashes.
    def broken(*_args, **_kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(daemon.queue, "collect", broken)
    daemon.start()
    assert _wait_in_thread(daemon, 30) == [1]


def test_a_dead_commit_thread_ends_the_daemon_with_exit_code_1(tmp_path, tiny_bundle, monkeypatch):
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "a", "folder": "inbox"}])

    # A fault no real component shows on demand: the commit thread's own wait for work crashes it.
    def broken(*_args, **_kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(daemon._commits._cond, "wait", broken)
    daemon.start()
    assert _wait_in_thread(daemon, 30) == [1]


def test_the_small_batch_buckets_are_warmed_after_start_beside_the_line(tmp_path, tiny_bundle):
    # Before start only max_batch is traced (READY=1 does not wait for the rest); a thread warms the others.
    daemon = _daemon(tmp_path, tiny_bundle, [{"name": "a", "folder": "inbox"}])
    scorer = daemon.pipeline.models["default"].scorer
    assert scorer.warming and set(scorer._forwards) == {scorer.max_batch}
    daemon.start()
    try:
        deadline = time.monotonic() + 60
        while scorer.warming and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scorer.warming and set(scorer._forwards) == set(scorer.buckets)
    finally:
        daemon.stop()
        assert daemon.wait() == 0
