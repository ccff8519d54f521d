"""The frame queue and the batch collector: size and time closing, back-pressure, latest wins."""

import threading
import time

import numpy as np
import pytest

from monitor.batching import FrameQueue, QueueClosed
from monitor.records import Frame

IMG = np.zeros((4, 4), np.uint8)


def file_frame(i: int, source: str = "f") -> Frame:
    from pathlib import Path

    return Frame(source=source, image=IMG, frame_time=time.time(), path=Path(f"/x/{i}.png"))


def cam_frame(source: str, t: float) -> Frame:
    return Frame(source=source, image=IMG, frame_time=t)


def test_batch_closes_as_soon_as_it_is_full():
    q = FrameQueue(100)
    for i in range(10):
        q.put(file_frame(i))
    start = time.monotonic()
    batch = q.collect(max_batch=4, max_wait_s=30)
    assert [f.path.name for f in batch] == ["0.png", "1.png", "2.png", "3.png"]
    assert time.monotonic() - start < 5  # nowhere near the 30 s max wait


def test_batch_closes_when_its_oldest_frame_has_waited_max_wait():
    q = FrameQueue(100)
    q.put(file_frame(0))
    start = time.monotonic()
    batch = q.collect(max_batch=32, max_wait_s=0.3)
    waited = time.monotonic() - start
    assert len(batch) == 1
    assert waited >= 0.25


def test_frames_arriving_during_the_wait_join_the_batch():
    q = FrameQueue(100)
    q.put(file_frame(0))

    def later():
        time.sleep(0.1)
        q.put(file_frame(1))

    t = threading.Thread(target=later, name="producer")
    t.start()
    batch = q.collect(max_batch=32, max_wait_s=0.5)
    t.join(5)
    assert len(batch) == 2


def test_collect_returns_empty_after_poll_when_nothing_is_queued():
    assert FrameQueue(10).collect(8, 0.01, poll_s=0.05) == []


def test_file_producer_blocks_when_full_and_resumes_when_a_batch_is_taken():
    q = FrameQueue(2)
    q.put(file_frame(0))
    q.put(file_frame(1))
    assert q.put(file_frame(2), timeout=0.1) is False  # full: the producer waits, nothing dropped
    done = threading.Event()

    def producer():
        q.put(file_frame(2))
        done.set()

    t = threading.Thread(target=producer, name="producer")
    t.start()
    assert not done.wait(0.2)
    q.collect(max_batch=1, max_wait_s=0)
    assert done.wait(5)
    t.join(5)
    assert len(q) == 2


def test_a_newer_camera_frame_replaces_the_queued_one_and_the_drop_is_reported():
    drops = []
    q = FrameQueue(10, on_camera_drop=drops.append)
    assert q.put_latest(cam_frame("cam", 1.0)) is True
    assert q.put_latest(cam_frame("cam", 2.0)) is False
    assert drops == ["cam"]
    batch = q.collect(max_batch=8, max_wait_s=0)
    assert [f.frame_time for f in batch] == [2.0]


def test_cameras_cannot_starve_folder_files():
    q = FrameQueue(100)
    for i in range(5):
        q.put(file_frame(i))
    for cam in ("a", "b", "c"):
        for t in range(20):
            q.put_latest(cam_frame(cam, t))
    batch = q.collect(max_batch=8, max_wait_s=0)
    assert sum(f.is_file for f in batch) == 5
    assert sorted(f.source for f in batch if not f.is_file) == ["a", "b", "c"]


def test_closed_queue_refuses_frames_but_releases_what_it_holds():
    q = FrameQueue(10)
    q.put(file_frame(0))
    q.close()
    with pytest.raises(QueueClosed):
        q.put(file_frame(1))
    with pytest.raises(QueueClosed):
        q.put_latest(cam_frame("cam", 0))
    assert len(q.collect(max_batch=8, max_wait_s=10)) == 1


def test_close_wakes_a_blocked_producer():
    q = FrameQueue(1)
    q.put(file_frame(0))
    errors = []

    def producer():
        try:
            q.put(file_frame(1))
        except QueueClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=producer, name="producer")
    t.start()
    time.sleep(0.1)
    q.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1
