"""Fault injection on the state read at start (issue 11, class 7): journal tail lines and ledger lines with
valid syntax but the wrong shape, bytes that are not UTF-8, numbers JSON parses but a size cannot hold, and
ledgers that cannot be read at all. Before the fix each one made `monitor run` refuse to start, with a
traceback, on every start. Now a bad line is skipped, counted and logged once per file; the start goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen import normal_image, write_images

from monitor import metrics
from monitor.batching import FrameQueue
from monitor.config import FolderSourceConfig
from monitor.journal import Journal, read_journal_tail
from monitor.records import FileKey
from monitor.sources.folder import FolderSource
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "default"  # a real bundle without training one: these tests are about state
SOURCE = "line1"

GOOD_A = FileKey("a.png", 10, 1_700_000_000_000_000_000)
GOOD_B = FileKey("sub/b.png", 20, 1_700_000_000_000_000_001)


def rejected(file: str) -> float:
    """anomaly_monitor_state_records_rejected_total{file}."""
    return metrics.STATE_RECORDS_REJECTED.labels(file)._value.get()


def unreadable(file: str) -> float:
    """anomaly_monitor_state_files_unreadable_total{file}."""
    return metrics.STATE_FILES_UNREADABLE.labels(file)._value.get()


def ledger_line(key: FileKey) -> bytes:
    return json.dumps({"p": key.name, "s": key.size, "m": key.mtime_ns}).encode() + b"\n"


def verdict_line(key: FileKey, source: str = SOURCE) -> bytes:
    """A journal line as Verdict.to_json() writes it for a folder file."""
    record = {"time": 1.0, "frame_time": 1.0, "source": source, "path": f"/in/{key.name}", "score": 0.1,
              "threshold": 0.2, "anomaly": False, "evidence": None, "file": key._asdict()}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def make_source(tmp_path: Path, ledger: Ledger) -> FolderSource:
    """A folder source that is never started: reconcile() is all these tests need of it."""
    config = FolderSourceConfig(name=SOURCE, folder=tmp_path / "inbox")
    return FolderSource(config, FrameQueue(8), ledger, Quarantine(tmp_path / "quarantine"))


def rejection_logs(caplog: pytest.LogCaptureFixture, file: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"state_records_rejected file={file} ")]


DEEP = b"[" * 100_000 + b"]" * 100_000  # the json decoder recurses once per level: RecursionError
HUGE = b"9" * 5000  # more digits than Python's int() accepts from a string (4300): json raised ValueError

# --- one test per kind of bad journal line --------------------------------------------------------

JOURNAL_BAD_LINES = {
    "list": (b"[1, 2, 3]", "not_object"),
    "string": (b'"daemon_start"', "not_object"),
    "number": (b"42", "not_object"),
    "null": (b"null", "not_object"),
    "infinity": (b'{"source": "line1", "score": Infinity}', "non_finite"),
    "nan": (b'{"source": "line1", "score": NaN}', "non_finite"),
    "float_overflow": (b'{"source": "line1", "score": 1e400}', "non_finite"),
    "size_infinity": (b'{"source": "line1", "file": {"name": "x.png", "size": Infinity, "mtime_ns": 1}}',
                      "non_finite"),
    "size_1e400": (b'{"source": "line1", "file": {"name": "x.png", "size": 1e400, "mtime_ns": 1}}', "non_finite"),
    "huge_digits": (b'{"source": "line1", "score": ' + HUGE + b"}", "huge_number"),
    "mtime_over_int64": (b'{"source": "line1", "file": {"name": "x.png", "size": 1, "mtime_ns": 99999999999999999999}}',
                         "file.mtime_ns.less_than_equal"),
    "size_negative": (b'{"source": "line1", "file": {"name": "x.png", "size": -1, "mtime_ns": 1}}',
                      "file.size.greater_than_equal"),
    "size_float": (b'{"source": "line1", "file": {"name": "x.png", "size": 1.5, "mtime_ns": 1}}', "file.size.int_type"),
    "name_nul": (b'{"source": "line1", "file": {"name": "x\\u0000.png", "size": 1, "mtime_ns": 1}}',
                 "file.name.name_value"),
    "name_number": (b'{"source": "line1", "file": {"name": 7, "size": 1, "mtime_ns": 1}}', "file.name.name_type"),
    "file_list": (b'{"source": "line1", "file": ["x.png", 1, 1]}', "file.model_type"),
    "source_number": (b'{"source": 1, "event": "daemon_start"}', "source.string_type"),
    "not_utf8": (b'{"source": "line1", "detail": "\xff\xfe"}', "not_utf8"),
    "not_json": (b"{'source': 'line1'}", "not_json"),
    "deep": (DEEP, "too_deep"),
}


@pytest.mark.parametrize("kind", sorted(JOURNAL_BAD_LINES))
def test_a_bad_journal_tail_line_is_skipped_counted_and_logged_once(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad, reason = JOURNAL_BAD_LINES[kind]
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(verdict_line(GOOD_A) + bad + b"\n" + bad + b"\n" + verdict_line(GOOD_B))
    before = rejected("journal")
    caplog.set_level(logging.INFO)

    records = read_journal_tail(journal)

    assert [r["file"]["name"] for r in records] == [GOOD_A.name, GOOD_B.name]
    assert rejected("journal") == before + 2
    (message,) = rejection_logs(caplog, "journal")  # once per file, with the count: not once per line
    assert "count=2 first_line=2 " in message and f" reason={reason} " in message, message
    # The records feed reconcile, which used to raise on them (AttributeError on a list, OverflowError on inf).
    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")
    assert make_source(tmp_path, ledger).reconcile(records) == 2
    assert GOOD_A in ledger and GOOD_B in ledger


def test_reconcile_skips_records_of_any_shape_a_caller_passes(tmp_path: Path) -> None:
    """reconcile() is public: records that never went through read_journal_tail must not raise either."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    hostile: list = [["list"], "text", 3, None, {"source": SOURCE, "file": "x"},
                     {"source": SOURCE, "file": {"name": "x.png", "size": float("inf"), "mtime_ns": 1}},
                     {"source": SOURCE, "file": {"name": "x.png", "size": 10**400, "mtime_ns": 1}},
                     {"source": SOURCE, "file": {"name": "x.png", "size": True, "mtime_ns": 1}},
                     {"source": SOURCE, "file": {"name": "x.png", "size": 1}},
                     {"source": SOURCE, "file": GOOD_A._asdict()}]
    assert make_source(tmp_path, ledger).reconcile(hostile) == 1
    assert len(ledger) == 1 and GOOD_A in ledger


