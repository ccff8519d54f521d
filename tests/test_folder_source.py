"""Folder source: complete files only, backlog, ledger, quarantine, back-pressure."""

import contextlib
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagegen import encode, normal_image
from inprocess import FolderLine
from netutil import wait_until

from monitor import metrics
from monitor.sources.folder import FolderSource, image_is_complete
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine

HERE = Path(__file__).parent


class Harness(FolderLine):
    def __init__(self, tmp_path: Path, name: str, capacity: int = 64, **overrides) -> None:
        options = dict(settle_ms=50, stable_s=0.5, incomplete_timeout_s=1.0)
        options.update(overrides)
        super().__init__(tmp_path, name, capacity, **options)
        self.quarantine_dir = self.quarantine  # the name these tests and tests/faults use

    def quiet_for(self, seconds: float) -> list:
        return self.frames(10**6, timeout=seconds)


@pytest.fixture
def harness(tmp_path, request):
    h = Harness(tmp_path, request.node.name[:60].replace("[", "_").replace("]", "_"))
    yield h
    h.stop()


def png(seed: int = 0, size: int = 32) -> bytes:
    return encode(normal_image(np.random.default_rng(seed), size))


def test_a_dropped_image_is_decoded_and_queued_once(harness):
    harness.start()
    (harness.inbox / "a.png").write_bytes(png(1))
    frames = harness.frames(1)
    assert len(frames) == 1
    assert frames[0].path == harness.inbox / "a.png"
    assert frames[0].image.shape == (32, 32)
    assert harness.quiet_for(0.5) == []


def test_files_in_subfolders_are_watched(harness):
    harness.start()
    (harness.inbox / "day1" / "shift2").mkdir(parents=True)
    (harness.inbox / "day1" / "shift2" / "b.jpg").write_bytes(encode(normal_image(np.random.default_rng(2)),
                                                                       ".jpg"))
    assert [f.path.name for f in harness.frames(1)] == ["b.jpg"]


def test_a_slowly_written_file_is_read_only_when_complete(harness, tmp_path):
    big = cv2.resize(normal_image(np.random.default_rng(3), 32), (256, 256)) + np.random.default_rng(4).integers(
        0, 40, (256, 256), dtype=np.uint8)
    src = tmp_path / "src.png"
    src.write_bytes(encode(big))
    harness.start()
    writer = subprocess.Popen([sys.executable, str(HERE / "slow_writer.py"), str(src),
                               str(harness.inbox / "slow.png"), "8", "0.15"])
    frames = harness.frames(1, timeout=15)
    assert writer.wait(15) == 0
    frames += harness.quiet_for(0.5)
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].image, big)


@pytest.mark.parametrize("ext", [".webp", ".pgm", ".ppm"])
def test_webp_and_pnm_files_written_slowly_are_read_whole(harness, tmp_path, ext):
    part = cv2.resize(normal_image(np.random.default_rng(9), 32), (128, 128))
    if ext == ".ppm":
        part = cv2.cvtColor(part, cv2.COLOR_GRAY2BGR)
    ok, buf = cv2.imencode(ext, part)  # WebP: lossless by default, so the pixels come back exactly
    src = tmp_path / f"src{ext}"
    src.write_bytes(buf.tobytes())
    harness.start()
    writer = subprocess.Popen([sys.executable, str(HERE / "slow_writer.py"), str(src),
                               str(harness.inbox / f"slow{ext}"), "6", "0.15"])
    frames = harness.frames(1, timeout=15)
    assert writer.wait(15) == 0
    frames += harness.quiet_for(0.5)
    assert len(frames) == 1
    decoded = frames[0].image if ext != ".webp" else cv2.cvtColor(frames[0].image, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decoded, part)


