"""The journal: one JSON line per record, flushed at once, rotated by size."""

import json

from monitor.journal import Journal, read_journal


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
