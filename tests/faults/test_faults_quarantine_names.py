"""Hostile file names in the quarantine: a name that is not UTF-8 or holds a newline is quarantined like any
other, and its reason file keeps one field a line (found by the whole-system property test over names)."""

import logging
import os
from pathlib import Path

import pytest

from monitor.sources.quarantine import REASON_SUFFIX, Quarantine

HOSTILE = [b"bad\xff\xfe.png", b"two\nlines.png", b"fake\nreason: empty\n.png", b"esc\x1b[31m.png"]


@pytest.mark.parametrize("raw", HOSTILE, ids=["not_utf8", "newline", "forged_field", "escape"])
def test_a_hostile_name_is_quarantined_with_a_one_field_a_line_reason(tmp_path: Path, raw: bytes, caplog):
    # pytest's own log capture keeps the raw name (lone surrogates), which pytest-xdist cannot send between
    # processes; the daemon's handler escapes it (tests/test_logsafe.py). Only errors are captured here.
    caplog.set_level(logging.ERROR, logger="monitor.sources.quarantine")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = Path(os.fsdecode(os.path.join(os.fsencode(inbox), raw)))
    path.write_bytes(b"not an image")
    target = Quarantine(tmp_path / "quarantine").put("line1", path, "undecodable", "cannot decode\nat all")
    assert target is not None and target.exists() and not path.exists()
    text = target.with_name(target.name + REASON_SUFFIX).read_bytes().decode("utf-8")
    lines = text.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["reason", "source", "original", "time", "detail"]
    assert lines[0] == "reason: undecodable"
    assert "\x1b" not in text