def _inotify_instances() -> int:
    """inotify instances this process holds (one per watchdog inotify observer)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


def test_a_polled_folder_finds_files_written_slowly_by_another_process_without_inotify(tmp_path):
    tiff = cv2.resize(normal_image(np.random.default_rng(6), 32), (256, 256)).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".tif", tiff)  # TIFF: no end marker, so only two polls agreeing on its size tell
    src = tmp_path / "src.tif"
    src.write_bytes(buf.tobytes())
    before = _inotify_instances()
    h = Harness(tmp_path, "polled", poll_s=0.2, stable_s=0.6)  # a network share: inotify would see nothing
    try:
        h.start()
        assert _inotify_instances() == before  # nothing is asked of the kernel: what is found, polling found
        writer = subprocess.Popen([sys.executable, str(HERE / "slow_writer.py"), str(src),
                                   str(h.inbox / "slow.tif"), "6", "0.3"])
        staged = tmp_path / "staged.png"
        staged.write_bytes(png(7))
        staged.rename(h.inbox / "moved.png")
        frames = h.frames(2, timeout=20)
        assert writer.wait(15) == 0
        frames += h.quiet_for(1.0)
        assert sorted(f.path.name for f in frames) == ["moved.png", "slow.tif"]
        np.testing.assert_array_equal(next(f for f in frames if f.path.name == "slow.tif").image, tiff)
    finally:
        h.stop()


def test_an_inotify_folder_holds_an_inotify_instance(tmp_path):
    before = _inotify_instances()  # the counterpart of the polled test: the probe does see a watch
    h = Harness(tmp_path, "watched")
    try:
        h.start()
        assert _inotify_instances() == before + 1
    finally:
        h.stop()


def test_a_file_renamed_into_the_folder_is_scored(harness, tmp_path):
    harness.start()
    staged = tmp_path / "staged.png"
    staged.write_bytes(png(5))
    staged.rename(harness.inbox / "moved.png")
    assert [f.path.name for f in harness.frames(1)] == ["moved.png"]


@pytest.fixture
def slow_settle(tmp_path):
    """A started source whose settle_ms is 3 s: long beside any wait below, so a read before it is no settle."""
    h = Harness(tmp_path, "settle", settle_ms=3000)
    h.start()
    yield h
    h.stop()


def renamed_in(h: Harness, tmp_path: Path, name: str, data: bytes) -> None:
    staged = tmp_path / f"staged-{name}"
    staged.write_bytes(data)
    staged.rename(h.inbox / name)


def test_a_file_renamed_in_is_read_without_waiting_settle_ms_and_one_written_in_place_waits(slow_settle, tmp_path):
    """A rename is atomic: the file is whole the moment it appears. A file closed by its writer may be reopened."""
    renamed_in(slow_settle, tmp_path, "moved.png", png(5))
    (slow_settle.inbox / "written.png").write_bytes(png(6))
    assert [f.path.name for f in slow_settle.frames(1, timeout=1.5)] == ["moved.png"]
    assert [f.path.name for f in slow_settle.frames(1, timeout=5)] == ["written.png"]


def test_a_file_renamed_in_and_then_written_to_waits_for_quiet(slow_settle, tmp_path):
    slow_settle.source.pause()  # the rename and the write land before the source reads
    renamed_in(slow_settle, tmp_path, "moved.png", png(5))
    (slow_settle.inbox / "moved.png").write_bytes(png(7))
    time.sleep(0.3)
    slow_settle.source.resume()
    assert slow_settle.frames(1, timeout=1.5) == []
    frames = slow_settle.frames(1, timeout=5)
    assert [f.path.name for f in frames] == ["moved.png"]
    assert np.array_equal(frames[0].image, cv2.imdecode(np.frombuffer(png(7), np.uint8), cv2.IMREAD_UNCHANGED))


def test_files_present_at_start_are_scanned_as_backlog(harness):
    harness.inbox.mkdir(parents=True)
    for i in range(3):
        (harness.inbox / f"old{i}.png").write_bytes(png(i))
    harness.start()
    assert sorted(f.path.name for f in harness.frames(3)) == ["old0.png", "old1.png", "old2.png"]


def test_scored_files_are_not_queued_again_after_a_restart(harness):
    harness.inbox.mkdir(parents=True)
    (harness.inbox / "done.png").write_bytes(png(1))
    source = harness.start()
    (frame,) = harness.frames(1)
    source.acknowledge(frame)
    harness.stop()
    (harness.inbox / "new.png").write_bytes(png(2))  # arrived while the daemon was down
    harness.start()
    assert [f.path.name for f in harness.frames(1)] == ["new.png"]
    assert harness.quiet_for(0.5) == []


def test_a_file_queued_but_not_scored_before_a_stop_is_queued_again(harness):
    harness.inbox.mkdir(parents=True)
    (harness.inbox / "pending.png").write_bytes(png(1))
    harness.start()
    assert len(harness.frames(1)) == 1  # taken, but the verdict never came (crash)
    harness.stop()
    harness.start()
    assert [f.path.name for f in harness.frames(1)] == ["pending.png"]


def scored_once(harness: Harness, name: str) -> Path:
    """Start the source, drop `name` into its folder, take its frame and acknowledge it: its verdict is in."""
    source = harness.start()
    path = harness.inbox / name
    path.write_bytes(png(1))
    (frame,) = harness.frames(1)
    source.acknowledge(frame)
    return path


def test_an_overwritten_file_is_scored_again(harness):
    path = scored_once(harness, "latest.png")
    time.sleep(0.05)
    path.write_bytes(png(2, size=40))
    assert [f.image.shape for f in harness.frames(1)] == [(40, 40)]


def test_a_file_rewritten_while_its_first_version_is_in_flight_is_queued_once_that_one_is_done(harness):
    """A camera PC rewriting latest.png within one batch: the new version must not wait for the next start."""
    harness.start()
    (harness.inbox / "latest.png").write_bytes(png(1))
    first = harness.frames(1)  # read and queued: in flight until its verdict is acknowledged
    (harness.inbox / "latest.png").write_bytes(png(2, size=40))
    time.sleep(0.5)  # the rewrite's events reach the source while the first version is in flight
    assert harness.quiet_for(0.2) == []
    harness.source.acknowledge(first[0])
    assert [f.image.shape for f in harness.frames(1)] == [(40, 40)]
    assert harness.quiet_for(0.5) == []  # and once only


def test_a_file_in_flight_that_is_not_rewritten_is_not_queued_again(harness):
    harness.start()
    (harness.inbox / "a.png").write_bytes(png(1))
    first = harness.frames(1)
    harness.source.acknowledge(first[0])
    assert harness.quiet_for(0.5) == []


def test_a_scored_file_whose_time_is_changed_is_scored_again(harness):
    # A touch or utime alone raises only IN_ATTRIB: the watch must still ask for it (a new mtime, a new version).
    path = scored_once(harness, "stamped.png")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert [f.path.name for f in harness.frames(1)] == ["stamped.png"]


def test_non_image_files_are_ignored_and_counted(harness):
    before = metrics.FILES_IGNORED.labels(harness.config.name)._value.get()
    harness.start()
    (harness.inbox / "notes.txt").write_text("hello")
    (harness.inbox / ".hidden.png.part").write_bytes(b"x")
    assert harness.quiet_for(0.6) == []
    assert wait_until(lambda: metrics.FILES_IGNORED.labels(harness.config.name)._value.get() == before + 1, 10)


def quarantined(harness, name: str) -> tuple[Path, str]:
    folder = harness.quarantine_dir / harness.config.name
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hits = [p for p in folder.glob(f"*{name}")] if folder.exists() else []
        if hits:
            reason = hits[0].with_name(hits[0].name + ".reason.txt")
            for _ in range(50):
                if reason.exists():
                    return hits[0], reason.read_text()
                time.sleep(0.02)
        time.sleep(0.05)
    raise AssertionError(f"{name} was not quarantined")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("cut.png", png(1)[:-40], "truncated"),
        ("cut.jpg", encode(normal_image(np.random.default_rng(1), 64), ".jpg")[:-200], "truncated"),
        ("empty.png", b"", "empty"),
        ("garbage.png", b"this is not an image at all" * 10, "undecodable"),
    ],
)
def test_bad_files_are_quarantined_with_a_reason_and_counted(harness, name, content, reason):
    counter = metrics.FILES_QUARANTINED.labels(harness.config.name, reason)
    before = counter._value.get()
    harness.start()
    (harness.inbox / name).write_bytes(content)
    moved, text = quarantined(harness, name)
    assert f"reason: {reason}" in text
    assert moved.read_bytes() == content  # nothing lost: the bytes are kept for a person to look at
    assert not (harness.inbox / name).exists()
    # Counted once the move is done, a moment after the file left the inbox.
    assert wait_until(lambda: counter._value.get() == before + 1, timeout=10)
    assert harness.quiet_for(0.2) == []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_a_decompression_bomb_is_quarantined_without_decoding(harness):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b""))
    assert image_is_complete(bomb)
    harness.start()
    (harness.inbox / "bomb.png").write_bytes(bomb)
    _, text = quarantined(harness, "bomb.png")
    assert "reason: too_large" in text


def test_files_larger_than_the_limit_are_quarantined_unread(tmp_path):
    h = Harness(tmp_path, "limit", max_file_bytes=1000)
    try:
        h.start()
        (h.inbox / "huge.png").write_bytes(encode(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
        _, text = quarantined(h, "huge.png")
        assert "reason: too_large" in text
    finally:
        h.stop()


def test_a_full_queue_blocks_the_folder_and_no_file_is_dropped(tmp_path):
    h = Harness(tmp_path, "pressure", capacity=2)
    try:
        h.start()
        for i in range(12):
            (h.inbox / f"p{i:02d}.png").write_bytes(png(i))
        time.sleep(1.0)
        assert len(h.queue) == 2  # the producer waits instead of dropping
        got = []
        deadline = time.monotonic() + 15
        while len(got) < 12 and time.monotonic() < deadline:
            got += h.queue.collect(max_batch=1, max_wait_s=0, poll_s=0.05)
        assert sorted(f.path.name for f in got) == [f"p{i:02d}.png" for i in range(12)]
    finally:
        h.stop()


def test_stop_returns_promptly_while_the_producer_is_blocked(tmp_path):
    h = Harness(tmp_path, "stopping", capacity=1)
    h.start()
    for i in range(3):
        (h.inbox / f"s{i}.png").write_bytes(png(i))
    time.sleep(0.5)
    start = time.monotonic()
    stopper = threading.Thread(target=h.stop, name="stopper")
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()
    assert time.monotonic() - start < 8


def test_journal_records_of_scored_files_are_reconciled_into_the_ledger(harness):
    harness.inbox.mkdir(parents=True)
    path = harness.inbox / "crashed.png"
    path.write_bytes(png(1))
    st = path.stat()
    source = FolderSource(harness.config, harness.queue, Ledger(harness.ledger_path),
                          Quarantine(harness.quarantine_dir))
    # The daemon died after the verdict's journal line, before its ledger line.
    record = {"source": harness.config.name, "path": str(path),
              "file": {"name": "crashed.png", "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    other = {"source": "another", "path": "/x", "file": {"name": "x.png", "size": 1, "mtime_ns": 1}}
    assert source.reconcile([record, other, {"event": "daemon_start"}]) == 1
    harness.source = source
    source.start()
    assert harness.quiet_for(0.6) == []


def test_a_read_that_returns_less_than_asked_goes_on_to_the_end():
    # A pipe hands over what has been written so far: the short reads a regular file shows only near 2 GiB.
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"abc"), time.sleep(0.1),
                                              os.write(write_end, b"def"), os.close(write_end)))
    writer.start()
    try:
        assert FolderSource._read(read_end, 6) == b"abcdef"
    finally:
        writer.join()
        os.close(read_end)


def test_a_read_returns_one_byte_more_than_the_size_seen_when_the_file_grew(tmp_path):
    path = tmp_path / "grown.bin"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert FolderSource._read(fd, 4) == b"01234"  # longer than seen: the caller looks again
    finally:
        os.close(fd)


def test_a_watched_folder_given_as_a_link_is_watched_through_it(tmp_path):
    # The configured path is the operator's: /data/inbox may be a link to a disk mounted elsewhere.
    real = tmp_path / "disk" / "inbox"
    real.mkdir(parents=True)
    h = Harness(tmp_path, "linked_root")
    h.inbox.symlink_to(real, target_is_directory=True)
    try:
        h.start()
        (real / "a.png").write_bytes(png(3))
        assert [f.path for f in h.frames(1)] == [h.inbox / "a.png"]
    finally:
        h.stop()
