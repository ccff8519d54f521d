"""Class 9 of issue 11: config values the operating system refuses are one line `FILE: key: message`, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
GOOD_SOURCE = "sources: [{name: a, folder: in}]\n"

# (name, YAML text, the key the one line must name; None: no key applies)
NASTY: list[tuple[str, str, str | None]] = [
    ("nul_in_folder", 'sources: [{name: a, folder: "in\\0x"}]\n', "sources[0].folder"),
    ("nul_in_journal", GOOD_SOURCE + 'output: {journal: "var/j\\0.jsonl"}\n', "output.journal"),
    ("nul_in_model", GOOD_SOURCE + 'model: "models/\\0default"\n', "model"),
    ("nul_in_camera_file", 'sources: [{name: a, camera: "clip\\0.mp4"}]\n', "sources[0].camera"),
    ("nul_in_sink_password_file", GOOD_SOURCE + "alerts: {sinks: [{name: m, type: email, host: h, sender: a@b.c, "
     'to: [a@b.c], username: u, password_file: "p\\0w"}]}\n', "alerts.sinks[0].password_file"),
    ("unknown_user", "sources: [{name: a, folder: ~no_such_user_for_monitor_tests/in}]\n", "sources[0].folder"),
    ("unknown_user_in_output", GOOD_SOURCE + "output: {state: ~no_such_user_for_monitor_tests/state}\n",
     "output.state"),
    ("path_too_long", f"sources: [{{name: a, folder: /{'/'.join(['d' * 200] * 25)}}}]\n", "sources[0].folder"),
    ("name_too_long", GOOD_SOURCE + f"output: {{quarantine: q/{'n' * 300}}}\n", "output.quarantine"),
    ("deep_lists", GOOD_SOURCE + "x: " + "[" * 10_000 + "]" * 10_000 + "\n", None),
    ("deep_mappings", GOOD_SOURCE + "x: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", None),
    ("huge_integer", GOOD_SOURCE + f"batching: {{max_batch: {'9' * 5000}}}\n", None),
    ("newline_in_a_key", 'sources: [{name: a, folder: in, "evil\\nkey": 1}]\n', "sources[0].evil\\nkey"),
]


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "conf.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "text", "key"), NASTY, ids=[n for n, _, _ in NASTY])
def test_load_config_gives_one_line_naming_the_file_and_the_key(tmp_path: Path, name: str, text: str,
                                                                key: str | None) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    if key is not None:
        assert message.startswith(f"{path}: {key}: "), message


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, b"sources: [{name: a, folder: \xff\xfe}]\n")
    with pytest.raises(ConfigError, match=r"conf\.yaml: cannot read the config: not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("name", "text", "key"), [c for c in NASTY if c[0] in
                                                   ("nul_in_folder", "unknown_user", "deep_lists", "path_too_long")],
                         ids=["nul", "unknown_user", "deep_lists", "path_too_long"])
def test_the_commands_exit_2_with_one_line_and_no_traceback(tmp_path: Path, subprocess_env: dict, command: str,
                                                            name: str, text: str, key: str | None) -> None:
    path = _write(tmp_path, text)
    argv = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    res = subprocess.run([sys.executable, "-m", "monitor", *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=subprocess_env, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), res.stderr
    if key is not None:
        assert lines[0].startswith(f"error: {path}: {key}: "), res.stderr