def test_an_unreadable_journal_gives_no_tail_and_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.mkdir()  # not a file: open() raises IsADirectoryError
    before = unreadable("journal")
    caplog.set_level(logging.INFO)
    assert read_journal_tail(journal) == []
    assert unreadable("journal") == before + 1
    assert "journal_unreadable path=" in caplog.text


def test_the_first_tail_line_cut_by_the_seek_is_not_counted(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(verdict_line(FileKey(f"{i}.png", i, i)) for i in range(100)))
    before = rejected("journal")
    records = read_journal_tail(journal, max_bytes=1000)
    assert records and records[-1]["file"]["name"] == "99.png"
    assert rejected("journal") == before


def test_a_journal_whose_last_line_was_cut_gets_its_next_record_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(verdict_line(GOOD_A) + b'{"source": "line1", "sco')  # killed mid-line
    journal = Journal(path)
    journal.append({"source": SOURCE, "event": "daemon_start", "time": 2.0, "detail": ""})
    journal.close()
    assert [r.get("event") for r in read_journal_tail(path)] == [None, "daemon_start"]


# --- one test per kind of bad ledger line ---------------------------------------------------------

LEDGER_BAD_LINES = {
    "list": (b'["a.png", 1, 1]', "not_object"),
    "string": (b'"a.png"', "not_object"),
    "infinity": (b'{"p": "x.png", "s": Infinity, "m": 1}', "non_finite"),
    "nan": (b'{"p": "x.png", "s": 1, "m": NaN}', "non_finite"),
    "float_overflow": (b'{"p": "x.png", "s": 1e400, "m": 1}', "non_finite"),
    "huge_digits": (b'{"p": "x.png", "s": ' + HUGE + b', "m": 1}', "huge_number"),
    "over_int64": (b'{"p": "x.png", "s": 9223372036854775808, "m": 1}', "s.less_than_equal"),
    "negative_size": (b'{"p": "x.png", "s": -5, "m": 1}', "s.greater_than_equal"),
    "bool_size": (b'{"p": "x.png", "s": true, "m": 1}', "s.int_type"),
    "float_size": (b'{"p": "x.png", "s": 1.0, "m": 1}', "s.int_type"),
    "string_size": (b'{"p": "x.png", "s": "1", "m": 1}', "s.int_type"),
    "name_nul": (b'{"p": "x\\u0000.png", "s": 1, "m": 1}', "p.name_value"),
    "name_empty": (b'{"p": "", "s": 1, "m": 1}', "p.name_value"),
    "name_object": (b'{"p": {"a": 1}, "s": 1, "m": 1}', "p.name_type"),
    "missing_key": (b'{"p": "x.png", "s": 1}', "m.missing"),
    "extra_key": (b'{"p": "x.png", "s": 1, "m": 1, "evil\\nkey": 2}', "extra_forbidden"),
    "not_utf8": (b'{"p": "\xff\xfe.png", "s": 1, "m": 1}', "not_utf8"),
    "binary": (bytes(range(0, 10)) + bytes(range(11, 256)), "not_utf8"),
    "not_json": (b"p=x.png s=1 m=1", "not_json"),
    "deep": (DEEP, "too_deep"),
}


