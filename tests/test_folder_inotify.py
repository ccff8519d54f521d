"""The folder source's own inotify watch: real kernel events on real folders, read in bulk."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from netutil import wait_until

from monitor.sources.inotify import (
    CLOSED,
    GONE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_ISDIR,
    MOVED_IN,
    OPENED,
    InotifyWatch,
    describe_errno,
    parse,
)

pytestmark = pytest.mark.skipif(not Path("/proc/sys/fs/inotify").exists(), reason="needs Linux inotify")


class Recorder:
    """A FolderEvents that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.folders: list[str] = []
        self.gone = threading.Event()
        self.overflows = 0

    def files(self, changes: list[tuple[str, int]]) -> None:
        self.calls.append(changes)

    def folder_appeared(self, path: str) -> None:
        self.folders.append(path)

    def overflow(self) -> None:
        self.overflows += 1

    def root_gone(self) -> None:
        self.gone.set()

    def changes(self) -> list[tuple[str, int]]:
        return [change for call in list(self.calls) for change in call]

    def paths(self, kind: int) -> set[str]:
        return {path for path, change in self.changes() if change == kind}


@pytest.fixture
def watching(tmp_path):
    """(folder, recorder, watch) of a running recursive watch; stopped and closed after the test."""
    root = tmp_path / "inbox"
    root.mkdir()
    recorder = Recorder()
    watch = InotifyWatch("test", True, recorder)
    watch.watch(str(root))
    watch.start()
    yield root, recorder, watch
    watch.stop()
    assert watch.join(5)


def event(wd: int, mask: int, name: bytes, padded: int) -> bytes:
    return struct.pack("iIII", wd, mask, 0, padded) + name.ljust(padded, b"\0")


def test_parse_reads_every_event_of_a_buffer_with_its_name_unpadded():
    buffer = event(1, IN_CREATE, b"a.png", 16) + event(2, IN_CREATE | IN_ISDIR, b"", 0) + event(1, IN_CLOSE_WRITE,
                                                                                                  b"b.tif", 32)
    assert list(parse(buffer)) == [(1, IN_CREATE, b"a.png"), (2, IN_CREATE | IN_ISDIR, b""),
                                   (1, IN_CLOSE_WRITE, b"b.tif")]


def test_a_file_written_is_reported_opened_then_closed(watching):
    root, recorder, _ = watching
    (root / "a.png").write_bytes(b"x")
    path = str(root / "a.png")
    wait_until(lambda: path in recorder.paths(CLOSED), timeout=5)
    kinds = [change for p, change in recorder.changes() if p == path]
    assert kinds[0] == OPENED and kinds[-1] == CLOSED


def test_a_file_renamed_in_is_reported_moved_in_and_nothing_else(watching, tmp_path):
    root, recorder, _ = watching
    (tmp_path / "a.png").write_bytes(b"x")
    os.rename(tmp_path / "a.png", root / "a.png")
    wait_until(lambda: str(root / "a.png") in recorder.paths(MOVED_IN), timeout=5)
    assert recorder.changes() == [(str(root / "a.png"), MOVED_IN)]


def test_a_file_renamed_out_is_reported_gone(watching, tmp_path):
    root, recorder, _ = watching
    (root / "a.png").write_bytes(b"x")
    os.rename(root / "a.png", tmp_path / "a.png")
    wait_until(lambda: str(root / "a.png") in recorder.paths(GONE), timeout=5)


def test_events_waiting_in_the_kernel_reach_the_source_in_one_call(tmp_path):
    root, staging = tmp_path / "inbox", tmp_path / "staging"
    root.mkdir()
    staging.mkdir()
    for i in range(200):
        (staging / f"f{i:03d}.png").write_bytes(b"x")
    recorder = Recorder()
    watch = InotifyWatch("bulk", False, recorder)
    watch.watch(str(root))
    for i in range(200):  # before the reader runs: all 200 wait in the kernel's queue
        os.rename(staging / f"f{i:03d}.png", root / f"f{i:03d}.png")
    watch.start()
    try:
        wait_until(lambda: len(recorder.changes()) == 200, timeout=5)
        assert len(recorder.calls) == 1
        assert recorder.changes() == [(str(root / f"f{i:03d}.png"), MOVED_IN) for i in range(200)]
    finally:
        watch.stop()
        watch.join(5)


