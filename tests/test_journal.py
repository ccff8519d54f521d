"""The journal: one JSON line per record, flushed at once, rotated by size."""

import errno
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.files import LineFile, NotRegularFile
from monitor.journal import Journal, read_journal, read_journal_tail, verdict_line
from monitor.records import FileKey, Region, Verdict


def test_each_record_is_one_line_readable_before_close(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"source": "a", "score": 0.5})
    journal.append({"source": "b", "score": 0.25})
    # Flushed per line: another process (or a crash) sees both lines without close().
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert [json.loads(x)["source"] for x in lines] == ["a", "b"]
    journal.close()


def test_journal_appends_across_reopen(tmp_path):
    for i in range(2):
        journal = Journal(tmp_path / "j.jsonl")
        journal.append({"i": i})
        journal.close()
    assert [r["i"] for r in read_journal(tmp_path / "j.jsonl")] == [0, 1]


def test_journal_rotates_by_size_and_keeps_backups(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", max_bytes=4096, backups=2)
    for i in range(300):
        journal.append({"i": i, "pad": "x" * 40})
    journal.close()
    current = read_journal(tmp_path / "j.jsonl")
    first = read_journal(tmp_path / "j.jsonl.1")
    assert (tmp_path / "j.jsonl").stat().st_size <= 4096
    assert (tmp_path / "j.jsonl.2").exists() and not (tmp_path / "j.jsonl.3").exists()
    assert first[-1]["i"] + 1 == current[0]["i"]  # no line lost at the seam
    assert current[-1]["i"] == 299


def _refuse_once(monkeypatch, method: str) -> None:
    """The next LineFile.`method` call fails with ENOSPC (after doing nothing), as on a full disk."""
    real = getattr(LineFile, method)
    left = [1]

    def refuse(self, *args):
        if left[0]:
            left[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(LineFile, method, refuse)


def test_records_the_disk_refused_stay_queued_and_the_next_sync_writes_each_once(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"i": 0})
    journal.enqueue([{"i": 1}, {"i": 2}])
    _refuse_once(monkeypatch, "write_many")
    with pytest.raises(OSError):
        journal.sync()
    assert journal.queued == 2
    journal.sync()
    journal.close()
    assert [r["i"] for r in read_journal(tmp_path / "j.jsonl")] == [0, 1, 2]


def test_lines_whose_fsync_failed_are_cut_back_and_written_again(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j.jsonl")
    journal.append({"i": 0})
    journal.sync()
    journal.enqueue([{"i": 1}, {"i": 2}])
    _refuse_once(monkeypatch, "sync")
    with pytest.raises(OSError):
        journal.sync()
    # After a failed fsync the kernel may have dropped the pages: the lines are cut back and queued again.
    assert [r["i"] for r in read_journal(tmp_path / "j.jsonl")] == [0] and journal.queued == 2
    journal.sync()
    journal.close()
    assert [r["i"] for r in read_journal(tmp_path / "j.jsonl")] == [0, 1, 2]


def test_an_event_refused_while_a_batch_waits_is_written_after_it_in_order(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j.jsonl")
    journal.enqueue([{"i": 0}])
    _refuse_once(monkeypatch, "write_many")
    with pytest.raises(OSError):
        journal.sync()
    journal.append({"i": 1})  # the disk took it: the batch queued before it goes first
    journal.sync()
    journal.close()
    assert [r["i"] for r in read_journal(tmp_path / "j.jsonl")] == [0, 1]


def test_a_journal_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "j.jsonl")
    with pytest.raises(NotRegularFile):
        Journal(tmp_path / "j.jsonl")
    assert read_journal_tail(tmp_path / "j.jsonl") == []  # nor does the start's tail read block on it


_texts = st.text(st.characters(exclude_categories=()), max_size=30)  # lone surrogates too (os.fsdecode's)
_times = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1))


@given(st.builds(
    Verdict, source=_texts, frame_time=_times, scored_at=_times, score=_times,
    threshold=st.one_of(_times, st.just(math.inf)), anomaly=st.booleans(),
    path=st.one_of(st.none(), _texts.map(Path)), evidence=st.one_of(st.none(), _texts.map(Path)),
    file_key=st.one_of(st.none(), st.builds(FileKey, _texts, st.integers(0, 2**63 - 1),
                                            st.integers(-(2**63), 2**63 - 1))),
    model=st.one_of(st.none(), _texts), model_id=st.one_of(st.none(), _texts),
    region=st.one_of(st.none(), st.builds(Region, st.integers(0, 9999), st.integers(0, 9999),
                                          st.integers(1, 9999), st.integers(1, 9999))),
    original=st.one_of(st.none(), _texts.map(Path)), id=_texts, shadow=st.booleans(),
    shadow_of=st.one_of(st.none(), _texts)))
@settings(max_examples=400, deadline=None)
def test_a_verdict_line_is_the_encoders_line_of_its_record(verdict: Verdict) -> None:
    try:
        expected = json.dumps(verdict.to_json(), separators=(",", ":"), allow_nan=False) + "\n"
    except ValueError:  # an infinite threshold: refused alike
        with pytest.raises(ValueError):
            verdict_line(verdict)
        return
    assert verdict_line(verdict) == expected


def test_enqueued_verdicts_are_written_as_their_records(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    verdicts = [Verdict(source="line", frame_time=1.5, scored_at=2.25, score=0.125, threshold=0.5, anomaly=i == 1,
                        path=Path(f"/in/{i}.png"), file_key=FileKey(f"{i}.png", 10, 20), model="m", model_id="x")
                for i in range(3)]
    journal.enqueue_verdicts(verdicts)
    journal.sync()
    assert read_journal(tmp_path / "j.jsonl") == [v.to_json() for v in verdicts]
