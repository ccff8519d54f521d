"""Shared file primitives: atomic replacement, flushed line files, safe name parts."""

import errno
import os
import shutil

import pytest

from monitor import files
from monitor.files import LineFile, NotRegularFile, atomic_write, move_file, safe_name


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    atomic_write(path, b"new content", durable=True, mode=0o600)
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["a.json"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_line_file_lines_are_visible_before_close_and_survive_reopen(tmp_path):
    lines = LineFile(tmp_path / "sub" / "l.jsonl")
    lines.write("one\n")
    assert (tmp_path / "sub" / "l.jsonl").read_text() == "one\n"
    (tmp_path / "sub" / "l.jsonl").rename(tmp_path / "sub" / "l.jsonl.1")
    lines.reopen()
    lines.write("two\n")
    lines.close()
    lines.close()  # closing twice is harmless
    assert (tmp_path / "sub" / "l.jsonl").read_text() == "two\n"


def test_a_line_file_removed_with_its_folder_is_made_again_at_the_next_write(tmp_path):
    lines = LineFile(tmp_path / "var" / "journal.jsonl")
    lines.write("one\n")
    shutil.rmtree(tmp_path / "var")  # a clean-up of var/ while the daemon runs
    lines.write("two\n")
    assert (tmp_path / "var" / "journal.jsonl").read_text() == "two\n"  # not into the unlinked file
    assert lines.size == 4


def test_a_line_file_moved_away_by_hand_keeps_its_lines_and_the_next_ones_go_to_the_path(tmp_path):
    path = tmp_path / "ledger.jsonl"
    lines = LineFile(path)
    lines.write("one\n")
    path.rename(tmp_path / "ledger.jsonl.old")
    lines.write("two\n")
    lines.write("three\n")
    assert (tmp_path / "ledger.jsonl.old").read_text() == "one\n"
    assert path.read_text() == "two\nthree\n"


def test_a_line_file_replaced_by_another_file_writes_to_the_new_one(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = LineFile(path)
    lines.write("one\n")
    path.unlink()
    path.write_text("made by hand\n")
    lines.write("two\n")
    assert path.read_text() == "made by hand\ntwo\n"


def test_safe_name_keeps_letters_digits_and_dot_dash_underscore():
    assert safe_name("line 1/../x:y.png") == "line_1_.._x_y.png"


# --- refused writes (disk full): nothing partial, no temporary left ------------------------------------------
def _refuse_after_half(monkeypatch, times: int = 1) -> None:
    """The next `times` writes put half their bytes on disk, then fail with ENOSPC, as a filling disk does."""
    real = files._write_all
    left = [times]

    def write_all(fd, data):
        if left[0] <= 0:
            return real(fd, data)
        left[0] -= 1
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_all", write_all)


def test_a_refused_atomic_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    _refuse_after_half(monkeypatch)
    with pytest.raises(OSError):
        atomic_write(path, b"new content " * 100, durable=True)
    assert os.listdir(tmp_path) == ["a.json"]
    assert path.read_bytes() == b"old"


def test_a_line_refused_midway_is_cut_back_and_written_whole_by_the_next_try(tmp_path, monkeypatch):
    lines = LineFile(tmp_path / "l.jsonl")
    lines.write("one\n")
    _refuse_after_half(monkeypatch)
    with pytest.raises(OSError):
        lines.write("two two two\n")
    assert (tmp_path / "l.jsonl").read_text() == "one\n" and lines.size == 4
    lines.write("two two two\n")
    lines.close()
    assert (tmp_path / "l.jsonl").read_text() == "one\ntwo two two\n"


def test_a_line_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "l.jsonl")
    with pytest.raises(NotRegularFile, match="FIFO"):
        LineFile(tmp_path / "l.jsonl")


def test_a_move_across_file_systems_copies_through_a_temporary_then_removes_the_source(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.png", tmp_path / "q" / "a.png"
    dst.parent.mkdir()
    src.write_bytes(b"image bytes")

    def cross_device(_a, _b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "rename", cross_device)
    move_file(src, dst)
    assert not src.exists() and dst.read_bytes() == b"image bytes"
    assert os.listdir(dst.parent) == ["a.png"]


def test_a_refused_copy_across_file_systems_leaves_the_source_and_no_copy(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.png", tmp_path / "q" / "a.png"
    dst.parent.mkdir()
    src.write_bytes(b"image bytes" * 1000)

    def cross_device(_a, _b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_half(fin, fout, _size):
        fout.write(fin.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfileobj", copy_half)
    with pytest.raises(OSError):
        move_file(src, dst)
    assert src.read_bytes() == b"image bytes" * 1000
    assert os.listdir(dst.parent) == []