def test_a_folder_moved_in_is_reported_and_watched_from_then_on(watching, tmp_path):
    root, recorder, watch = watching
    (tmp_path / "day2").mkdir()
    (tmp_path / "day2" / "old.png").write_bytes(b"x")  # raises no event of its own: the source scans for it
    os.rename(tmp_path / "day2", root / "day2")
    wait_until(lambda: str(root / "day2") in recorder.folders, timeout=5)
    assert str(root / "day2") in watch.watched()
    (root / "day2" / "new.png").write_bytes(b"x")
    wait_until(lambda: str(root / "day2" / "new.png") in recorder.paths(CLOSED), timeout=5)


def test_a_folder_made_with_subfolders_has_them_all_watched(watching):
    root, recorder, watch = watching
    (root / "a" / "b" / "c").mkdir(parents=True)
    wait_until(lambda: str(root / "a") in recorder.folders, timeout=5)
    wait_until(lambda: str(root / "a" / "b" / "c") in watch.watched(), timeout=5)
    (root / "a" / "b" / "c" / "deep.png").write_bytes(b"x")
    wait_until(lambda: str(root / "a" / "b" / "c" / "deep.png") in recorder.paths(CLOSED), timeout=5)


def test_a_subfolder_moved_out_of_the_tree_is_no_longer_watched(watching, tmp_path):
    root, recorder, watch = watching
    (root / "sub").mkdir()
    wait_until(lambda: str(root / "sub") in watch.watched(), timeout=5)
    os.rename(root / "sub", tmp_path / "elsewhere")
    wait_until(lambda: str(root / "sub") not in watch.watched(), timeout=5)
    (tmp_path / "elsewhere" / "stray.png").write_bytes(b"x")
    (root / "marker.png").write_bytes(b"x")  # events are in order: once this is seen, a stray's would have been
    wait_until(lambda: str(root / "marker.png") in recorder.paths(CLOSED), timeout=5)
    assert not any("stray" in path for path, _ in recorder.changes())


def test_a_subfolder_renamed_within_the_tree_reports_files_under_its_new_name(watching):
    root, recorder, watch = watching
    (root / "old").mkdir()
    wait_until(lambda: str(root / "old") in watch.watched(), timeout=5)
    os.rename(root / "old", root / "new")
    wait_until(lambda: str(root / "new") in watch.watched() and str(root / "old") not in watch.watched(), timeout=5)
    (root / "new" / "a.png").write_bytes(b"x")
    wait_until(lambda: str(root / "new" / "a.png") in recorder.paths(CLOSED), timeout=5)


def test_a_flat_watch_watches_no_subfolder(tmp_path):
    root = tmp_path / "inbox"
    (root / "sub").mkdir(parents=True)
    watch = InotifyWatch("flat", False, Recorder())
    watch.watch(str(root))
    assert watch.watched() == [str(root)]
    watch.join(1)  # never started: closes the descriptor


def test_the_watched_folder_deleted_is_reported(watching):
    root, recorder, _ = watching
    root.rmdir()
    assert recorder.gone.wait(5)


def test_a_folder_that_cannot_be_watched_raises_os_error(tmp_path):
    watch = InotifyWatch("missing", False, Recorder())
    try:
        with pytest.raises(OSError):
            watch.watch(str(tmp_path / "missing"))
    finally:
        watch.join(1)


def test_a_process_out_of_descriptors_is_told_which_limit_and_what_to_do(tmp_path):
    # Real: inotify_init1 in a process whose open-file limit is used up fails with EMFILE.
    script = (
        "import resource, sys\n"
        "from monitor.sources.inotify import InotifyWatch\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(open('/dev/null'))\n"
        "except OSError: pass\n"
        "try:\n"
        "    InotifyWatch('x', False, None)\n"
        "except OSError as exc: print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)
    assert "too many inotify instances or open files" in out.stdout and "poll_s" in out.stdout, out


def test_the_watch_limit_is_named_for_what_it_is():
    assert "fs.inotify.max_user_watches" in describe_errno(errno.ENOSPC)
    assert describe_errno(errno.ENOENT) == os.strerror(errno.ENOENT)
