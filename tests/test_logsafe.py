"""Log lines that untrusted text cannot split or forge (issue 11): the escaping, the formatter, the real
logging setup, and the daemon's stderr with a hostile file name in the watched folder."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess, wait_until
from hypothesis import given
from hypothesis import strategies as st
from imagegen import encode, normal_image

from monitor.config import setup_logging
from monitor.logsafe import CONTINUATION, SafeFormatter, escape_block, escape_controls
from monitor.records import Verdict

# Every character that must never reach a log line raw.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})")
# One event line of the daemon's log format: time, level, logger, message (ours start with an event name).
_EVENT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \S")
# TensorFlow's C++ code writes its own lines (absl format) to the same stderr, past Python's logging: they
# hold no text from outside, and no Python mechanism can touch them.
_NATIVE_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)"
                          r"|[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")
# Any character, lone surrogates included, with the ones that matter drawn often.
_CHARS = st.characters(codec=None, exclude_categories=()) | st.sampled_from(
    "\n\r\t\x00\x1b\x7f\x85\x9b\u2028\u2029\u202e\udcff\\xé")
_HOSTILE = "evil\n2030-01-01 00:00:00,000 ERROR monitor forged_event\x1b[31m\r\x85\u2028"


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text)


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("monitor.test", logging.WARNING, __file__, 1, msg, args, exc_info)


# --- the escaping -------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "escaped"), [
    ("a\nb", "a\\x0ab"), ("a\r\nb", "a\\x0d\\x0ab"), ("\t", "\\x09"), ("\x00", "\\x00"),
    ("\x1b[31mred", "\\x1b[31mred"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9b", "\\x9b"),
    ("\u2028\u2029", "\\u2028\\u2029"), ("\u202etxt.png", "\\u202etxt.png"), ("\u2066", "\\u2066"),
    ("bad\udcffname", "bad\\udcffname"),
])
def test_each_kind_of_control_character_is_escaped(raw, escaped):
    assert escape_controls(raw) == escaped


@pytest.mark.parametrize("text", ["plain", "C:\\dir\\x.png", "'a\\nb'", "é ü 中文 🙂", "key=value path=/x y.png", ""])
def test_text_without_control_characters_is_unchanged(text):
    assert escape_controls(text) is text


@given(st.text(alphabet=_CHARS))
def test_any_text_escapes_to_one_line_without_control_characters(text):
    escaped = escape_controls(text)
    assert _CONTROL.search(escaped) is None
    assert len(escaped.splitlines()) <= 1  # splitlines knows every line boundary Python does (\x1c, \x85 ...)
    escaped.encode("utf-8")  # no lone surrogate left: a UTF-8 stream takes every line


@given(st.text(alphabet=_CHARS.filter(lambda ch: ch != "\\")))
def test_the_escaped_text_gives_back_the_original(text):
    # Without backslashes in the original, every escape in the output is one of ours: the original survives.
    assert _unescape(escape_controls(text)) == text


@given(st.text(alphabet=_CHARS.filter(lambda ch: ch != "\\")))
def test_printable_text_survives_in_order_around_the_escapes(text):
    kept = "".join(ch for ch in text if not _CONTROL.match(ch))
    assert _ESCAPE.sub("", escape_controls(text)) == kept


def test_a_block_keeps_its_newlines_escapes_the_rest_and_indents_every_line():
    block = escape_block("Traceback:\n  File x\nValueError: a\x1bb\rc")
    assert block.split("\n") == [CONTINUATION + "Traceback:", CONTINUATION + "  File x",
                                 CONTINUATION + "ValueError: a\\x1bb\\x0dc"]


# --- the formatter -----------------------------------------------------------------------------

def test_the_formatted_message_is_one_line_whatever_its_arguments_hold():
    formatter = SafeFormatter("%(levelname)s %(name)s %(message)s")
    line = formatter.format(_record("file_quarantined path=%s reason=%s", Path("in") / _HOSTILE, "empty"))
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert line == ("WARNING monitor.test file_quarantined path=in/evil\\x0a2030-01-01 00:00:00,000 ERROR monitor "
                    "forged_event\\x1b[31m\\x0d\\x85\\u2028 reason=empty")


def test_a_traceback_keeps_its_lines_but_none_of_them_can_pass_for_an_event():
    formatter = SafeFormatter("%(levelname)s %(name)s %(message)s")
    try:
        raise ValueError(f"cannot read {_HOSTILE}")
    except ValueError:
        record = _record("folder_read_failed path=%s", _HOSTILE, exc_info=sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert lines[0] == "WARNING monitor.test folder_read_failed path=" + escape_controls(_HOSTILE)
    assert lines[1] == CONTINUATION + "Traceback (most recent call last):"
    assert all(line.startswith(CONTINUATION) for line in lines[1:])  # the forged line too: it is indented
    assert any("forged_event\\x1b[31m" in line for line in lines[1:])
    assert not any(_CONTROL.search(line) for line in lines)


def test_a_traceback_already_rendered_by_another_handler_is_escaped_too():
    try:
        raise RuntimeError("boom\x1b[2J")
    except RuntimeError:
        record = _record("batch_failed", exc_info=sys.exc_info())
    logging.Formatter().format(record)  # e.g. pytest's caplog handler, first in line: it caches exc_text raw
    assert "\x1b" in record.exc_text
    assert "\x1b" not in SafeFormatter().format(record)


def test_the_record_itself_is_not_changed():
    record = _record("x=%s", "a\nb")
    SafeFormatter().format(record)
    assert record.getMessage() == "x=a\nb"  # other handlers see what was logged


# --- the real logging setup ------------------------------------------------------------------------

@pytest.fixture
def root_logging():
    """Restore the root logger's handlers and level after a test that calls setup_logging()."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    for handler in root.handlers:
        if handler not in saved[0]:
            root.removeHandler(handler)
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])


