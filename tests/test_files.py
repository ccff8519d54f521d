"""Shared file primitives: atomic replacement, flushed line files, safe name parts."""

import os

from monitor.files import LineFile, atomic_write, safe_name


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


def test_safe_name_keeps_letters_digits_and_dot_dash_underscore():
    assert safe_name("line 1/../x:y.png") == "line_1_.._x_y.png"
