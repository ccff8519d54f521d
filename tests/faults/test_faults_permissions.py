"""Class 11 of issue 11: an output folder that cannot be created or written is a config error (exit 2).

The tests run as root, which permission bits do not stop; the real fault used here is a regular file where
a folder must be (ENOTDIR, EEXIST), which stops root too. A non-root case with mode bits runs when it can.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import ConfigError, check_writable, load_config

OUTPUT_KEYS = ["journal", "evidence", "quarantine", "state"]


def _config(tmp_path: Path, key: str, value: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(f"sources: [{{name: a, folder: in}}]\noutput: {{{key}: {value}}}\n")
    return path


@pytest.fixture()
def blocker(tmp_path: Path) -> Path:
    """A regular file that the config puts where a folder must be."""
    path = tmp_path / "file.txt"
    path.write_text("not a folder\n")
    return path


def _under_file(key: str) -> str:
    return "file.txt/journal.jsonl" if key == "journal" else f"file.txt/{key}"


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_an_output_under_a_file_names_the_file_and_the_key(tmp_path: Path, blocker: Path, key: str,
                                                           create: bool) -> None:
    path = _config(tmp_path, key, _under_file(key))
    config = load_config(path)  # the schema is fine; only the filesystem refuses
    with pytest.raises(ConfigError) as info:
        check_writable(config, path, create=create)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: output.{key}: cannot write "), message
    # The journal's folder is the file itself; the others' nearest existing ancestor is.
    assert f"{blocker}: not a folder" in message or f"{blocker} is not a folder" in message, message


def test_an_output_folder_that_is_a_file_is_refused(tmp_path: Path, blocker: Path) -> None:
    path = _config(tmp_path, "evidence", "file.txt")
    with pytest.raises(ConfigError, match=r"conf\.yaml: output\.evidence: cannot write .*file\.txt: not a folder"):
        check_writable(load_config(path), path)


def test_a_journal_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl").mkdir()
    path = _config(tmp_path, "journal", "j.jsonl")
    with pytest.raises(ConfigError, match=r"output\.journal: cannot write .*j\.jsonl: it is a folder, not a file"):
        check_writable(load_config(path), path)


@pytest.mark.parametrize(("folder", "where"), [("file.txt", "it is a file"),
                                               ("file.txt/inbox", "file.txt is not a folder")])
@pytest.mark.parametrize("create", [True, False])
def test_a_watched_folder_that_is_a_file_names_the_source_key(tmp_path: Path, blocker: Path, folder: str,
                                                              where: str, create: bool) -> None:
    path = tmp_path / "conf.yaml"
    path.write_text(f"sources: [{{name: cam, camera: 0}}, {{name: a, folder: {folder}}}]\n")
    with pytest.raises(ConfigError) as info:
        check_writable(load_config(path), path, create=create)
    assert str(info.value) == f"{path}: sources[1].folder: cannot watch {tmp_path / folder}: " + \
        (where if where == "it is a file" else f"{blocker} is not a folder")


def test_check_only_changes_nothing_and_run_creates_the_folders(tmp_path: Path) -> None:
    path = _config(tmp_path, "state", "var/state")
    config = load_config(path)
    check_writable(config, path, create=False)
    assert not (tmp_path / "var").exists()
    check_writable(config, path, create=True)
    assert all((tmp_path / "var" / name).is_dir() for name in ("evidence", "quarantine", "state"))
    assert list((tmp_path / "var").rglob(".monitor-write-check-*")) == []  # the probe files are gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the file-as-parent "
                    "tests above cover root")
def test_a_read_only_folder_is_refused_for_a_normal_user(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    path = _config(tmp_path, "state", "ro/state")
    with pytest.raises(ConfigError, match="output.state: cannot write .*Permission denied"):
        check_writable(load_config(path), path)


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_the_commands_exit_2_with_one_line(tmp_path: Path, blocker: Path, subprocess_env: dict,
                                           command: str) -> None:
    path = _config(tmp_path, "journal", _under_file("journal"))
    argv = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    res = subprocess.run([sys.executable, "-m", "monitor", *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=subprocess_env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {path}: output.journal: cannot write {blocker}: not a folder"], lines