def test_setup_logging_escapes_every_logger_s_lines(root_logging, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("INFO")
    logging.getLogger("some.library").warning("camera_failed url=%s", "rtsp://x/\x1b]0;pwned\x07\nFAKE")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and _EVENT_LINE.match(lines[0]), lines
    assert lines[0].endswith("camera_failed url=rtsp://x/\\x1b]0;pwned\\x07\\x0aFAKE")


def test_the_journal_keeps_a_hostile_name_exactly_on_one_line():
    # The journal is JSON: json.dumps escapes control characters itself, and the record keeps the exact name.
    path = Path("/in") / ("x\udcff" + _HOSTILE + ".png")
    verdict = Verdict(source="a", frame_time=1.0, scored_at=2.0, score=0.1, threshold=0.2, anomaly=False,
                      path=path)
    line = json.dumps(verdict.to_json(), separators=(",", ":"), allow_nan=False)
    assert len(line.splitlines()) == 1 and _CONTROL.search(line) is None
    assert json.loads(line)["path"] == str(path)


# --- end to end ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_hostile_file_name_never_forges_a_line_of_the_daemon_s_log(tmp_path, tiny_bundle, subprocess_env):
    config = {"model": str(tiny_bundle), "metrics": {"enabled": False}, "logging": {"level": "INFO"},
              "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "incomplete_timeout_s": 0.5}]}
    daemon = DaemonProcess(tmp_path / "d", config, subprocess_env)
    inbox = daemon.workdir / "inbox"
    inbox.mkdir()
    good = inbox / f"good{_HOSTILE}.png"  # scored
    bad = inbox / f"bad{_HOSTILE}.png"  # not an image: quarantined, logged with its path
    ignored = inbox / f"other{_HOSTILE}.txt"  # wrong extension: ignored, logged with its path
    daemon.start()
    try:
        good.write_bytes(encode(normal_image(np.random.default_rng(0))))
        bad.write_bytes(b"not an image at all")
        ignored.write_bytes(b"x")
        wait_until(lambda: daemon.verdicts() and not bad.exists(), timeout=30)
        assert daemon.terminate(signal.SIGTERM) == 0
    finally:
        daemon.kill()
    assert daemon.verdicts()[0]["path"] == str(good)  # the journal has the exact name
    raw = daemon.log_path.read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw
    lines = raw.decode("utf-8").split("\n")
    assert lines[-1] == ""
    odd = [line for line in lines[:-1] if not (_EVENT_LINE.match(line) or _NATIVE_LINE.match(line))]
    assert not odd, f"lines that are not one event each: {odd}"
    assert not any(line.startswith("2030") or line.split(" ", 4)[3:4] == ["forged_event"] for line in lines)
    escaped = escape_controls(_HOSTILE)
    for event in ("file_quarantined", "file_ignored"):
        assert any(event in line and escaped in line for line in lines), f"no {event} line names the file"