@pytest.mark.parametrize("kind", sorted(LEDGER_BAD_LINES))
def test_a_bad_ledger_line_is_skipped_counted_logged_once_and_set_aside(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad, reason = LEDGER_BAD_LINES[kind]
    path = tmp_path / "ledger.jsonl"
    original = ledger_line(GOOD_A) + bad + b"\n" + ledger_line(GOOD_B) + bad + b"\n"
    path.write_bytes(original)
    before = rejected("ledger")
    caplog.set_level(logging.INFO)

    ledger = Ledger(path)

    assert GOOD_A in ledger and GOOD_B in ledger and len(ledger) == 2
    assert rejected("ledger") == before + 2
    (message,) = rejection_logs(caplog, "ledger")
    assert "count=2 first_line=2 " in message and f" reason={reason} " in message, message
    assert "evil" not in message  # text from the file never reaches the log, only known keys and error types
    # Set aside for a person to read, and rewritten with the good lines: the next start meets them no more.
    assert (tmp_path / "ledger.jsonl.rejected").read_bytes() == original
    ledger.add(FileKey("c.png", 1, 1))
    ledger.close()
    caplog.clear()
    again = Ledger(path)
    assert len(again) == 3 and rejection_logs(caplog, "ledger") == []
    again.close()


def test_a_corrupt_10_mb_ledger_logs_one_line_not_one_per_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.jsonl"
    junk = b'{"p": "x.png", "s": Infinity, "m": 1}\n'
    count = 10 * 2**20 // len(junk)
    path.write_bytes(ledger_line(GOOD_A) + junk * count)
    before = rejected("ledger")
    caplog.set_level(logging.DEBUG)
    ledger = Ledger(path)
    assert list(ledger._keys) == [GOOD_A]
    assert rejected("ledger") == before + count
    assert len(caplog.records) <= 3, [r.getMessage()[:120] for r in caplog.records]
    (message,) = rejection_logs(caplog, "ledger")
    assert f"count={count} first_line=2 reason=non_finite" in message
    ledger.close()


def test_a_line_cut_by_a_crash_is_counted_as_cut_and_the_next_line_is_not_glued_to_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_line(GOOD_A) + ledger_line(GOOD_B).rstrip(b"\n"))  # a whole record, no newline
    ledger = Ledger(path)
    ledger.add(FileKey("c.png", 1, 1))
    ledger.close()
    assert len(Ledger(path)) == 3

    path.write_bytes(ledger_line(GOOD_A) + b'{"p": "b.pn')
    before = rejected("ledger")
    ledger = Ledger(path)
    ledger.add(FileKey("c.png", 1, 1))
    ledger.close()
    assert rejected("ledger") == before + 1
    assert set(Ledger(path)._keys) == {GOOD_A, FileKey("c.png", 1, 1)}


def test_a_name_that_is_not_utf8_on_disk_survives_the_ledger(tmp_path: Path) -> None:
    """os.scandir gives such names with lone surrogates (surrogateescape); the ledger must keep them."""
    key = FileKey(os.fsdecode(b"cam\xff.png"), 5, 5)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.add(key)
    ledger.close()
    assert key in Ledger(tmp_path / "ledger.jsonl")
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(verdict_line(key))
    fresh = Ledger(tmp_path / "other.jsonl")
    assert make_source(tmp_path, fresh).reconcile(read_journal_tail(journal)) == 1 and key in fresh


@contextmanager
def _ledger_where(path: Path, kind: str) -> Iterator[None]:
    if kind == "folder":
        path.mkdir()
        (path / "inside").write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)  # a plain open() for reading would wait for a writer for ever
    elif kind == "no_permission":
        path.write_bytes(ledger_line(GOOD_A))
        path.chmod(0)
    yield


@pytest.mark.parametrize("kind", [
    "folder", "fifo",
    pytest.param("no_permission", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode 000 files")),
])
def test_an_unreadable_ledger_is_set_aside_and_the_journal_refills_it(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "ledger-line1.jsonl"
    path.parent.mkdir()
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(verdict_line(GOOD_A))
    before = unreadable("ledger")
    caplog.set_level(logging.INFO)
    with _ledger_where(path, kind):
        ledger = Ledger(path)
    assert len(ledger) == 0
    assert unreadable("ledger") == before + 1
    assert "ledger_unreadable path=" in caplog.text and "action=start_empty" in caplog.text
    (aside,) = path.parent.glob("ledger-line1.jsonl.unreadable-*")
    assert stat.S_ISDIR(aside.lstat().st_mode) == (kind == "folder")
    # The ledger is a cache of the journal: reconcile refills it, and it is a plain file again.
    assert make_source(tmp_path, ledger).reconcile(read_journal_tail(journal)) == 1
    ledger.close()
    assert path.is_file() and GOOD_A in Ledger(path)


def test_a_ledger_that_cannot_be_set_aside_or_opened_lives_in_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    path.mkdir()
    monkeypatch.setattr(os, "replace", _refuse)  # a state folder that no longer lets us rename
    caplog.set_level(logging.INFO)
    ledger = Ledger(path)
    ledger.add(GOOD_A)
    ledger.compact([GOOD_B])
    ledger.close()
    assert len(ledger) == 0
    assert "ledger_set_aside_failed" in caplog.text and "ledger_unwritable" in caplog.text


def _refuse(*_args: object) -> None:
    raise PermissionError(13, "Permission denied")


# --- over state files: loading never raises, good lines are kept --------------------------------

_names = st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=20) | st.sampled_from(
    [os.fsdecode(b"\xff.png"), "a\nb.png", "dir/\u00e9.png", "x" * 300])
_good_keys = st.builds(FileKey, _names, st.integers(0, 2**63 - 1), st.integers(-(2**63), 2**63 - 1))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
_json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
# Lines near a record: the right keys with values of any type and size (inf, 10**30, True, lists, ...).
_ledger_like = st.fixed_dictionaries({"p": _scalars | _names, "s": _scalars, "m": _scalars})
_file_like = st.fixed_dictionaries({"name": _scalars | _names, "size": _scalars, "mtime_ns": _scalars})
_journal_like = st.fixed_dictionaries({"source": st.just(SOURCE) | _scalars, "file": _file_like | _json_values})


def _dumped(values: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    # allow_nan: json.dumps writes inf as `Infinity`, which Python's json reads back
    return values.map(lambda v: json.dumps(v, allow_nan=True).encode())


def _hostile(near: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=80), _dumped(_json_values), _dumped(near),
                     st.sampled_from([DEEP, HUGE, b"\xff" * 10, b"{", b"Infinity", b"[]"]))


def _mix(draw: st.DrawFn, good: list[bytes], near: st.SearchStrategy) -> bytes:
    lines = list(good)
    for _ in range(draw(st.integers(0, 12))):
        lines.insert(draw(st.integers(0, len(lines))), draw(_hostile(near)))
    data = b"\n".join(lines)
    return data if draw(st.booleans()) else data + b"\n"


@st.composite
def state_files(draw: st.DrawFn) -> tuple[set[FileKey], bytes, set[FileKey], bytes]:
    """(good ledger keys, ledger bytes, good journal keys, journal bytes): good lines among hostile ones."""
    ledger_keys = set(draw(st.lists(_good_keys, max_size=6)))
    journal_keys = set(draw(st.lists(_good_keys, max_size=6)))
    ledger = _mix(draw, [ledger_line(k).rstrip(b"\n") for k in ledger_keys], _ledger_like)
    journal = _mix(draw, [verdict_line(k).rstrip(b"\n") for k in journal_keys], _journal_like)
    return ledger_keys, ledger, journal_keys, journal


def _valid(key: FileKey) -> bool:
    return (isinstance(key.name, str) and 0 < len(key.name) <= 4096 and "\x00" not in key.name
            and type(key.size) is int and 0 <= key.size < 2**63
            and type(key.mtime_ns) is int and -(2**63) <= key.mtime_ns < 2**63)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state_files())
def test_over_state_files_loading_never_raises_and_keeps_the_good_lines(
        files: tuple[set[FileKey], bytes, set[FileKey], bytes]) -> None:
    ledger_keys, ledger_bytes, journal_keys, journal_bytes = files
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "ledger.jsonl").write_bytes(ledger_bytes)
        (root / "journal.jsonl").write_bytes(journal_bytes)

        ledger = Ledger(root / "ledger.jsonl")  # what the daemon does at start, in this order
        records = read_journal_tail(root / "journal.jsonl")
        make_source(root, ledger).reconcile(records)

        assert all(isinstance(r, dict) for r in records)
        assert ledger_keys | journal_keys <= ledger._keys  # a hostile line may be a valid record: <=, not ==
        assert all(_valid(k) for k in ledger._keys)
        # And the journal takes appends after whatever its tail was; the ledger loads cleanly a second time.
        journal = Journal(root / "journal.jsonl")
        journal.append({"source": SOURCE, "event": "daemon_start", "time": 1.0, "detail": ""})
        journal.close()
        assert read_journal_tail(root / "journal.jsonl")[-1]["event"] == "daemon_start"
        ledger.add(FileKey("after.png", 1, 1))
        ledger.close()
        before = rejected("ledger")
        again = Ledger(root / "ledger.jsonl")
        assert again._keys == ledger._keys and rejected("ledger") == before
        again.close()


# --- end to end: a real daemon on hostile state ---------------------------------------------------

def _no_constant(name: str) -> float:
    raise ValueError(name)


class TolerantDaemon(DaemonProcess):
    """DaemonProcess whose journal reader skips the hostile lines this journal holds (not objects, Infinity)."""

    def records(self) -> list[dict]:
        if not self.journal_path.exists():
            return []
        out = []
        for line in self.journal_path.read_bytes().split(b"\n"):
            try:
                record = json.loads(line, parse_constant=_no_constant)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict):
                out.append(record)
        return out


def _key(inbox: Path, path: Path) -> FileKey:
    st_ = path.stat()
    return FileKey(path.relative_to(inbox).as_posix(), st_.st_size, st_.st_mtime_ns)


@pytest.mark.slow
def test_the_daemon_starts_on_a_hostile_ledger_and_journal_and_scores(tmp_path: Path, subprocess_env: dict) -> None:
    config = {
        "model": str(SHIPPED),
        "sources": [{"name": SOURCE, "folder": "inbox", "settle_ms": 20, "stable_s": 0.5}],
        "metrics": {"enabled": False},
        "logging": {"level": "INFO"},
    }
    inbox, state = tmp_path / "inbox", tmp_path / "var" / "state"
    inbox.mkdir()
    state.mkdir(parents=True)
    rng = np.random.default_rng(11)
    in_ledger, in_journal = write_images(inbox, [normal_image(rng), normal_image(rng)], prefix="old")
    hostile = [b"[1, 2]", b"42", b'{"p": "x.png", "s": Infinity, "m": 1}', b'{"p": "x.png", "s": 1e400, "m": 1}',
               b'{"p": "x.png", "s": ' + HUGE + b', "m": 1}', b'{"p": "x.png", "s": 99999999999999999999, "m": 1}',
               b'{"p": "\xff\xfe", "s": 1, "m": 1}', bytes(range(256)), DEEP]
    # The ledger says `in_ledger` was scored; the journal's tail says `in_journal` was (a crash between the
    # two lines). Neither may be scored again: the good lines must survive among the bad ones.
    (state / f"ledger-{SOURCE}.jsonl").write_bytes(
        b"\n".join(hostile[:4] + [ledger_line(_key(inbox, in_ledger)).rstrip(b"\n")] + hostile[4:]) + b"\n")
    journal_hostile = [b'"daemon_start"', b"[]", b'{"source": "line1", "score": Infinity}',
                       b'{"source": "line1", "file": {"name": "y.png", "size": 1e400, "mtime_ns": 1}}',
                       b'{"source": "line1", "detail": "\xff"}', DEEP]
    (tmp_path / "var" / "journal.jsonl").write_bytes(
        b"\n".join(journal_hostile[:3] + [verdict_line(_key(inbox, in_journal)).rstrip(b"\n")]
                   + journal_hostile[3:]) + b"\n" + b'{"source": "line1", "sco')  # and a line cut by a crash

    daemon = TolerantDaemon(tmp_path, config, subprocess_env).start(timeout=180)
    try:
        log = daemon.log()
        assert "state_records_rejected file=ledger" in log and "state_records_rejected file=journal" in log, log
        time.sleep(1.0)  # the backlog scan has run: a wrongly forgotten old file would be on its way
        staging = tmp_path / "staging"
        (fresh,) = write_images(staging, [normal_image(rng)], prefix="fresh")
        os.replace(fresh, inbox / fresh.name)
        wait_until(lambda: any("fresh" in str(v.get("path")) for v in daemon.verdicts())
                   or daemon.proc.poll() is not None, 90)
        assert daemon.proc.poll() is None, daemon.log()
        records = daemon.records()
        start = next(i for i, r in enumerate(records) if r.get("event") == "daemon_start")
        scored = [Path(r["path"]).name for r in records[start:] if "score" in r]  # not the planted verdict
        assert scored == [fresh.name], scored

        assert daemon.terminate(signal.SIGTERM) == 0, daemon.log()
        events = [r["event"] for r in daemon.records() if "event" in r]
        assert events.count("daemon_start") == 1 and events[-1] == "daemon_stop", events
        assert "Traceback" not in daemon.log()
        assert (state / f"ledger-{SOURCE}.jsonl.rejected").exists()
    finally:
        daemon.kill()
